"""Pure decisions: which side changed a row, what kind of divergence it is, what to do.

Rows are dicts as ``to_jsonb`` renders them (parsed with exact decimals), keys
are canonical JSON strings of the primary-key values. ``a`` is the old
primary's row, ``b`` the new primary's; None means the row is absent there.

A *touch* says whether a side changed a key after the split: True, False or
None (cannot tell). Identical rows are never a divergence, whoever touched them.
Anything undetermined is treated as a conflict and goes to a human, never through a
table's policy: ``old-wins``/``new-wins`` only choose between two versions of a row
that existed at the split. Two sides that each inserted the same new key made two
rows, not one row twice: a *collision*, never resolved by overwriting one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from drorch.reconcile.config import Policy

Row = dict[str, Any]
Kind = Literal["old-only", "new-only", "conflict", "collision", "unkeyed"]
Action = Literal["apply-old", "keep-new", "manual", "rekey"]


def canonical_key(values: list[Any]) -> str:
    """One string per primary key, equal on both nodes for equal values."""
    return json.dumps(values, separators=(",", ":"), default=str)


_INT_ARRAY = re.compile(r"\[(?:0|-?[1-9][0-9]*)(?:, (?:0|-?[1-9][0-9]*))*\]")


def key_from_array(text: str) -> str:
    """The canonical key of a ``jsonb_build_array(key columns)::text``.

    Equal to ``canonical_key`` of the parsed values (what parsing the whole row gave):
    integer-only keys, the usual case, are rewritten without parsing (``json.loads`` and
    ``dumps`` render such an array identically but for the separator; ``-0`` is left to
    the parser, which makes it ``0``)."""
    if _INT_ARRAY.fullmatch(text):
        return text.replace(", ", ",")
    return canonical_key(parse_row(text))


_CANONICAL_INTS = re.compile(r"\[-?[0-9]+(?:,-?[0-9]+)*\]")


def key_values(key: str) -> list[Any]:
    """The values of a canonical key (``json.loads``; integer-only keys without it)."""
    if _CANONICAL_INTS.fullmatch(key):
        return [int(v) for v in key[1:-1].split(",")]
    return json.loads(key)  # type: ignore[no-any-return]


def key_of(row: Row, pk: list[str]) -> str:
    return canonical_key([row[c] for c in pk])


_ROW_DECODER = json.JSONDecoder(parse_float=Decimal)
"""One decoder for every row: ``json.loads(text, parse_float=...)`` builds a new one per
call, which cost as much as parsing a small row."""


def parse_row(text: str) -> Row:
    """A ``to_jsonb(row)::text`` as a dict; numbers as exact decimals or ints."""
    return _ROW_DECODER.decode(text)  # type: ignore[no-any-return]


def differing_columns(a: Row | None, b: Row | None) -> list[str]:
    """Columns whose values differ; every column of the present row when one is absent."""
    if a is None and b is None:
        return []
    if a is None or b is None:
        return sorted((a or b or {}).keys())
    return sorted(c for c in set(a) | set(b) if a.get(c) != b.get(c))


def classify(a: Row | None, b: Row | None, old: bool | None,
             new: bool | None, base: bool | None = None) -> tuple[Kind | None, bool]:
    """(kind, undetermined). None when the two rows are equal: nothing diverged.

    ``base``: whether the key existed at the split (None: unknown). Both sides touched
    a key that did not exist then and both hold a row: a ``collision``."""
    if a == b:
        return None, False
    if old is True and new is False:
        return "old-only", False
    if old is False and new is True:
        return "new-only", False
    if old is True and new is True and base is False and a is not None and b is not None:
        return "collision", False
    return "conflict", not (old is True and new is True)


def attribute(a: Row | None, b: Row | None, old: bool | None, new: bool | None,
              old_base: bool | None = None,
              new_base: bool | None = None) -> tuple[bool | None, bool | None]:
    """Fill in a side's unknown touch from the other side, for rows that differ.

    Used by the full comparison, where a side known only from commit timestamps
    cannot see its deletes. ``old``/``new``: each side's touch as known (True,
    False, None); ``old_base``/``new_base``: whether that side's WAL says the key
    existed at the split. Rules: an untouched side still holds the split's row,
    so the other side's absence or presence there is that side's change.
    """
    if old is None and a is None:
        if new is False:
            old = True  # b is the split's row and a lacks it: the old side deleted it
        elif new is True and new_base is not None:
            old = new_base  # existed at the split and a lacks it -> deleted on the old side
    if new is None and b is None:
        if old is False:
            new = True
        elif old is True and old_base is not None:
            new = old_base
    return old, new


def apply_op(source: Row | None, target: Row | None) -> str:
    """What making ``target`` equal ``source`` takes: insert, update or delete."""
    if source is None:
        return "delete"
    return "insert" if target is None else "update"


def side_op(base_had: bool | None, now: Row | None) -> str:
    """A side's net change since the split: insert, update, delete (``changed`` if unknown)."""
    if base_had is None:
        return "changed"
    if base_had:
        return "update" if now is not None else "delete"
    return "insert" if now is not None else "none"


def decide(kind: Kind, policy: Policy, undetermined: bool = False,
           base: bool | None = True, rekey: bool = False) -> Action:
    """Old-only changes are applied, new-only kept, conflicts follow the table's policy
    only when both versions are of a row that existed at the split (``base``) and both
    sides are known to have changed it.

    A collision is re-keyed when ``rekey`` (the table allows it and its key comes from a
    sequence), else it goes to a human, as ``unkeyed`` rows (a table without primary
    key) and undetermined conflicts always do."""
    if kind == "collision":
        return "rekey" if rekey else "manual"
    if kind == "unkeyed":
        return "manual"
    if kind == "old-only":
        return "apply-old"
    if kind == "new-only":
        return "keep-new"
    if undetermined or base is not True:
        return "manual"
    return {"old-wins": "apply-old", "new-wins": "keep-new", "manual": "manual"}[policy]  # type: ignore[return-value]


def change_id(run_id: str, table: str, key: str) -> str:
    """Stable id of one key's change in one run: a rerun finds the same ids."""
    return hashlib.sha256(f"{run_id}\0{table}\0{key}".encode()).hexdigest()[:20]


def change_ids(run_id: str, table: str) -> Callable[[str], str]:
    """:func:`change_id` for one run's table: the common prefix is hashed once (once per
    divergent key, re-hashing it was a visible cost)."""
    prefix = hashlib.sha256(f"{run_id}\0{table}\0".encode())

    def make(key: str) -> str:
        h = prefix.copy()
        h.update(key.encode())
        return h.hexdigest()[:20]
    return make


def fingerprint(row_text_or_none: str | None) -> str:
    """Digest of a row (its canonical JSON), to notice a row changed since it was shown."""
    if row_text_or_none is None:
        return "absent"
    canonical = json.dumps(parse_row(row_text_or_none), sort_keys=True, default=str,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def mask(row: Row | None, sensitive: set[str]) -> Row | None:
    """A copy fit to show: sensitive columns' values replaced by ``***``."""
    if row is None:
        return None
    return {c: ("***" if c in sensitive else _plain(v)) for c, v in row.items()}


def _plain(v: Any) -> Any:
    return str(v) if isinstance(v, Decimal) else v
