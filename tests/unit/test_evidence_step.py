"""The copy of Aurora's unplanned-failover snapshot gets a name AWS accepts."""

from __future__ import annotations

import re

from drorch.steps.evidence import copy_identifier


def test_copy_identifier_fits_the_snapshot_identifier_rules() -> None:
    for incident in ("lab-aurora-20261201T133351-6281", "x" * 200, "prod_DB--1"):
        name = copy_identifier(incident, "main")
        assert re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", name), name
        assert len(name) <= 63
    assert copy_identifier("lab-1", "main") == "drorch-lab-1-main"
