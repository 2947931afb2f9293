"""Helpers of finding that need no server."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from drorch.reconcile import find
from drorch.reconcile.catalog import TableMeta
from drorch.reconcile.classify import change_id, classify
from drorch.reconcile.config import ReconcileTable
from drorch.reconcile.find import _int_key_array, _iso, _iso_cached, _judge, _key_dict
from drorch.reconcile.model import Change, TableReport
from drorch.reconcile.store import _key_json
from drorch.reconcile.walchanges import Touch
from drorch.reconcile.walread import SideTable


def test_commit_times_are_formatted_as_before_once_per_moment() -> None:
    iso = _iso_cached()
    at = datetime(2026, 12, 1, 4, 10, 0, 123456, tzinfo=UTC)
    assert iso(at) == _iso(at) == at.isoformat()
    assert iso(at) is iso(datetime(2026, 12, 1, 4, 10, 0, 123456, tzinfo=UTC))
    assert iso(None) is None


def _orders() -> TableMeta:
    return TableMeta("public.orders", 1, ["id"], ["id", "amount", "note"], {},
                     pk_types={"id": "int8"})


def test_a_row_only_the_old_side_inserted_is_judged_as_the_general_rules_judge_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk shortcut (an old-side insert the new side never touched) gives the change
    the general rules give: the first such key goes through them, the next through it."""
    judged: list[object] = []
    monkeypatch.setattr(find, "classify", lambda *a: judged.append(a) or classify(*a))
    meta, cfg = _orders(), ReconcileTable(name="public.orders", policy="old-wins")
    at = datetime(2026, 12, 1, 4, 10, tzinfo=UTC)
    old, new = SideTable(), SideTable()
    for i in (7, 8):
        old.touched[f"[{i}]"] = Touch(False, 100 + i, 100 + i, 900)
        old.rows[f"[{i}]"] = f'{{"id": {i}, "note": "a", "amount": {i}}}'
        old.last_commit[f"[{i}]"] = at
    tr = TableReport("public.orders", ["id"], "old-wins")
    rows = ({k: (v, None) for k, v in old.rows.items()}, {})
    _judge(tr, meta, cfg, "db@2:0/1", (old, new), rows, set(old.touched), None)
    general, shortcut = tr.changes
    assert len(judged) == 1  # the second key took the shortcut
    assert (general.kind, general.action, general.old_op, general.new_op) == \
        ("old-only", "apply-old", "insert", None)

    def same(c: Change) -> tuple[object, ...]:
        return (c.table, c.kind, c.action, c.columns, c.old_op, c.new_op, c.undetermined,
                c.new_row, c.old_committed_at)
    assert same(shortcut) == same(general)
    assert (general.key, shortcut.key) == ({"id": 7}, {"id": 8})
    assert shortcut.change_id == change_id("db@2:0/1", "public.orders", "[8]")
    assert shortcut.old_row == old.rows["[8]"]


def test_integer_keys_take_the_short_ways_and_others_the_general_ones() -> None:
    """One integer key column: a plain bigint[] lookup, a key dict and JSON built without
    the parser and encoder, equal to what those give; anything else falls back."""
    meta = _orders()
    assert _int_key_array(meta, ["[1]", "[-2]", "[30]"]) == "{1,-2,30}"
    assert _int_key_array(meta, ["[1]", '["a"]']) is None
    assert _int_key_array(replace(meta, pk_types={"id": "text"}), ["[1]"]) is None
    for key in ("[5]", "[-3]", "[0]", '["x"]', "[1.5]", "[true]"):
        assert _key_dict(meta, key) == {"id": json.loads(key)[0]}
    for d in ({"id": 5}, {"id": -3}, {'i"d': 5}, {"id": "x"}, {"a": 1, "b": 2}, {"id": True}):
        assert _key_json(d, {}) == json.dumps(d, default=str)
