"""The failback plan of a kind-rds database, the identifiers its steps give RDS, and the
key rule a full comparison uses to tell an insert made after the split."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from drorch.config import load_runbook
from drorch.plan import failback_plan
from drorch.reconcile.find import _key_above
from drorch.steps.rds_failback import (
    FenceRdsPrimary,
    RejoinRdsReplica,
    ReplaceRdsReplica,
    SnapshotOldPrimary,
    _identifier,
)
from tests.conftest import ROOT

RDS_RUNBOOK = ROOT / "runbooks" / "aws-rds.yaml"


def test_an_rds_failback_fences_snapshots_reconciles_replaces_switches_and_rejoins() -> None:
    rb = load_runbook(RDS_RUNBOOK)
    stages = failback_plan(rb, "region-b", "region-a")
    names = [s.name for s in stages]
    assert names[:4] == ["fence", "evidence", "reconcile", "resync"]
    assert names[-1] == "rejoin" and "promote" in names
    kinds = {s.name: [type(step) for step in s.steps] for s in stages}
    assert kinds["fence"] == [FenceRdsPrimary]
    assert kinds["evidence"] == [SnapshotOldPrimary]
    assert kinds["resync"] == [ReplaceRdsReplica]
    assert kinds["rejoin"] == [RejoinRdsReplica]


@pytest.mark.parametrize("prefix, incident", [
    ("drorch-main-a-old", "lab-rds-20261201T184717-1206"),
    ("x" * 60 + "-old", "lab-rds-20261201T184717-1206"),
    ("drorch-main-failback", "Prod_Payments--20261201T1847__1206-"),
])
def test_identifiers_are_what_rds_accepts(prefix: str, incident: str) -> None:
    ident = _identifier(prefix, incident)
    # DBInstanceIdentifier: 1-63 letters, digits, hyphens; a letter first; no hyphen at
    # the end nor two in a row (RDS API Reference, CreateDBInstance)
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|-(?!-))*", ident), ident
    assert len(ident) <= 63 and not ident.endswith("-")
    assert _identifier(prefix, incident) == ident  # the same on every resume
    assert ident.endswith(_identifier("x", incident)[2:])  # the incident's part is whole


def test_fence_security_groups_belong_to_kind_rds_only() -> None:
    from drorch.config import DatabasePair

    with pytest.raises(ValidationError, match="only kind rds is fenced by security group"):
        DatabasePair.model_validate({
            "name": "main", "kind": "postgres",
            "endpoints": {"region-a": {"host": "h", "port": 5432,
                                       "fence_security_group_ids": ["sg-1"]}}})


@pytest.mark.parametrize("key, split_max, above", [
    ("[11]", 10, True), ("[10]", 10, False), ("[-5]", -9223372036854775808, True),
    ("[3]", 10, False), ('["a"]', 10, False),
])
def test_a_key_above_the_splits_largest_did_not_exist_at_the_split(
        key: str, split_max: int, above: bool) -> None:
    assert _key_above(key, split_max) is above


def test_a_row_without_a_commit_time_is_unknown_not_untouched() -> None:
    """track_commit_timestamp was off when it was written: the clock cannot say which
    side wrote it (False would have called it untouched, and a policy would have undone
    it)."""
    from datetime import UTC, datetime

    from drorch.reconcile.find import _after

    split = datetime(2026, 12, 1, tzinfo=UTC)
    later = datetime(2026, 12, 2, tzinfo=UTC)
    assert _after(("{}", None), split) is None
    assert _after(("{}", later), split) is True
    assert _after(("{}", split), split) is False
    assert _after(None, split) is None and _after(("{}", later), None) is None
