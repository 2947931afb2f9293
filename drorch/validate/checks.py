"""Checks behind the API, keyed by ``kind``: a ``CheckRunner`` registry and the lab runners.

Production plugs its own runner in under an existing kind (an IMAP or mail
provider checker for ``mailbox``, a read-only role for ``db_row``) by passing
a different registry to ``run_flows``; the runbook does not change.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from drorch.validate.spec import DbRowCheckSpec, MailboxCheckSpec
from drorch.validate.template import render_text, sql_params


class CheckFailed(Exception):
    """The check ran but did not see what it expects yet (retried until the deadline)."""


class CheckRunner(Protocol):
    """Executes one kind of check.

    Contract: read-only (never changes the world), safe to call repeatedly and
    from several threads. Returns a short description of what was found (no
    row values, no message bodies: it goes into the journal). Raises
    ``CheckFailed`` when the expected thing is not there (yet); any other
    exception also counts as a failed try and is retried until the flow's
    deadline, except ``drorch.validate.template.TemplateError`` (a runbook
    mistake) which fails the flow at once. ``since`` is the flow's start (unix
    seconds): evidence older than that proves nothing about this failover.
    """

    def run(self, check: Any, variables: Mapping[str, Any], *, since: float) -> str: ...


QueryFn = Callable[[str, str, dict[str, Any]], list[tuple[Any, ...]]]
"""``query(database_name, sql, params) -> rows``: the caller binds it to the new primary."""


class DbRowCheck:
    """``db_row`` checks through a query function (the lead binds it to an adapter)."""

    def __init__(self, query: QueryFn) -> None:
        self._query = query

    def run(self, check: DbRowCheckSpec, variables: Mapping[str, Any], *, since: float) -> str:
        params = sql_params(check.sql, variables)
        rows = self._query(check.database, check.sql, params)
        if len(rows) < check.expect_rows:
            raise CheckFailed(
                f"{len(rows)} row(s) in {check.database}, expected at least {check.expect_rows}"
            )
        return f"{len(rows)} row(s) in {check.database}"


class SinkMailboxCheck:
    """``mailbox`` checks against the lab SMTP sink's store: one ``*.json`` per message.

    Each file holds ``from``, ``to`` (a string or a list), ``subject``,
    ``message_id``, ``body`` and ``received_at`` (unix seconds or ISO 8601;
    the file's mtime when absent). A message counts when its subject contains
    the rendered ``subject_contains``, it is addressed to ``to`` when the check
    names one, and it arrived at or after ``since - skew_s``. A relative
    ``store`` is taken under ``root``. Files that cannot be read or parsed yet
    (a message being written) are skipped.
    """

    def __init__(self, root: Path | None = None, *, skew_s: float = 2.0) -> None:
        self._root = root
        self._skew_s = skew_s

    def run(self, check: MailboxCheckSpec, variables: Mapping[str, Any], *, since: float) -> str:
        subject = render_text(check.subject_contains, variables)
        to = render_text(check.to, variables).lower() if check.to else None
        store = Path(check.store)
        if not store.is_absolute() and self._root is not None:
            store = self._root / store
        if not store.is_dir():
            raise CheckFailed(f"mail store {store} does not exist")
        seen = 0
        for path in sorted(store.glob("*.json")):
            message = _read_message(path)
            if message is None:
                continue
            seen += 1
            if subject not in str(message.get("subject", "")):
                continue
            if to is not None and to not in _recipients(message.get("to")):
                continue
            if _received_at(message, path) < since - self._skew_s:
                continue
            return f"message {message.get('message_id') or path.name} in {store}"
        raise CheckFailed(
            f"no message with subject containing {subject!r}"
            + (f" to {to}" if to else "")
            + f" since the flow started ({seen} message(s) in {store})"
        )


def _read_message(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _recipients(value: Any) -> set[str]:
    items = value if isinstance(value, list) else [value]
    out: set[str] = set()
    for item in items:
        if item is None:
            continue
        text = str(item).strip().lower()
        out.add(text)
        if "<" in text and text.endswith(">"):
            out.add(text[text.rindex("<") + 1 : -1])
    return out


def _received_at(message: Mapping[str, Any], path: Path) -> float:
    value = message.get("received_at")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def lab_check_runners(query: QueryFn, mail_root: Path | None = None) -> dict[str, CheckRunner]:
    """The registry the lab uses: ``db_row`` through ``query``, ``mailbox`` from the sink."""
    return {"db_row": DbRowCheck(query), "mailbox": SinkMailboxCheck(mail_root)}
