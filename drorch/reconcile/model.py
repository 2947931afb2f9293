"""Results of reconciliation, JSON-serialisable for the journal, the audit and the report.

``to_dict`` never carries row values: a change is named by its table, its key
(sensitive key columns masked) and the names of the columns that differ. The
rows themselves are captured on the new primary (``drorch_reconcile.changes``)
and only the conflict file shows values, sensitive ones masked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from drorch.reconcile.classify import Action, Kind

FenceState = Literal["fenced", "stopped", "writable", "following", "unreachable",
                     "locked-out"]


@dataclass(frozen=True)
class Divergence:
    """Where the new primary's timeline left the old one.

    ``lsn``: first byte of WAL the two nodes do not share. ``timeline``: the new
    primary's timeline that starts there; ``parent_timeline``: the one the old
    primary stayed on. ``at``: commit time (ISO, old primary's clock) of the last
    transaction both share, None when the WAL before the split is gone.
    """

    lsn: str
    timeline: int
    parent_timeline: int
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"lsn": self.lsn, "timeline": self.timeline,
                "parent_timeline": self.parent_timeline, "at": self.at}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Divergence:
        return cls(str(d["lsn"]), int(d["timeline"]), int(d["parent_timeline"]), d.get("at"))


@dataclass(frozen=True)
class FenceStatus:
    """What a node that should be fenced was found to be.

    ``fenced`` is True for a standby with no upstream (``fenced``) and for a node
    that is not running (``stopped``: nothing can write to it). ``alarm`` is True
    when the node accepts writes: whoever fenced it failed, or someone undid it.
    """

    state: FenceState
    fenced: bool
    alarm: bool
    reason: str
    in_recovery: bool | None = None
    has_upstream: bool | None = None
    receiving: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "fenced": self.fenced, "alarm": self.alarm,
                "reason": self.reason, "in_recovery": self.in_recovery,
                "has_upstream": self.has_upstream, "receiving": self.receiving}


@dataclass
class Change:
    """One key that differs between the nodes, and what drorch does about it.

    ``old_op``/``new_op``: each side's net change since the split (insert,
    update, delete, ``changed`` when unknown, None when that side did not touch
    it). ``old_row``/``new_row``: the rows as ``to_jsonb`` text, internal only.
    """

    change_id: str
    table: str
    key: dict[str, Any]
    kind: Kind
    action: Action
    columns: list[str]
    old_op: str | None = None
    new_op: str | None = None
    undetermined: bool = False
    old_row: str | None = field(default=None, repr=False)
    new_row: str | None = field(default=None, repr=False)
    old_committed_at: str | None = None
    """When the old primary last changed this key (ISO, its clock; None: unknown)."""

    def to_dict(self, sensitive: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        return {"change_id": self.change_id, "table": self.table,
                "key": {c: ("***" if c in sensitive else _plain(v)) for c, v in self.key.items()},
                "kind": self.kind, "action": self.action, "columns": list(self.columns),
                "old_op": self.old_op, "new_op": self.new_op, "undetermined": self.undetermined,
                "old_committed_at": self.old_committed_at}


@dataclass
class TableReport:
    """One configured table: its changes and the exact counts behind them."""

    table: str
    pk: list[str]
    policy: str
    sensitive: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    old_touched: int | None = None
    new_touched: int | None = None
    old_transactions: int | None = None
    new_transactions: int | None = None
    converged: int = 0
    """Keys both sides changed to the same row (nothing to do)."""
    new_only_columns: list[str] = field(default_factory=list)
    """Columns only the new primary has (added after the split): left out of the
    comparison; the old primary's rows take their default."""
    captured_counts: dict[str, int] | None = None
    """The counts as captured, for a report read back without its changes (they are
    rows of ``drorch_reconcile.changes``)."""
    bulk_applied: int = 0
    """Old-only inserts applied as one set while captured (``drorch_reconcile.bulk_sets``,
    :mod:`drorch.reconcile.bulk`): counted as old-only changes to apply, not in
    ``changes``."""
    bulk_commits: dict[int, int] = field(default_factory=dict, repr=False)
    """The set's rows per old-side top-level xid (for the split in time; not stored)."""

    def counts(self) -> dict[str, int]:
        if self.captured_counts is not None and not self.changes:
            return dict(self.captured_counts)
        kinds = Counter(c.kind for c in self.changes)  # one pass each: reports hold
        actions = Counter(c.action for c in self.changes)  # hundreds of thousands
        bulk = self.bulk_applied
        return {"rows_diverged": len(self.changes) + bulk,
                "old_only": kinds["old-only"] + bulk,
                "new_only": kinds["new-only"], "conflicts": kinds["conflict"],
                "collisions": kinds["collision"], "unkeyed": kinds["unkeyed"],
                "undetermined": sum(1 for c in self.changes if c.undetermined),
                "to_apply": actions["apply-old"] + bulk, "to_rekey": actions["rekey"],
                "manual": actions["manual"], "converged": self.converged,
                "applied_as_set": bulk}

    def to_dict(self, with_changes: bool = True) -> dict[str, Any]:
        sens = set(self.sensitive)
        out = {"table": self.table, "pk": self.pk, "policy": self.policy,
               "sensitive_columns": self.sensitive, "counts": self.counts(),
               "old_touched_keys": self.old_touched, "new_touched_keys": self.new_touched,
               "old_transactions": self.old_transactions,
               "new_transactions": self.new_transactions,
               "new_only_columns": self.new_only_columns}
        if with_changes:
            out["changes"] = [c.to_dict(sens) for c in self.changes]
        return out


@dataclass
class DivergenceReport:
    """Everything found between the split and now, and how it was found.

    ``method``: ``wal`` or ``full``; ``method_reason`` says why (a fallback names
    the failure). ``attribution``: how each side's changes were told apart
    (``wal`` exact; ``commit-ts`` a clock heuristic; ``none``).
    """

    run_id: str
    database: str
    method: str
    method_reason: str
    divergence: Divergence
    attribution: dict[str, str] = field(default_factory=dict)
    old_end_lsn: str | None = None
    new_end_lsn: str | None = None
    transactions: dict[str, int | None] = field(default_factory=dict)
    tables: list[TableReport] = field(default_factory=list)
    tables_without_pk: list[dict[str, Any]] = field(default_factory=list)
    unconfigured_tables: list[str] = field(default_factory=list)
    """Tables the old primary wrote after the split that could not be compared."""
    problems: list[str] = field(default_factory=list)
    """Tables not compared and why (missing on a node, columns differ): unaccounted."""
    rows_shipped: int = 0
    seconds: float = 0.0
    unlisted_tables: list[str] = field(default_factory=list)
    """Tables the runbook does not list, reconciled with ``default_policy``."""
    default_policy: str = "manual"
    in_time: dict[str, Any] = field(default_factory=dict)
    """The old primary's divergent writes split at the failover's promotion: ``before``
    (lost at the failover: its RPO) and ``after`` (written to an old primary that came
    back unfenced), each with transactions, rows and first/last commit; empty when the
    promotion time or the old side's WAL is not known."""
    notes: list[str] = field(default_factory=list)
    """What a reader must know that does not block: columns compared on what both share."""
    commit_timestamps: bool = True
    """Both nodes keep commit times (``track_commit_timestamp``): the full comparison's
    clock heuristic may ask them (a finding's setting, not stored with the run)."""

    def table(self, name: str) -> TableReport:
        for t in self.tables:
            if t.table == name:
                return t
        raise KeyError(name)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tables:
            for k, v in t.counts().items():
                out[k] = out.get(k, 0) + v
        return out

    def decisions(self) -> list[dict[str, Any]]:
        """One entry per change: what was found and what drorch will do (for the audit)."""
        return [c.to_dict(set(t.sensitive)) for t in self.tables for c in t.changes]

    def summary(self) -> str:
        t = self.totals()
        return (f"{self.method}: {t.get('rows_diverged', 0)} rows diverged "
                f"({t.get('old_only', 0)} old-only, {t.get('new_only', 0)} new-only, "
                f"{t.get('conflicts', 0)} conflicts, {t.get('collisions', 0)} key collisions, "
                f"{t.get('unkeyed', 0)} without a key); "
                + (f"{self.transactions['old_committed']} old-side transactions"
                   if self.transactions.get("old_committed") is not None else
                   "old-side transactions not counted (full comparison)"))

    def to_dict(self, with_changes: bool = True) -> dict[str, Any]:
        """``with_changes=False``: counts only (what is captured with the changes' rows)."""
        return {"run_id": self.run_id, "database": self.database, "method": self.method,
                "method_reason": self.method_reason, "attribution": self.attribution,
                "divergence": self.divergence.to_dict(), "old_end_lsn": self.old_end_lsn,
                "new_end_lsn": self.new_end_lsn, "transactions": self.transactions,
                "totals": self.totals(),
                "tables": [t.to_dict(with_changes) for t in self.tables],
                "tables_without_pk": self.tables_without_pk,
                "unconfigured_tables": self.unconfigured_tables, "problems": self.problems,
                "unlisted_tables": self.unlisted_tables, "default_policy": self.default_policy,
                "in_time": self.in_time, "notes": self.notes,
                "rows_shipped": self.rows_shipped, "seconds": round(self.seconds, 3),
                "summary": self.summary()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DivergenceReport:
        """The stored summary (keys as masked in ``to_dict``; rows are not in it; a captured
        report has counts, not changes)."""
        tables = []
        for t in d.get("tables", []):
            changes = [Change(c["change_id"], c["table"], c["key"], c["kind"], c["action"],
                              c["columns"], c.get("old_op"), c.get("new_op"),
                              c.get("undetermined", False),
                              old_committed_at=c.get("old_committed_at"))
                       for c in t.get("changes", [])]
            tables.append(TableReport(t["table"], t["pk"], t["policy"],
                                      t.get("sensitive_columns", []), changes,
                                      t.get("old_touched_keys"), t.get("new_touched_keys"),
                                      t.get("old_transactions"), t.get("new_transactions"),
                                      t["counts"].get("converged", 0),
                                      list(t.get("new_only_columns", [])),
                                      None if "changes" in t else dict(t["counts"]),
                                      int(t["counts"].get("applied_as_set", 0))))
        return cls(d["run_id"], d["database"], d["method"], d["method_reason"],
                   Divergence.from_dict(d["divergence"]), d.get("attribution", {}),
                   d.get("old_end_lsn"), d.get("new_end_lsn"), d.get("transactions", {}),
                   tables, d.get("tables_without_pk", []), d.get("unconfigured_tables", []),
                   d.get("problems", []), d.get("rows_shipped", 0), d.get("seconds", 0.0),
                   d.get("unlisted_tables", []), d.get("default_policy", "manual"),
                   d.get("in_time", {}), d.get("notes", []))


@dataclass
class ApplyResult:
    """What applying a run did; ``decisions`` has one outcome per change."""

    run_id: str
    applied: int = 0
    already_applied: int = 0
    kept_new: int = 0
    manual_pending: int = 0
    stale: int = 0
    errors: int = 0
    sequences_advanced: list[str] = field(default_factory=list)
    conflict_file: str | None = None
    rekeyed: int = 0
    """Collisions resolved by inserting the old primary's row under a fresh key."""
    applied_as_set: int = 0
    """Old-only inserts applied as one set per table while the run was captured
    (``drorch_reconcile.bulk_sets``): their outcome entries carry ``as_set``."""
    mapping_file: str | None = None
    """CSV of every re-keyed row's old and new key."""
    rekeyed_sample: list[dict[str, Any]] = field(default_factory=list)
    """The first re-keyed rows (table, column, old, new): the whole list is the CSV."""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    """One entry per change a human resolved (conflict file only: bounded by the file)."""
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    """Rows per table, kind and outcome (``applied``, ``kept-new``, ``resolved-old``,
    ``resolved-new``, ``stale``, ``error``, ``pending``, ``unshown``) with a SHA-256
    ``digest`` of that change set: grows with tables, never with rows."""
    in_conflict_file: int = 0
    """Entries written to the conflict file (pending, stale and refused changes)."""
    unshown: int = 0
    """Pending changes of tables gone since the capture: in no conflict file."""

    @property
    def rows_recovered(self) -> int:
        """Old-side rows now on the new primary (this call, earlier ones and the sets
        applied at capture)."""
        return self.applied + self.already_applied + self.applied_as_set

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "applied": self.applied,
                "already_applied": self.already_applied, "rows_recovered": self.rows_recovered,
                "applied_as_set": self.applied_as_set,
                "kept_new": self.kept_new, "rekeyed": self.rekeyed,
                "mapping_file": self.mapping_file, "rekeyed_sample": self.rekeyed_sample,
                "manual_pending": self.manual_pending,
                "stale": self.stale, "errors": self.errors,
                "sequences_advanced": self.sequences_advanced,
                "conflict_file": self.conflict_file, "in_conflict_file": self.in_conflict_file,
                "unshown": self.unshown, "outcomes": self.outcomes,
                **({"decisions": self.decisions} if self.decisions else {})}


@dataclass
class ResyncResult:
    """How the old primary became a replica of the new one."""

    method: Literal["rewind", "basebackup", "already-replica"]
    reason: str
    seconds: float
    kept_datadir: str | None = None
    caught_up_lsn: str | None = None
    evidence: str | None = None
    """The archive of the old primary's data directory taken before it was rewritten."""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "reason": self.reason, "seconds": round(self.seconds, 3),
                "kept_datadir": self.kept_datadir, "caught_up_lsn": self.caught_up_lsn,
                "evidence": self.evidence}


def _plain(v: Any) -> Any:
    return v if isinstance(v, (int, str, bool, float)) or v is None else str(v)
