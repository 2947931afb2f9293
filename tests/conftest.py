"""Shared fixtures: a real lab (PostgreSQL pair + moto server) on this worker's own ports.

Isolation between test workers (pytest-xdist): each worker hands out ports from a
block only it owns (``drorch.lab.ports``), and state and cluster directories live
under its own ``tmp_path``. At the end of the run the controller looks for any
process this run started that is still alive (by a marker in its environment, or
by a listening port in this run's blocks), stops it and fails the run.

``DRORCH_TEST_REQUIRE_REAL_PARTS=1`` (``.ci/run`` sets it) turns a missing real part
into an error and any skipped test into a failed run: CI must not pass by skipping.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from drorch.config import Runbook, load_runbook
from drorch.lab import ports
from drorch.lab.ports import free_port
from drorch.lab.postgres import PG_BIN, pg_available
from tests import leftovers

ROOT = Path(__file__).resolve().parent.parent
LAB_RUNBOOK = ROOT / "runbooks" / "lab.yaml"
REQUIRE_REAL_PARTS = os.environ.get("DRORCH_TEST_REQUIRE_REAL_PARTS") == "1"
PORT_BASE = int(os.environ.get("DRORCH_TEST_PORT_BASE", ports.WORKER_BASE))

needs_postgres = pytest.mark.skipif(not pg_available(),
                                    reason="PostgreSQL 15 server binaries not installed")

SPARE_BLOCK = ports.worker_block(ports.spare_index(PORT_BASE), base=PORT_BASE)
"""No worker gets it: where a test starts "another worker's" lab."""

# This process's port block (a worker's own; index 0 in a run without xdist).
ports.use_block(ports.worker_block(ports.worker_index(os.environ.get("PYTEST_XDIST_WORKER")),
                                   base=PORT_BASE))


def _worker_count(config: pytest.Config) -> int:
    count = getattr(config.option, "numprocesses", None)
    return count if isinstance(count, int) and count > 0 else 1


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return  # a worker: the controller checks and marks the run
    if _worker_count(config) > ports.spare_index(PORT_BASE):
        raise pytest.UsageError(
            f"{_worker_count(config)} test workers need more port blocks than fit between "
            f"DRORCH_TEST_PORT_BASE={PORT_BASE} and the lab's default ports: use at most "
            f"{ports.spare_index(PORT_BASE)} workers (one block is kept spare) or a lower "
            "base")
    if REQUIRE_REAL_PARTS and not pg_available():
        raise pytest.UsageError(
            f"PostgreSQL 15 server binaries not found in {PG_BIN} and "
            "DRORCH_TEST_REQUIRE_REAL_PARTS=1: install them (make postgres) instead of "
            "skipping every test that needs them")
    # Inherited by the workers and by every process they start: how leftovers are found.
    os.environ.setdefault(leftovers.RUN_MARKER, secrets.token_hex(8))
    os.environ.setdefault(leftovers.RUN_STARTED, str(time.time()))


@pytest.hookimpl(hookwrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[None]:
    """After every other finish (xdist's workers are gone by then): nothing this run
    started may still run, and with real parts required nothing may have been skipped."""
    yield
    config = session.config
    if hasattr(config, "workerinput"):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    problems: list[str] = []
    blocks = [ports.worker_block(i, base=PORT_BASE) for i in range(_worker_count(config))]
    left = leftovers.find(os.environ.get(leftovers.RUN_MARKER, ""),
                          float(os.environ.get(leftovers.RUN_STARTED, "0")), blocks)
    if left:
        problems.append("processes of this run still running after it (those with the "
                        "run's marker now killed):\n  "
                        + "\n  ".join(p.line for p in left))
        leftovers.kill([p.pid for p in left if p.marked])
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if REQUIRE_REAL_PARTS and skipped:
        problems.append(f"{skipped} test(s) skipped while DRORCH_TEST_REQUIRE_REAL_PARTS=1 "
                        "(reasons in the short test summary)")
    for problem in problems:
        sys.stderr.write(f"\nERROR: {problem}\n")
    if problems and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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


def lab_env(tmp_path: Path, block: ports.PortBlock | None = None) -> dict[str, str]:
    """Environment for a lab of its own: ports from ``block`` (this worker's by default),
    state under ``tmp_path``."""
    take = block.take if block is not None else free_port
    moto, pg_a, pg_b, app, dns, smtp, aws_a, aws_b = (take() for _ in range(8))
    return {
        "DRORCH_LAB_APP_PORT": str(app),
        "DRORCH_LAB_DNS_PORT": str(dns),
        "DRORCH_LAB_SMTP_PORT": str(smtp),
        "DRORCH_STATE_DIR": str(tmp_path / "state"),
        "DRORCH_LAB_MOTO_PORT": str(moto),
        "DRORCH_LAB_AWS_A_PORT": str(aws_a),
        "DRORCH_LAB_AWS_B_PORT": str(aws_b),
        "DRORCH_LAB_PG_A_PORT": str(pg_a),
        "DRORCH_LAB_PG_B_PORT": str(pg_b),
        "DRORCH_RUNBOOK": str(LAB_RUNBOOK),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }


def moto_server(tmp: Path, name: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """The lab's moto server on a port of this worker's block, started with ``env`` set
    (e.g. how long its operations stay in progress); yields its URL, stops it after."""
    from drorch.lab import lab as lab_mod

    mp = pytest.MonkeyPatch()
    for key, value in (env or {}).items():
        mp.setenv(key, value)
    port = free_port()
    try:
        pid = lab_mod.start_moto(port, tmp / f"{name}.log")
    finally:
        mp.undo()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        lab_mod.stop_pid(pid)


@pytest.fixture(scope="session")
def worker_moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """One moto server per test worker, reset by each lab that uses it
    (``drorch.lab.lab.REUSE_MOTO_ENV``): (port, log file)."""
    from drorch.lab import lab as lab_mod

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    pid = lab_mod.start_moto(port, log)
    try:
        yield port, log
    finally:
        lab_mod.stop_pid(pid)


@contextmanager
def running_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                runbook_path: Path = LAB_RUNBOOK,
                moto: tuple[int, Path] | None = None) -> Iterator[Lab]:
    """A running lab from ``runbook_path`` with this worker's ports and its own state
    directory, stopped afterwards; on the worker's moto server when ``moto`` is given."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    from drorch.lab import lab as lab_mod

    env = {**lab_env(tmp_path), "DRORCH_RUNBOOK": str(runbook_path)}
    if moto is not None:
        env |= {"DRORCH_LAB_MOTO_PORT": str(moto[0]), lab_mod.REUSE_MOTO_ENV: str(moto[1])}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runbook = load_runbook(runbook_path)
    lab_mod.up(runbook)
    try:
        yield Lab(runbook, runbook_path, env, Path(env["DRORCH_STATE_DIR"]))
    finally:
        lab_mod.down(runbook)


RDS_RUNBOOK = ROOT / "runbooks" / "aws-rds.yaml"


@pytest.fixture
def rds_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            worker_moto: tuple[int, Path]) -> Iterator[Lab]:
    """A running lab from ``runbooks/aws-rds.yaml`` on this worker's moto server."""
    with running_lab(tmp_path, monkeypatch, RDS_RUNBOOK, worker_moto) as running:
        yield running


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        worker_moto: tuple[int, Path]) -> Iterator[Lab]:
    """A running lab from runbooks/lab.yaml with its own ports and state directory, on
    the worker's moto server (wiped first)."""
    with running_lab(tmp_path, monkeypatch, moto=worker_moto) as running:
        yield running
