"""Readiness: can the estate fail over now? Checks, one module per concern, each
giving pass / warn / fail (or skip: not applicable, or not checked, said plainly) with
the reason and the fix. ``drorch plan`` prints them and exits 0 ready, 1 warnings, 2
not ready; ``drorch watch`` runs them periodically and journals a change as drift
(:mod:`drorch.readiness.drift`)."""

from drorch.readiness.result import CheckResult, Status, Verdict, verdict
from drorch.readiness.run import CHECKS, readiness

__all__ = ["CHECKS", "CheckResult", "Status", "Verdict", "readiness", "verdict"]
