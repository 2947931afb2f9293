"""Run every readiness check for a runbook: the independent ones side by side (each
bounded by the AWS deadline and libpq's timeouts), then the IAM check, which needs
what the others learned (secret ARNs, the zone, alarm topics) to name resources.

A check that raises is a warning saying so, never a crash of ``drorch plan``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from drorch.config import Runbook
from drorch.readiness import alarms, databases, dns, iam, journal, secrets, wal, write_flag
from drorch.readiness.context import Context
from drorch.readiness.result import CheckResult, warned

Check = Callable[[Context], list[CheckResult]]

CHECKS: dict[str, Check] = {
    "database": databases.check,
    "secret": secrets.check,
    "dns": dns.check,
    "alarms": alarms.check,
    "write_flag": write_flag.check,
    "wal": wal.check,
    "journal": journal.check,
}
"""In the order the table shows them; ``iam`` runs last."""


def _guarded(name: str, fn: Check, ctx: Context) -> list[CheckResult]:
    try:
        return fn(ctx)
    except Exception as exc:  # noqa: BLE001 (a plan must still print)
        first = (str(exc).strip().splitlines() or [""])[0]
        return [warned(name, "-", f"the check itself failed ({type(exc).__name__}: "
                       f"{first}): not checked", "report it; run `drorch plan` again")]


def readiness(rb: Runbook, aws: Any, serving: str) -> list[CheckResult]:
    """Every check's verdicts for ``rb`` with ``serving`` the region that serves writes
    now (the journal's view; a failover would promote the other). ``aws`` is an
    :class:`~drorch.adapters.aws.AwsClients`: its deadline-bound clients are used, so a
    region whose API does not answer costs at most ``aws.failed_region_deadline_s``."""
    standby = next(r.name for r in rb.regions if r.name != serving)
    deadline = rb.aws.failed_region_deadline_s
    ctx = Context(rb, aws.with_deadline(deadline), serving, standby, deadline)
    with ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readiness") as pool:
        futures = [pool.submit(_guarded, name, fn, ctx) for name, fn in CHECKS.items()]
        results = [r for f in futures for r in f.result()]
    return results + _guarded("iam", iam.check, ctx)
