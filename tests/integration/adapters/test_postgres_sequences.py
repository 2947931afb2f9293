"""Sequence positions and the gap a promotion sets, on a real PostgreSQL 15."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from drorch.adapters import postgres as pg
from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode, pg_available

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def node() -> Iterator[PgNode]:
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries missing")
    workdir = Path(tempfile.mkdtemp(prefix="drorch-seq-"))
    os.chmod(workdir, 0o755)  # the postgres user must traverse it
    n = PgNode("seq", workdir / "data", free_port(), workdir)
    try:
        n.init_primary()
        n.start()
        yield n
    finally:
        n.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def test_gap_moves_each_ascending_sequence_once_and_stops_at_its_maximum(node: PgNode) -> None:
    """Used, never used, quoted-name and int4 sequences skip the gap; a rerun with the same
    targets changes nothing; a target past the maximum takes half the room left; nothing
    moves back; descending sequences and drorch's own capture schema are left alone."""
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        c.execute("CREATE TABLE t (id bigserial PRIMARY KEY)")
        c.execute("INSERT INTO t DEFAULT VALUES; INSERT INTO t DEFAULT VALUES")
        c.execute('CREATE SEQUENCE "Odd Name"')
        c.execute("CREATE SEQUENCE small AS int MAXVALUE 1000")
        c.execute("CREATE SEQUENCE down INCREMENT -1")
        c.execute("CREATE SCHEMA drorch_reconcile; CREATE SEQUENCE drorch_reconcile.s")
    before = pg.sequence_positions(node.dsn())
    assert before == {"public.t_id_seq": 2, 'public."Odd Name"': 0, "public.small": 0}
    targets = {n: v + 500 for n, v in before.items()}
    assert pg.advance_sequences(node.dsn(), targets) == {
        "public.t_id_seq": 502, 'public."Odd Name"': 500, "public.small": 500}
    assert pg.advance_sequences(node.dsn(), targets) == {
        "public.t_id_seq": 502, 'public."Odd Name"': 500, "public.small": 500}
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        assert c.execute("INSERT INTO t DEFAULT VALUES RETURNING id").fetchone()[0] == 503
    # Past the maximum: half the room left, so inserts still work after the failover.
    assert pg.advance_sequences(node.dsn(), {"public.small": 5000}) == {"public.small": 750}
    assert pg.sequence_positions(node.dsn())["public.t_id_seq"] == 503
    # RESTART leaves pg_sequences.last_value NULL: the sequence itself is read, never moved
    # back below where it stands; a sequence dropped since is skipped.
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        c.execute("ALTER SEQUENCE t_id_seq RESTART WITH 10000")
    assert pg.advance_sequences(node.dsn(), {"public.t_id_seq": 502, "public.gone": 9}) == {
        "public.t_id_seq": 10000}
    with psycopg.connect(node.dsn(), autocommit=True) as c:
        assert c.execute("INSERT INTO t DEFAULT VALUES RETURNING id").fetchone()[0] == 10001
