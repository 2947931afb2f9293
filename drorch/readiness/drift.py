"""Readiness inside ``drorch watch``: the checks run every ``every_s`` seconds in a
background thread (they take up to the AWS deadline; a tick must not wait for them),
and a result whose status changed since the last run is journaled and audited as drift
(``watch.readiness_drift``), never a run that changed nothing.

Journal: ``readiness:<runbook>`` in the store holds the last results, when they were
made and for which serving region. Store and audit writes happen on the watcher's own
thread (in :meth:`ReadinessWatch.poll`), never on the checks' thread. No run starts
while a failover is in hand (its reads would compete with the steps for the same APIs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from drorch.config import Runbook
from drorch.readiness.result import CheckResult, verdict
from drorch.readiness.run import readiness

log = structlog.get_logger("drorch.readiness")

DEFAULT_EVERY_S = 1800.0
"""AWS's Region switch re-evaluates its plans every 30 minutes, for the same reason."""


def record_key(runbook: Runbook) -> str:
    return f"readiness:{runbook.name}"


def changes(before: list[dict[str, Any]] | None,
            after: list[CheckResult]) -> list[dict[str, Any]]:
    """Pure: each (check, target) whose status differs from ``before`` (``None``: no
    earlier run, so every result is news), as ``{check, target, was, now, reason}``;
    a result that is gone is ``now: gone``."""
    old = {(r["check"], r["target"]): r["status"] for r in before or []}
    new = {r.key(): r for r in after}
    out = [{"check": c, "target": t, "was": old.get((c, t), "unknown"), "now": r.status,
            "reason": r.reason} for (c, t), r in new.items() if old.get((c, t)) != r.status]
    out += [{"check": c, "target": t, "was": s, "now": "gone", "reason": ""}
            for (c, t), s in old.items() if (c, t) not in new]
    return out


class ReadinessWatch:
    """Runs the checks for a watcher. ``poll`` each tick; ``every_s`` 0 turns it off."""

    def __init__(self, runbook: Runbook, store: Any, audit: Any, aws: Any, every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.runbook, self.store, self.audit, self.aws = runbook, store, audit, aws
        self.every_s, self.clock = every_s, clock
        self.next_at = clock()  # the first run at once: the state is known from the start
        self._thread: threading.Thread | None = None
        self._done: tuple[str, list[CheckResult]] | None = None

    def poll(self, serving: Callable[[], str], busy: Callable[[], bool]) -> list[dict[str, Any]]:
        """Journal a finished run's drift (returned), and start the next run when due
        and nothing is in hand. Cheap when nothing is due."""
        drift = self._collect()
        if self.every_s <= 0 or self._thread is not None or self.clock() < self.next_at:
            return drift
        if busy():
            return drift
        self.next_at = self.clock() + self.every_s
        region = serving()
        self._thread = threading.Thread(target=self._run, args=(region,), daemon=True,
                                        name="watch-readiness")
        self._thread.start()
        return drift

    def _run(self, region: str) -> None:
        try:
            results = readiness(self.runbook, self.aws, region)
        except Exception as exc:  # noqa: BLE001 (the watcher goes on)
            log.warning("watch.readiness_failed", error=type(exc).__name__)
            results = []
        self._done = (region, results)

    def _collect(self) -> list[dict[str, Any]]:
        if self._thread is None or self._thread.is_alive() or self._done is None:
            return []
        region, results = self._done
        self._thread, self._done = None, None
        if not results:
            return []
        key = record_key(self.runbook)
        before = (self.store.get(key) or {}).get("results")
        drift = changes(before, results)
        if not drift:
            return []
        ready = verdict(results)
        self.store.put(key, {"at": time.time(), "serving": region, "ready": ready,
                             "results": [r.as_dict() for r in results]})
        worse = [d for d in drift if d["now"] in ("warn", "fail")]
        reason = (f"readiness {ready}: " + "; ".join(
            f"{d['check']} {d['target']}: {d['was']} -> {d['now']}" for d in drift[:5])
            + (f" (and {len(drift) - 5} more)" if len(drift) > 5 else ""))
        self.audit.record("watch.readiness_drift", actor="auto", reason=reason,
                          outcome=ready, detail={"changes": drift})
        (log.warning if worse else log.info)("watch.readiness_drift", ready=ready,
                                             changed=len(drift), reason=reason)
        return drift
