"""The freeze record journaled in ``freeze:<database>``: its shapes, old and new.

A resume or a rollback may read a record written by another version of drorch,
or written as an intent by a process killed half way through a freeze: each
shape must say exactly what to restore, and an intent must never be replaced
by what a half-frozen node shows."""

from __future__ import annotations

import pytest

from drorch.adapters.postgres import FreezeRecord
from drorch.steps.freeze import recorded_baseline


@pytest.mark.parametrize(("old", "expected"), [
    ({"roles_locked": ["app"], "read_only_was": "off", "sessions_ended": 2},
     FreezeRecord(["app"], None, 2)),
    ({"roles_locked": ["app"], "read_only_was": "on", "sessions_ended": 0},
     FreezeRecord(["app"], "on", 0)),
])
def test_old_shape_keeps_its_undo(old: dict, expected: FreezeRecord) -> None:
    """A record from before ``auto_conf_read_only`` existed keeps the undo it had:
    "on" -> ALTER SYSTEM SET on, anything else -> ALTER SYSTEM RESET."""
    assert FreezeRecord.from_dict(old) == expected
    assert recorded_baseline(old) == expected


@pytest.mark.parametrize("auto", [None, "on", "off", "true"])
def test_new_shape_round_trips(auto: str | None) -> None:
    """What postgresql.auto.conf said (nothing, or its exact spelling) survives JSON."""
    record = FreezeRecord(["app", "reporting"], auto, 3)
    assert FreezeRecord.from_dict(record.to_dict()) == record
    assert recorded_baseline({"phase": "intent", **record.to_dict()}) == record
    assert recorded_baseline({"phase": "done", **record.to_dict()}) == record


def test_intent_wins_over_what_a_half_frozen_node_shows() -> None:
    """Merged with a later read, the intent keeps what was there before (roles that
    are NOLOGIN now because the first run locked them; the auto.conf value the first
    run overwrote) and adds roles that can log in now."""
    intent = FreezeRecord(["app"], None, 0)
    half_frozen_now = FreezeRecord(["reporting"], "on", 0)
    assert intent.merged_with(half_frozen_now) == FreezeRecord(["app", "reporting"], None, 0)


@pytest.mark.parametrize("fact", [
    None,
    {"roles_locked": [], "read_only_was": "off", "sessions_ended": 0, "unreachable": True},
    {"phase": "unreachable", "unreachable": True, "roles_locked": [], "sessions_ended": 0},
])
def test_nothing_recorded_means_nothing_to_restore(fact: dict | None) -> None:
    """No freeze yet, or a node that never answered (old and new marker): no baseline."""
    assert recorded_baseline(fact) is None


def test_intent_then_unreachable_keeps_the_intent() -> None:
    """A connection lost after the intent was journaled: the node may be half frozen,
    so the intent still says what to restore."""
    fact = {"phase": "intent", "roles_locked": ["app"], "auto_conf_read_only": "off",
            "sessions_ended": 0, "unreachable": True}
    assert recorded_baseline(fact) == FreezeRecord(["app"], "off", 0)
