"""The accounting invariant over a journaled report and apply result (pure)."""

from __future__ import annotations

from typing import Any

from drorch.reconcile.accounting import account


def _d(table: str, n: int, kind: str, outcome: str) -> dict[str, Any]:
    return {"change_id": f"{table}-{n}", "table": table, "kind": kind, "outcome": outcome}


REPORT = {"tables": [{"table": "public.orders"}, {"table": "public.notes"}], "problems": [],
          "unconfigured_tables": []}


def test_every_outcome_counts_once_and_the_invariant_holds() -> None:
    decisions = [_d("public.orders", 1, "old-only", "applied"),
                 _d("public.orders", 2, "old-only", "already-applied"),
                 _d("public.orders", 3, "new-only", "kept-new"),
                 _d("public.orders", 4, "collision", "pending"),
                 _d("public.notes", 5, "old-only", "error"),
                 _d("public.notes", 6, "conflict", "resolved-new"),
                 _d("public.notes", 7, "collision", "rekeyed")]
    acc = account(REPORT, {"decisions": decisions, "conflict_file": "/c.json", "unshown": 0})
    assert acc.holds
    assert acc.totals() == {"found": 7, "applied": 2, "kept": 2, "rekeyed": 1, "pending": 2,
                            "unaccounted": 0, "old_versions_not_kept": 1}  # notes 6: "new"
    orders = acc.tables[0].to_dict()
    assert orders["by_kind"] == {"collision": 1, "new-only": 1, "old-only": 2}


def test_outcome_rows_count_as_many_changes_as_they_name() -> None:
    """What apply journals: rows per table, kind and outcome, never one entry per row."""
    outcomes = [{"table": "public.orders", "kind": "old-only", "outcome": "applied",
                 "rows": 70000, "digest": "d1"},
                {"table": "public.orders", "kind": "collision", "outcome": "rekeyed",
                 "rows": 900, "digest": "d2"},
                {"table": "public.notes", "kind": "conflict", "outcome": "pending",
                 "rows": 3, "digest": "d3"}]
    acc = account(REPORT, {"outcomes": outcomes, "conflict_file": "/c.jsonl"})
    assert acc.holds and acc.totals()["found"] == 70903
    assert (acc.tables[0].applied, acc.tables[0].rekeyed, acc.tables[1].pending) == (
        70000, 900, 3)
    assert not account(REPORT, {"outcomes": outcomes, "conflict_file": None}).holds


def test_changes_for_a_human_without_a_conflict_file_are_unaccounted() -> None:
    decisions = [_d("public.orders", 1, "conflict", "pending"),
                 _d("public.notes", 2, "old-only", "error")]
    acc = account(REPORT, {"decisions": decisions, "conflict_file": None})
    assert not acc.holds and acc.unaccounted == 2
    assert "public.orders: 1 of 1 changed rows without an outcome" in acc.problem()
    shown_partly = account(REPORT, {"decisions": decisions, "conflict_file": "/c.json",
                                    "unshown": 1})
    assert not shown_partly.holds


def test_a_table_that_was_not_compared_blocks_even_with_no_changes() -> None:
    report = {**REPORT, "problems": ["public.orders: columns or primary key differ"],
              "unconfigured_tables": ["public.orders", "public.ghost"]}
    acc = account(report, {"decisions": [], "conflict_file": "/c.json"})
    assert not acc.holds and acc.unaccounted == 0
    assert acc.blocked == ["public.orders: columns or primary key differ",
                           "public.ghost: written on the old primary after the split but "
                           "not compared"]
    assert "Nothing was rewound" in acc.problem()
