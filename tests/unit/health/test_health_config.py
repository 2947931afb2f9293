"""Validation of the health section of the runbook."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from drorch.health.config import HealthPolicy, PostgresProbe, ProbeSpec, RegionHealth


def _region(**kw: object) -> dict:
    base = {
        "region": "region-a",
        "probes": [
            {"kind": "http", "name": "app", "url": "http://127.0.0.1:8080/health"},
            {"kind": "tcp", "name": "db-port", "host": "127.0.0.1", "port": 5432},
        ],
        "quorum": 2, "fail_after_s": 180, "interval_s": 10,
    }
    return {**base, **kw}


def test_probe_kind_selects_the_model() -> None:
    """``kind`` picks the probe model and its defaults."""
    spec = TypeAdapter(ProbeSpec).validate_python(
        {"kind": "route53_health_check", "name": "r53", "health_check_id": "hc-1"}
    )
    assert spec.kind == "route53_health_check" and spec.min_healthy_share == 0.5


def test_quorum_above_probe_count_is_rejected() -> None:
    """A quorum that can never be reached is a runbook error."""
    with pytest.raises(ValidationError, match="quorum 3 is more than the 2 probe"):
        RegionHealth.model_validate(_region(quorum=3))


def test_unknown_keys_and_kinds_are_rejected() -> None:
    """Typos are errors, not silently ignored settings."""
    with pytest.raises(ValidationError):
        RegionHealth.model_validate(_region(quorom=1))
    with pytest.raises(ValidationError):
        RegionHealth.model_validate(_region(probes=[{"kind": "ping", "name": "x"}]))


def test_duplicate_probe_names_are_rejected() -> None:
    """Probe names identify results, so they must be unique in a region."""
    probes = [{"kind": "tcp", "name": "x", "host": "h", "port": 1}] * 2
    with pytest.raises(ValidationError, match="unique"):
        RegionHealth.model_validate(_region(probes=probes, quorum=1))


def test_postgres_probe_needs_exactly_one_target_and_hides_dsn() -> None:
    """A postgres probe takes a dsn or a host, and its dsn never shows in repr."""
    with pytest.raises(ValidationError, match="exactly one"):
        PostgresProbe(name="db")
    spec = PostgresProbe(name="db", dsn="host=127.0.0.1 password=s3cr3t")
    assert "s3cr3t" not in repr(spec)


def test_alarm_regions_must_name_known_regions() -> None:
    """An alarm mapped to a region that does not exist is a runbook error."""
    with pytest.raises(ValidationError, match="unknown region"):
        HealthPolicy.model_validate(
            {"regions": [_region()], "alarm_regions": {"a": "region-z"}}
        )
