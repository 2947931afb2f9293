"""Exact divergent-write reconciliation after an unplanned failover (failback).

The engine's steps call, in this order (each safe to call twice):

1. :func:`fence_as_standby` (old primary as a standby with no upstream), then
   :func:`verify_fenced` before anything else (``alarm`` when it is writable).
2. :func:`divergence_point` on the new primary: LSN, timelines, time if known.
3. :func:`find_divergence`: every divergent write of the configured tables,
   from both nodes' WAL (or a full comparison, saying why), classified and
   captured on the new primary (``drorch_reconcile`` schema).
4. :func:`apply_reconciliation`: old-only changes and ``old-wins`` conflicts
   applied exactly once; manual conflicts to the conflict file, which a human
   resolves and :func:`apply_conflict_file` applies.
5. :func:`resync_as_replica` (pg_rewind, else base backup) and
   :func:`wait_caught_up`.

:func:`wal_retention_warning` tells beforehand whether a primary keeps what
this needs. Needs superuser and ``CREATE EXTENSION pg_walinspect`` on the
primary before the split (each reconciled database).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drorch.reconcile.apply import (
        ApplyBlocked,
        NotCaptured,
        SchemaChanged,
        apply_reconciliation,
    )
    from drorch.reconcile.config import ReconcileSpec, ReconcileTable
    from drorch.reconcile.fence import FenceError, fence_as_standby, verify_fenced, wait_replay_idle
    from drorch.reconcile.find import ReconcileError, find_divergence, run_id_for
    from drorch.reconcile.model import (
        ApplyResult,
        Change,
        Divergence,
        DivergenceReport,
        FenceStatus,
        ResyncResult,
        TableReport,
    )
    from drorch.reconcile.node import PgNodeLike
    from drorch.reconcile.resolve import apply_conflict_file
    from drorch.reconcile.resync import resync_as_replica, wait_caught_up
    from drorch.reconcile.retention import wal_retention_warning
    from drorch.reconcile.timeline import NotPromoted, divergence_point
    from drorch.reconcile.walread import WalUnavailable


_EXPORTS = {
    "ApplyResult": "drorch.reconcile.model",
    "Change": "drorch.reconcile.model",
    "Divergence": "drorch.reconcile.model",
    "DivergenceReport": "drorch.reconcile.model",
    "FenceError": "drorch.reconcile.fence",
    "FenceStatus": "drorch.reconcile.model",
    "NotCaptured": "drorch.reconcile.apply",
    "ApplyBlocked": "drorch.reconcile.apply",
    "SchemaChanged": "drorch.reconcile.apply",
    "NotPromoted": "drorch.reconcile.timeline",
    "PgNodeLike": "drorch.reconcile.node",
    "ReconcileError": "drorch.reconcile.find",
    "ReconcileSpec": "drorch.reconcile.config",
    "ReconcileTable": "drorch.reconcile.config",
    "ResyncResult": "drorch.reconcile.model",
    "TableReport": "drorch.reconcile.model",
    "WalUnavailable": "drorch.reconcile.walread",
    "apply_conflict_file": "drorch.reconcile.resolve",
    "apply_reconciliation": "drorch.reconcile.apply",
    "divergence_point": "drorch.reconcile.timeline",
    "fence_as_standby": "drorch.reconcile.fence",
    "find_divergence": "drorch.reconcile.find",
    "resync_as_replica": "drorch.reconcile.resync",
    "run_id_for": "drorch.reconcile.find",
    "verify_fenced": "drorch.reconcile.fence",
    "wait_caught_up": "drorch.reconcile.resync",
    "wait_replay_idle": "drorch.reconcile.fence",
    "wal_retention_warning": "drorch.reconcile.retention",
}
"""Public name -> the module that defines it: imported on first use (PEP 562), so
``drorch.config`` (which needs only ``reconcile.config``) does not pay for psycopg
and the WAL readers at every CLI start."""

__all__ = [
    "ApplyBlocked", "ApplyResult", "Change", "Divergence", "DivergenceReport", "FenceError",
    "FenceStatus", "NotCaptured", "NotPromoted", "PgNodeLike", "ReconcileError",
    "ReconcileSpec", "ReconcileTable", "ResyncResult", "SchemaChanged", "TableReport",
    "WalUnavailable", "apply_conflict_file", "apply_reconciliation", "divergence_point",
    "fence_as_standby", "find_divergence", "load_report", "resync_as_replica", "run_id_for",
    "verify_fenced", "wait_caught_up", "wait_replay_idle", "wal_retention_warning",
]


def load_report(new_dsn: str, run_id: str) -> DivergenceReport | None:
    """The report a run captured on the new primary, or None (for resume and audit)."""
    from drorch.reconcile import store
    from drorch.reconcile._db import connect

    with connect(new_dsn) as c:
        return store.load_report(c, run_id)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
