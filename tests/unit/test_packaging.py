"""A production install (no ``lab`` extra) imports every module but the lab's servers and
runs the CLI; the lab says which extra it needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from drorch.lab import LAB_PACKAGES, require_lab_extra
from tests.conftest import ROOT

# Run in a fresh interpreter where the lab's packages cannot be imported (None in
# sys.modules makes `import moto` raise ImportError), whatever this venv holds.
WITHOUT_LAB = f"""
import sys
for name in {LAB_PACKAGES!r}:
    sys.modules[name] = None
import importlib, pkgutil, drorch
servers = {{"drorch.lab.dns_server", "drorch.lab.smtp_sink"}}
for module in pkgutil.walk_packages(drorch.__path__, "drorch."):
    if module.name not in servers:
        importlib.import_module(module.name)
from drorch.cli import app
sys.argv = ["drorch", "--help"]
app()
"""


def test_every_module_and_the_cli_work_without_the_lab_extra() -> None:
    """Nothing outside the lab's two servers imports moto, dnslib or aiosmtpd."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_LAB], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: drorch" in result.stdout and "failover" in result.stdout


def test_the_lab_names_the_extra_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`drorch lab up` without the extra says what to install, not "moto exited"."""
    require_lab_extra()  # this venv has it (make test installs it)
    monkeypatch.setitem(sys.modules, "moto", None)
    with pytest.raises(RuntimeError, match=r"missing moto\): pip install 'drorch\[lab\]'"):
        require_lab_extra()


def test_the_product_depends_on_no_lab_package() -> None:
    """moto and the lab's servers are in the ``lab`` extra, not in the product's needs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split("[")[0].split(">")[0].split("=")[0].strip().lower()
                for r in requirements}

    assert names(project["dependencies"]).isdisjoint(LAB_PACKAGES)
    assert names(project["optional-dependencies"]["lab"]) == set(LAB_PACKAGES)
