"""What every readiness check is given: the runbook, deadline-bound AWS clients, which
region serves writes now and which a failover would promote, and a place to leave
what one check learned for the IAM check (secret ARNs, the zone, alarm topics)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drorch.adapters.readiness_aws import classify, error_text
from drorch.config import Runbook
from drorch.readiness.result import CheckResult, failed, skipped, warned

ClientFn = Callable[[str, str], Any]
"""(service, AWS region) -> a boto3 client whose calls give up within the deadline."""


@dataclass
class Context:
    runbook: Runbook
    aws: ClientFn
    serving: str
    """The region serving writes now (the journal's view)."""
    standby: str
    """The region a failover would promote."""
    deadline_s: float
    learned: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def aws_region(self, region: str) -> str:
        return self.runbook.region(region).aws_region

    def learn(self, key: str, value: Any) -> None:
        """Keep a fact for a later check (thread-safe: checks run side by side)."""
        with self._lock:
            self.learned.setdefault(key, []).append(value)

    def region_of_aws(self, aws_region: str) -> str:
        """The runbook region name for an AWS region (the AWS region itself if none)."""
        return next((r.name for r in self.runbook.regions if r.aws_region == aws_region),
                    aws_region)


def aws_problem(ctx: Context, check: str, target: str, service: str, aws_region: str,
                exc: BaseException, what: str) -> CheckResult:
    """A verdict for an AWS call that did not give an answer about ``what``: a region
    whose API does not answer is a warning naming the region (never a crash); a call
    refused to the caller or not offered by the endpoint is a warning saying the thing
    was not checked. ``not_found`` is the caller's to judge (it is usually a fail)."""
    kind = classify(exc)
    region = ctx.region_of_aws(aws_region)
    where = f"{region}'s {service} API ({aws_region})"
    if kind == "unreachable":
        return warned(check, target, f"{where} did not answer within {ctx.deadline_s:g}s: "
                      f"{what} not checked", f"check {region}'s AWS API; run `drorch plan` "
                      "again when it answers (a failover does steps aimed at a region that "
                      "does not answer as best effort)")
    if kind == "denied":
        return warned(check, target, f"{where} refused to tell ({error_text(exc)}): {what} "
                      "not checked", "grant the read-only call named in the error "
                      "(terraform/modules/iam grants every call drorch makes)")
    if kind == "unsupported":
        return warned(check, target, f"{where} does not offer the call ({error_text(exc)}): "
                      f"{what} not checked", "check it by hand or against AWS itself")
    if kind == "not_found":
        return failed(check, target, f"{what}: not found in {where} ({error_text(exc)})",
                      "create it (terraform/examples/two-region) or correct the runbook")
    return warned(check, target, f"{where}: {error_text(exc)}: {what} not checked",
                  "read the error; run `drorch plan` again")


def not_configured(check: str, what: str) -> CheckResult:
    return skipped(check, "-", f"the runbook names no {what}")
