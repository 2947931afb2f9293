"""Reports serialise without values and come back from their stored form."""

from __future__ import annotations

import json

from drorch.reconcile.model import Change, Divergence, DivergenceReport, TableReport


def _report() -> DivergenceReport:
    tr = TableReport("public.users", ["email"], "manual", ["email", "token"])
    tr.changes.append(Change("c1", "public.users", {"email": "a@x"}, "conflict", "manual",
                             ["token"], "update", "update", old_row='{"token": "s3cret"}',
                             new_row='{"token": "other"}'))
    tr.changes.append(Change("c2", "public.users", {"email": "b@x"}, "old-only", "apply-old",
                             ["name"], "insert"))
    return DivergenceReport("db@2:0/3000000", "db", "wal", "both WALs read",
                            Divergence("0/3000000", 2, 1, None), tables=[tr],
                            transactions={"old_committed": 3})


def test_to_dict_masks_sensitive_keys_and_never_carries_rows() -> None:
    """Keys in sensitive columns are masked; captured rows never reach the report."""
    text = json.dumps(_report().to_dict())
    assert "s3cret" not in text and "other" not in text and "a@x" not in text
    assert '"***"' in text and '"token"' in text


def test_counts_summary_and_round_trip() -> None:
    """Exact counts per kind; the stored form loads back with the same counts."""
    rep = _report()
    assert rep.totals()["rows_diverged"] == 2 and rep.totals()["conflicts"] == 1
    assert "2 rows diverged" in rep.summary()
    again = DivergenceReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again.totals() == rep.totals() and again.divergence == rep.divergence
    assert [d["action"] for d in again.decisions()] == ["manual", "apply-old"]
