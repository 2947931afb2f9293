"""The README's five-minute tour, run as written in a fresh clone: every command must
exit 0. It runs from the clone's root with no state left from anything else: the
state directory is the per-user default (``$XDG_STATE_HOME`` points into the test's
directory), ``DRORCH_RUNBOOK`` comes from the tour's own ``export``, and the lab's
ports are this worker's."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from drorch.lab.postgres import pg_available
from tests.conftest import ROOT, lab_env

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not pg_available(),
                                                  reason="PostgreSQL 15 not installed")]


def tour_commands() -> list[str]:
    """The lines of the README's tour block, as written."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A five-minute tour"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "the README's tour has no ```bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _clone(tmp_path: Path) -> Path:
    """A fresh clone of this repository (its committed files only), with the venv the
    README's `make` commands would have built."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True,
                   capture_output=True, timeout=120)
    (clone / ".venv").symlink_to(ROOT / ".venv")
    return clone


def test_the_tour_block_is_the_one_this_test_knows() -> None:
    """The tour starts the lab, acts with --yes (no terminal here) and ends by taking
    the lab down: the run below depends on it."""
    commands = tour_commands()
    assert commands[0] == "source .venv/bin/activate"
    assert commands[-1].startswith("drorch lab down --purge")
    for line in commands:
        if re.match(r"drorch (failover|failback|drill|resume)\b", line) \
                and "--dry-run" not in line:
            assert "--yes" in line, line


@pytest.mark.timeout(900)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    """Each command of the tour exits 0, in order, from a fresh clone's root."""
    clone = _clone(tmp_path)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DRORCH_", "VIRTUAL_ENV"))}
    env.update({k: v for k, v in lab_env(tmp_path).items()
                if k not in ("DRORCH_STATE_DIR", "DRORCH_RUNBOOK")})
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    env["PATH"] = env.get("PATH", os.defpath)
    # Every command runs on its own line of one shell, as typed; the first that exits
    # non-zero stops the script and is named.
    script = "\n".join(
        ['trap \'echo "TOUR FAILED (exit $?): $BASH_COMMAND" >&2\' ERR', "set -e",
         *tour_commands()])
    try:
        result = subprocess.run(["bash", "-c", script], cwd=clone, env=env,
                                capture_output=True, text=True, timeout=840)
    finally:
        subprocess.run(["bash", "-c", "source .venv/bin/activate && drorch lab down "
                        "--runbook runbooks/lab.yaml"], cwd=clone, env=env,
                       capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "TOUR FAILED" not in result.stderr
    assert (clone / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "audit log intact" in result.stdout
    # --purge left nothing behind in the per-user state directory
    assert not (tmp_path / "xdg" / "drorch" / "lab").exists()
