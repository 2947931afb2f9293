"""Fixtures for reconciliation on real PostgreSQL 15: the issue's story, built fresh or shared.

Servers run as the ``postgres`` user, which cannot enter pytest's 0700 temp
directories: each fixture gets its own 0755 directory under the system temp
dir and removes it afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drorch.lab.postgres import pg_available
from tests.integration.reconcile.reconcile_story import Story, build


@contextmanager
def pg_workdir(prefix: str) -> Iterator[Path]:
    """A directory the server user can traverse; removed with everything in it."""
    path = Path(tempfile.mkdtemp(prefix=f"drorch-{prefix}-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")


@pytest.fixture(scope="module")
def shared_story() -> Iterator[Story]:
    """One story for tests that only read (capture=False): built once per module."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    with pg_workdir("reconcile-shared") as wd:
        story = build(wd)
        try:
            yield story
        finally:
            story.destroy()


@pytest.fixture
def story() -> Iterator[Story]:
    """A story of its own, for tests that apply, resync or break things."""
    with pg_workdir("reconcile") as wd:
        s = build(wd)
        try:
            yield s
        finally:
            s.destroy()
