"""The standby fence on real PostgreSQL: states, idempotency, and the alarm when writable."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from drorch.lab.postgres import PgNode, make_pair
from drorch.reconcile import (
    Divergence,
    FenceError,
    ReconcileSpec,
    ReconcileTable,
    fence_as_standby,
    find_divergence,
    verify_fenced,
    wal_retention_warning,
)
from tests.integration.reconcile.conftest import pg_workdir

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair() -> Iterator[tuple[PgNode, PgNode]]:
    with pg_workdir("reconcile-fence") as wd:
        a, b = make_pair(wd)
        try:
            yield a, b
        finally:
            for n in (a, b):
                n.destroy()


def test_fence_states_and_alarm_when_a_fenced_node_becomes_writable(
        pair: tuple[PgNode, PgNode]) -> None:
    """Primary: writable (alarm); replica: following; fenced: read-only; promoted again: alarm."""
    a, b = pair
    assert (verify_fenced(a.dsn()).state, verify_fenced(a.dsn()).alarm) == ("writable", True)
    assert verify_fenced(b.dsn()).state == "following"
    status = fence_as_standby(b)
    assert (status.state, status.fenced, status.alarm) == ("fenced", True, False)
    assert fence_as_standby(b).state == "fenced"  # idempotent: nothing restarted or changed
    with psycopg.connect(b.dsn(), autocommit=True) as c, pytest.raises(
            psycopg.errors.FeatureNotSupported):
        c.execute("BEGIN READ WRITE; CREATE TABLE x (i int)")
    b.stop()
    assert verify_fenced(b).state == "stopped" and verify_fenced(b).fenced
    assert verify_fenced(b.dsn()).state == "unreachable" and not verify_fenced(b.dsn()).fenced
    b.start()
    assert verify_fenced(b.dsn()).state == "fenced"

    with psycopg.connect(b.dsn(), autocommit=True) as c:
        c.execute("SELECT pg_promote(true, 60)")  # someone undoes the fence
    status = verify_fenced(b.dsn())
    assert (status.state, status.fenced, status.alarm) == ("writable", False, True)
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.t", policy="old-wins")])
    with pytest.raises(FenceError, match="writable"):
        find_divergence(b.dsn(), a.dsn(), spec, Divergence("0/3000000", 2, 1), capture=False)


def test_retention_warning_names_what_is_missing(pair: tuple[PgNode, PgNode]) -> None:
    """Without pg_walinspect the warning says so; with it and enough WAL kept, no warning."""
    a, _b = pair
    warning = wal_retention_warning(a.dsn())
    assert warning is not None and "pg_walinspect" in warning
    with psycopg.connect(a.dsn(), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_walinspect")
        assert wal_retention_warning(c) is None
        assert "wal_keep_size >= 4096MB" in (wal_retention_warning(c, required_mb=4096) or "")


def test_failover_without_divergent_writes_finds_nothing(pair: tuple[PgNode, PgNode]) -> None:
    """When the replica had everything, the WAL method reports zero transactions and rows."""
    from drorch.reconcile import divergence_point, wait_caught_up

    a, b = pair
    with psycopg.connect(a.dsn(), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_walinspect")
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g")
    wait_caught_up(b.dsn(), a.dsn(), 60)
    a.kill()
    with psycopg.connect(b.dsn(), autocommit=True) as c:
        c.execute("SELECT pg_promote(true, 60)")
    fence_as_standby(a)
    spec = ReconcileSpec(tables=[ReconcileTable(name="public.t", policy="old-wins")])
    rep = find_divergence(a.dsn(), b.dsn(), spec, divergence_point(b.dsn()), capture=False)
    assert rep.method == "wal" and rep.totals()["rows_diverged"] == 0
    assert rep.transactions["old_committed"] == 0 and rep.transactions["new_committed"] == 0
