"""The accounting invariant: every divergent change has exactly one recorded outcome.

Before anything destructive (pg_rewind, a base backup over the old data directory)
runs, each change found on either side, in every table, must be *applied* (the old
primary's row is on the new primary), *re-keyed* (a collision: the old primary's row is
on the new primary under a fresh key, in the mapping), *kept* (the new primary's row stands: a
new-only change, a ``new-wins`` conflict, a human's choice) or *pending* for a human
in the conflict file with its reason. A table that could not be compared (missing on
a node, its columns differ) or that the old primary wrote but nothing read, is
unaccounted as a whole. Pure: works on the journaled report and apply result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

APPLIED = frozenset({"applied", "already-applied", "resolved-old"})
KEPT = frozenset({"kept-new", "resolved-new"})
REKEYED = frozenset({"rekeyed"})
FOR_A_HUMAN = frozenset({"pending", "stale", "error"})


@dataclass
class TableAccount:
    """Rows of one table by outcome; ``unaccounted`` must be 0."""

    table: str
    found: int = 0
    applied: int = 0
    kept: int = 0
    rekeyed: int = 0
    """Collisions: both rows kept, the old primary's under a fresh key (in the mapping)."""
    pending: int = 0
    unaccounted: int = 0
    old_versions_not_kept: int = 0
    """Conflicts and collisions decided for the new primary's row (a ``new-wins`` policy
    or a human's "new"): the old row is in the evidence and the capture, not the table."""
    by_kind: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "found": self.found, "applied": self.applied,
                "kept": self.kept, "rekeyed": self.rekeyed, "pending": self.pending,
                "unaccounted": self.unaccounted,
                "old_versions_not_kept": self.old_versions_not_kept,
                "by_kind": dict(sorted(self.by_kind.items()))}


@dataclass
class Accounting:
    """The invariant over one run: ``holds`` when every change has its outcome and every
    table was compared. ``blocked``: tables not compared, with the reason."""

    tables: list[TableAccount]
    blocked: list[str]
    conflict_file: str | None

    @property
    def unaccounted(self) -> int:
        return sum(t.unaccounted for t in self.tables)

    @property
    def holds(self) -> bool:
        return not self.blocked and self.unaccounted == 0

    def totals(self) -> dict[str, int]:
        out = {"found": 0, "applied": 0, "kept": 0, "rekeyed": 0, "pending": 0,
               "unaccounted": 0,
               "old_versions_not_kept": 0}
        for t in self.tables:
            for k in out:
                out[k] += getattr(t, k)
        return out

    def problem(self) -> str:
        """What is not accounted for and what to do: for the halt message."""
        parts = [f"{t.table}: {t.unaccounted} of {t.found} changed rows without an outcome"
                 for t in self.tables if t.unaccounted]
        parts += self.blocked
        return ("; ".join(parts) + ". Nothing was rewound and nothing applied for these: "
                "the old primary still holds its rows (fenced, readable). Bring them over by "
                "hand (or make the tables comparable: same columns on both nodes), then run "
                "the failback again; it looks afresh.")

    def to_dict(self) -> dict[str, Any]:
        return {"holds": self.holds, "totals": self.totals(), "blocked": self.blocked,
                "conflict_file": self.conflict_file,
                "tables": [t.to_dict() for t in self.tables]}


def account(report: dict[str, Any], applied: dict[str, Any]) -> Accounting:
    """The invariant for a journaled report (``DivergenceReport.to_dict``) and apply
    result (``ApplyResult.to_dict``: its ``outcomes``, rows per table, kind and outcome).
    A change for a human counts only when it is in the conflict file."""
    shown = bool(applied.get("conflict_file")) and not applied.get("unshown")
    by_table: dict[str, TableAccount] = {t["table"]: TableAccount(t["table"])
                                         for t in report.get("tables", [])}
    rows = applied.get("outcomes")
    if rows is None:  # one entry per change (a conflict file's resolutions)
        rows = [{**d, "rows": 1} for d in applied.get("decisions", [])]
    for d in rows:
        t = by_table.setdefault(d["table"], TableAccount(d["table"]))
        n = int(d["rows"])
        t.found += n
        t.by_kind[d["kind"]] = t.by_kind.get(d["kind"], 0) + n
        outcome = d["outcome"]
        if outcome in APPLIED:
            t.applied += n
        elif outcome in REKEYED:
            t.rekeyed += n
        elif outcome in KEPT:
            t.kept += n
            if d["kind"] in ("conflict", "collision", "unkeyed"):
                t.old_versions_not_kept += n
        elif outcome in FOR_A_HUMAN and shown:
            t.pending += n
        else:
            t.unaccounted += n
    blocked = list(report.get("problems", []))
    blocked += [f"{name}: written on the old primary after the split but not compared"
                for name in report.get("unconfigured_tables", [])
                if not any(name in p for p in blocked)]
    return Accounting(list(by_table.values()), blocked, applied.get("conflict_file"))
