"""Whether an automatic failover may start now. Pure.

A false failover in a payments company is an incident of its own, so every path
that is not a clear "the primary failed and the secondary can take over" ends in
``wait``, ``refuse`` or ``none``, each with the sentence that says why. The caller
re-evaluates every tick: a refusal is not remembered here (the lag may drop, the
secondary may recover). A human ``drorch failover`` does not go through here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from drorch.health.config import HealthPolicy
from drorch.health.window import Verdict

Action = Literal["failover", "wait", "refuse", "none"]
Guard = Literal[
    "already_failing_over", "secondary_unhealthy", "secondary_unknown",
    "replica_lag", "replica_lag_unknown", "recovery_hold",
]


@dataclass(frozen=True)
class Decision:
    """One action and its reason; ``guard`` names the rule behind a refusal."""

    action: Action
    reason: str
    guard: Guard | None = None


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class LagReading:
    """The replica's lag as last read while the primary still answered, and how long
    before the primary's count began (negative: during the count)."""

    bytes: int
    before_failure_s: float


def decide_failover(
    primary: Verdict,
    secondary: Verdict | None,
    replica_lag_bytes: int | None,
    failover_in_progress_or_done: bool,
    policy: HealthPolicy,
    last_lag: LagReading | None = None,
) -> Decision:
    """Decide from the two regions' verdicts, the replica's lag and the machine's state.

    - primary healthy or not yet observed: ``none``; degraded: ``wait``;
    - primary failed: ``refuse`` if a failover is already running or done, if the
      secondary is not healthy (or has no verdict), if the lag is over
      ``policy.max_replica_lag_bytes`` (or unknown, when ``refuse_on_unknown_lag``);
      otherwise ``failover``.

    A dead primary has no lag to read now. ``last_lag``, read just before its count
    began (the caller decides what "just before" is), stands in for it: a replica
    that was far behind then is refused, one that was close may take over. Writes
    after that reading are not in it; failback finds them exactly.
    """
    if primary.status in ("healthy", "unknown"):
        return Decision("none", primary.reason)
    if primary.status == "degraded":
        return Decision("wait", primary.reason)
    if failover_in_progress_or_done:
        return Decision(
            "refuse", f"{primary.reason}; a failover is already running or done",
            "already_failing_over",
        )
    if secondary is None or secondary.status == "unknown":
        name = secondary.region if secondary else "the secondary"
        return Decision(
            "refuse", f"{primary.reason}; {name} has not been observed, not failing over "
            "blind", "secondary_unknown",
        )
    if secondary.status != "healthy":
        return Decision(
            "refuse", f"{primary.reason}; secondary unhealthy: {secondary.reason}",
            "secondary_unhealthy",
        )
    limit = policy.max_replica_lag_bytes
    lag_note = ""
    if limit is not None:
        if replica_lag_bytes is None and last_lag is not None:
            when = (f"{last_lag.before_failure_s:.1f}s before the failure began"
                    if last_lag.before_failure_s >= 0 else "as the failure began")
            if last_lag.bytes > limit:
                return Decision(
                    "refuse", f"{primary.reason}; replica lag unknown now, "
                    f"{_fmt_bytes(last_lag.bytes)} when last read {when}: over the limit of "
                    f"{_fmt_bytes(limit)}", "replica_lag",
                )
            lag_note = (f"; replica lag unknown now, {_fmt_bytes(last_lag.bytes)} within "
                        f"{_fmt_bytes(limit)} when last read {when}")
        elif replica_lag_bytes is None:
            if policy.refuse_on_unknown_lag:
                return Decision(
                    "refuse", f"{primary.reason}; replica lag unknown (limit "
                    f"{_fmt_bytes(limit)})", "replica_lag_unknown",
                )
            lag_note = "; replica lag unknown, allowed by policy"
        elif replica_lag_bytes > limit:
            return Decision(
                "refuse", f"{primary.reason}; replica lag {_fmt_bytes(replica_lag_bytes)} "
                f"is over the limit of {_fmt_bytes(limit)}", "replica_lag",
            )
        else:
            lag_note = (
                f"; replica lag {_fmt_bytes(replica_lag_bytes)} within "
                f"{_fmt_bytes(limit)}"
            )
    elif replica_lag_bytes is not None:
        lag_note = f"; replica lag {_fmt_bytes(replica_lag_bytes)}"
    return Decision(
        "failover", f"{primary.reason}; {secondary.region} healthy{lag_note}: failing over"
    )
