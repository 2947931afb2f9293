"""What to reconcile in one database, as the runbook states it (pydantic v2, strict keys).

The lead embeds one :class:`ReconcileSpec` per database in the runbook. Listed tables
are applied in the order listed (parents before children, so foreign keys hold), then
every table the runbook does not list, by name, with ``default_policy``: no table of
the database is skipped. Deletes are applied in the reverse order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drorch.unique import require_unique

Policy = Literal["old-wins", "new-wins", "manual"]
Method = Literal["auto", "wal", "full"]
Collisions = Literal["rekey", "manual"]

SENSITIVE_EVERYWHERE = ("password", "password_hash", "passwd", "secret", "token", "api_key",
                        "access_token", "refresh_token", "ssn", "card_number", "cvv", "iban")
"""Column names masked in every table by default: a table nobody listed (reconciled all
the same) may hold credentials or card data, and its rows reach the conflict file."""


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
    collisions: Collisions = "rekey"
    """Both sides inserted the same new key: ``rekey`` inserts the old primary's row under
    a fresh key from the key's sequence (tables with a one-column key fed by a
    sequence; others go to a human), ``manual`` hands both rows to a human."""

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

    ``default_policy``: the conflict policy of every table not listed (they are
    reconciled all the same). ``conflict_file``: where changes for a human go
    (manual conflicts, key collisions, rows the new primary refused, sides that
    cannot be told apart); the engine defaults it to
    ``<state_dir>/conflicts-<database>.jsonl``.
    """

    tables: list[ReconcileTable] = Field(default_factory=list)
    conflict_file: str | None = None
    method: Method = "auto"
    default_policy: Policy = "manual"
    sensitive_everywhere: list[str] = Field(
        default_factory=lambda: list(SENSITIVE_EVERYWHERE))
    """Columns masked in every table that has them, listed or not, on top of a listed
    table's own ``sensitive_columns`` (``[]`` turns the default list off)."""

    @model_validator(mode="after")
    def _mask_everywhere(self) -> ReconcileSpec:
        extra = self.sensitive_everywhere
        if extra:
            object.__setattr__(self, "tables", [t.model_copy(update={
                "sensitive_columns": t.sensitive_columns + [
                    c for c in extra if c not in t.sensitive_columns]}) for t in self.tables])
        return self

    @field_validator("tables")
    @classmethod
    def _unique(cls, tables: list[ReconcileTable]) -> list[ReconcileTable]:
        require_unique([t.name for t in tables], "table")
        return tables

    def table(self, name: str) -> ReconcileTable:
        """The listed table, else the default for one the runbook does not list."""
        for t in self.tables:
            if t.name == name:
                return t
        return self.unlisted(name)

    def listed(self, name: str) -> bool:
        return any(t.name == name for t in self.tables)

    def unlisted(self, name: str) -> ReconcileTable:
        """A table found in the database but not in the runbook: ``default_policy``, the
        ``sensitive_everywhere`` columns masked. Built without the name pattern (the
        database named it)."""
        return ReconcileTable.model_construct(name=name, policy=self.default_policy,
                                              sensitive_columns=list(self.sensitive_everywhere),
                                              collisions="rekey")


def masked_columns(names: list[str], columns: list[str]) -> list[str]:
    """The runbook's sensitive names, plus each of the table's ``columns`` that equals one
    of them but for case (``Password`` for ``password``): a value is never shown because
    a name was spelled differently. Whole names only (``pin`` does not mask
    ``shipping``)."""
    lowered = {n.lower() for n in names}
    return list(dict.fromkeys([*names, *(c for c in columns if c.lower() in lowered)]))
