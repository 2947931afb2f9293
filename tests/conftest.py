"""Shared fixtures: a real lab (PostgreSQL pair + moto server) on free ports."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drorch.config import Runbook, load_runbook
from drorch.lab.postgres import free_port, pg_available

ROOT = Path(__file__).resolve().parent.parent
LAB_RUNBOOK = ROOT / "runbooks" / "lab.yaml"

needs_postgres = pytest.mark.skipif(not pg_available(),
                                    reason="PostgreSQL 15 server binaries not installed")


@dataclass
class Lab:
    runbook: Runbook
    runbook_path: Path
    env: dict[str, str]
    state_dir: Path

    def cli(self, *args: str, extra_env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real ``drorch`` command in its own process (so it can be killed)."""
        env = {**os.environ, **self.env, **(extra_env or {})}
        return subprocess.run([sys.executable, "-m", "drorch.cli", *args], env=env,
                              capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def lab_env(tmp_path: Path) -> dict[str, str]:
    ports: set[int] = set()
    while len(ports) < 6:
        ports.add(free_port())
    moto, pg_a, pg_b, app, dns, smtp = sorted(ports)
    return {
        "DRORCH_LAB_APP_PORT": str(app),
        "DRORCH_LAB_DNS_PORT": str(dns),
        "DRORCH_LAB_SMTP_PORT": str(smtp),
        "DRORCH_STATE_DIR": str(tmp_path / "state"),
        "DRORCH_LAB_MOTO_PORT": str(moto),
        "DRORCH_LAB_PG_A_PORT": str(pg_a),
        "DRORCH_LAB_PG_B_PORT": str(pg_b),
        "DRORCH_RUNBOOK": str(LAB_RUNBOOK),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """A running lab from runbooks/lab.yaml with its own ports and state directory."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    from drorch.lab import lab as lab_mod

    env = lab_env(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runbook = load_runbook(LAB_RUNBOOK)
    lab_mod.up(runbook)
    try:
        yield Lab(runbook, LAB_RUNBOOK, env, Path(env["DRORCH_STATE_DIR"]))
    finally:
        lab_mod.down(runbook)
