"""A readiness check's verdict: one row of ``drorch plan``'s table.

``pass`` the estate is as a failover needs it; ``warn`` a failover would probably
work but something is off or could not be seen (a region whose API does not answer);
``fail`` a failover would fail or do harm; ``skip`` the check does not apply to this
runbook, or could not be made at all, said plainly in ``reason`` (never counted as
ready or not ready).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Status = Literal["pass", "warn", "fail", "skip"]
Verdict = Literal["ready", "warnings", "not_ready"]

_RANK = {"skip": 0, "pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class CheckResult:
    """One verdict about one thing. ``check`` is a stable id (``database.replica``,
    ``secret``, ``dns.ttl``, ...), ``target`` what it is about (a database, a secret in a
    region, a record), ``fix`` what a human does about a warn or fail (empty on pass)."""

    check: str
    target: str
    status: Status
    reason: str
    fix: str = ""

    def key(self) -> tuple[str, str]:
        return self.check, self.target

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def passed(check: str, target: str, reason: str) -> CheckResult:
    return CheckResult(check, target, "pass", reason)


def warned(check: str, target: str, reason: str, fix: str) -> CheckResult:
    return CheckResult(check, target, "warn", reason, fix)


def failed(check: str, target: str, reason: str, fix: str) -> CheckResult:
    return CheckResult(check, target, "fail", reason, fix)


def skipped(check: str, target: str, reason: str, fix: str = "") -> CheckResult:
    return CheckResult(check, target, "skip", reason, fix)


def verdict(results: Iterable[CheckResult]) -> Verdict:
    """``not_ready`` when any check failed, ``warnings`` when any warned, else ``ready``."""
    worst = max((_RANK[r.status] for r in results), default=0)
    return ("ready", "warnings", "not_ready")[worst]
