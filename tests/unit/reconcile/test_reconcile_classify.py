"""Pure decisions: who changed a row, what kind of divergence, what the policy does."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from drorch.reconcile.classify import (
    apply_op,
    attribute,
    canonical_key,
    change_id,
    classify,
    decide,
    differing_columns,
    fingerprint,
    key_from_array,
    key_values,
    mask,
    parse_row,
    side_op,
)

A = {"id": 1, "v": "a"}
B = {"id": 1, "v": "b"}


@pytest.mark.parametrize(("old", "new", "kind", "undetermined"), [
    (True, False, "old-only", False),
    (False, True, "new-only", False),
    (True, True, "conflict", False),
    (None, True, "conflict", True),
    (True, None, "conflict", True),
    (False, False, "conflict", True),
])
def test_classification_of_differing_rows(old: bool | None, new: bool | None, kind: str,
                                          undetermined: bool) -> None:
    """Who touched a differing row decides its kind; anything unknown is a conflict."""
    assert classify(A, B, old, new) == (kind, undetermined)


def test_equal_rows_never_diverge() -> None:
    """Both sides made the same change (or both deleted it): nothing to do."""
    assert classify(A, dict(A), True, True) == (None, False)
    assert classify(None, None, True, True) == (None, False)


def test_untouched_side_reveals_the_other_sides_delete() -> None:
    """Without WAL a side cannot see its deletes; the other side's split-time row shows them."""
    assert attribute(None, B, None, False) == (True, False)  # old deleted b's row
    assert attribute(A, None, False, None) == (False, True)  # new deleted a's row
    assert attribute(None, B, None, True, None, True) == (True, True)  # existed: old deleted
    assert attribute(None, B, None, True, None, False) == (False, True)  # new inserted it
    assert attribute(None, B, None, True) == (None, True)  # cannot tell


def test_policies_decide_conflicts_only() -> None:
    """Old-only changes are applied and new-only kept whatever the policy."""
    assert decide("old-only", "new-wins") == "apply-old"
    assert decide("new-only", "old-wins") == "keep-new"
    assert [decide("conflict", p) for p in ("old-wins", "new-wins", "manual")] == [
        "apply-old", "keep-new", "manual"]
    assert decide("unkeyed", "old-wins") == "manual"


def test_operations_and_columns() -> None:
    """Columns that differ are named; a missing row differs in all its columns."""
    assert differing_columns(A, B) == ["v"]
    assert differing_columns(None, B) == ["id", "v"]
    assert (apply_op(A, None), apply_op(None, B), apply_op(A, B)) == ("insert", "delete", "update")
    assert side_op(True, None) == "delete" and side_op(False, A) == "insert"
    assert side_op(True, A) == "update" and side_op(None, A) == "changed"


def test_rows_parse_with_exact_decimals_and_keys_are_canonical() -> None:
    """Numbers keep every digit; equal keys give equal strings; ids are stable."""
    row = parse_row('{"id": 5, "amount": 0.12345678901234567890123}')
    assert row["amount"] == Decimal("0.12345678901234567890123")
    assert canonical_key([5, "x"]) == '[5,"x"]'
    assert change_id("r", "public.t", "[5]") == change_id("r", "public.t", "[5]")
    assert change_id("r", "public.t", "[5]") != change_id("r", "public.t", "[6]")


def test_fingerprint_ignores_key_order_and_notices_changes() -> None:
    """The same row in another key order has the same fingerprint; a changed value does not."""
    assert fingerprint('{"a": 1, "b": 2}') == fingerprint('{"b": 2, "a": 1}')
    assert fingerprint('{"a": 1}') != fingerprint('{"a": 2}')
    assert fingerprint(None) == "absent"


def test_mask_hides_sensitive_values_only() -> None:
    """Sensitive columns keep their name, never their value."""
    assert mask({"id": 1, "token": "s3cret", "n": Decimal("1.5")}, {"token"}) == {
        "id": 1, "token": "***", "n": "1.5"}
    assert mask(None, {"token"}) is None


def test_both_sides_inserting_the_same_new_key_is_a_collision_never_a_policy_choice() -> None:
    """Two rows under one key that did not exist at the split are two rows: a collision,
    always for a human. A conflict goes through old-wins/new-wins only when the row
    existed at the split and both sides are known to have changed it."""
    assert classify(A, B, True, True, base=False) == ("collision", False)
    assert classify(A, B, True, True, base=True) == ("conflict", False)
    assert classify(A, B, True, True, base=None) == ("conflict", False)
    assert classify(None, B, True, True, base=False) == ("conflict", False)
    for policy in ("old-wins", "new-wins", "manual"):
        assert decide("collision", policy) == "manual"
        assert decide("conflict", policy, undetermined=True) == "manual"
        assert decide("conflict", policy, base=None) == "manual"
        assert decide("conflict", policy, base=False) == "manual"
    assert decide("conflict", "old-wins", base=True) == "apply-old"
    assert decide("conflict", "new-wins", base=True) == "keep-new"


@pytest.mark.parametrize("text", [
    "[1]", "[1, 2]", "[-5, 0]", "[-0]", "[12345678901234567890123]", "[1.5]", "[1.50]",
    "[1e+100]", '["a, b"]', '["é\\u0001"]', '[1, "x"]', "[true]", '["2020-01-01T00:00:00+00:00"]'])
def test_a_key_rendered_by_the_server_is_the_key_parsed_from_its_row(text: str) -> None:
    """``jsonb_build_array(key)::text`` gives the canonical key that parsing the row gave,
    also on the fast path for integers (``-0`` parses to 0)."""
    assert key_from_array(text) == canonical_key(parse_row(text))


@pytest.mark.parametrize("key", ["[1]", "[1,2]", "[-5,0]", "[12345678901234567890123]",
                                 '["1.5"]', '["a, b"]', '[1,"x"]', "[true]"])
def test_key_values_are_the_json_values_of_the_canonical_key(key: str) -> None:
    assert key_values(key) == json.loads(key)
    assert canonical_key(key_values(key)) == key
