"""The journal and lease store is reachable: the SQLite file in the runbook's state
directory opens and reads, or (before any run) the directory can be created and
written. It is one host's file: reachable from where drorch runs, not from each region
(a store both regions reach is the DynamoDB journal of a later issue)."""

from __future__ import annotations

import os
from pathlib import Path

from drorch.readiness.context import Context
from drorch.readiness.result import CheckResult, failed, passed
from drorch.store.sqlite import JournalUnreadable, SqliteStore

CHECK = "journal"
_ONE_HOST = "one host's SQLite file: it is reachable from this host only"


def check(ctx: Context) -> list[CheckResult]:
    state = Path(ctx.runbook.state_dir)
    path = state / "journal.db"
    if path.exists():
        try:
            store = SqliteStore.read_only(path)
            try:
                count = len(store.incidents(ctx.runbook.name))
            finally:
                store.close()
        except JournalUnreadable as exc:
            return [failed(CHECK, str(path), f"unreadable: {exc}", "restore the journal "
                           "from a copy or move it aside; it is the only record of which "
                           "region serves writes")]
        if not os.access(path, os.W_OK) or not os.access(state, os.W_OK):
            return [failed(CHECK, str(path), "readable but not writable by this user: a "
                           "failover could not journal its steps", "run drorch as the "
                           "journal's owner, or fix the permissions")]
        return [passed(CHECK, str(path), f"opens and reads ({count} incident(s)); "
                       + _ONE_HOST)]
    parent = state
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        return [failed(CHECK, str(path), f"no journal yet, and {parent} is not writable: "
                       "the first run could not create it", "make the state directory "
                       "writable, or set state_dir")]
    return [passed(CHECK, str(path), "no journal yet; the first run creates it "
                   f"({parent} is writable); " + _ONE_HOST)]
