"""What to reconcile in one database, as the runbook states it (pydantic v2, strict keys).

The lead embeds one :class:`ReconcileSpec` per database in the runbook. Tables are
applied in the order listed (parents before children, so foreign keys hold);
deletes are applied in the reverse order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Policy = Literal["old-wins", "new-wins", "manual"]
Method = Literal["auto", "wal", "full"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReconcileTable(_Model):
    """One table: ``schema.table``, the conflict policy and the columns never to show.

    ``sensitive_columns`` never reach a report, an audit entry or the conflict
    file: their names may appear (a human must know *that* they differ), their
    values never do.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$")
    policy: Policy = "manual"
    sensitive_columns: list[str] = Field(default_factory=list)

    @property
    def schema_name(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table_name(self) -> str:
        return self.name.split(".", 1)[1]


class ReconcileSpec(_Model):
    """The tables of one database, where manual conflicts go, and how to find changes.

    ``method``: ``wal`` reads both nodes' WAL from the divergence point (exact,
    cost follows the divergent WAL, not table size) and fails if it cannot;
    ``full`` compares whole tables (COPY both sides, sorted diff); ``auto`` tries
    the WAL and falls back to the full comparison, saying why.
    """

    tables: list[ReconcileTable] = Field(min_length=1)
    conflict_file: str | None = None
    method: Method = "auto"

    @field_validator("tables")
    @classmethod
    def _unique(cls, tables: list[ReconcileTable]) -> list[ReconcileTable]:
        names = [t.name for t in tables]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tables listed twice: {', '.join(dupes)}")
        return tables

    @model_validator(mode="after")
    def _manual_needs_file(self) -> ReconcileSpec:
        manual = [t.name for t in self.tables if t.policy == "manual"]
        if manual and not self.conflict_file:
            raise ValueError(
                f"conflict_file is required: tables {', '.join(manual)} use policy 'manual'"
            )
        return self

    def table(self, name: str) -> ReconcileTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)
