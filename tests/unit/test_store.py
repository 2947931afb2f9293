"""The SQLite journal and lease: durable events, compare-and-set lease, fencing tokens."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from drorch.store.sqlite import Incident, LeaseHeld, SqliteStore, StaleLease


def _store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "j.db")


def _incident(store: SqliteStore) -> str:
    store.create_incident(Incident("i1", "failover", "lab", "alice", "why", {}, "monitoring",
                                   1.0, 1.0))
    return "i1"


def test_lease_is_exclusive_and_tokens_grow(tmp_path: Path) -> None:
    """A live holder keeps the lease; after expiry the next holder gets a larger token."""
    store = _store(tmp_path)
    t1 = store.acquire_lease("rb", "host:1", ttl_s=30)
    assert store.acquire_lease("rb", "host:1", ttl_s=30) == t1
    with pytest.raises(LeaseHeld):
        store.acquire_lease("rb", "otherhost:2", ttl_s=30)
    store.release_lease("rb", t1)
    t2 = store.acquire_lease("rb", "otherhost:2", ttl_s=30)
    assert t2 > t1


def test_stale_token_cannot_journal(tmp_path: Path) -> None:
    """After the lease passed to another holder, the old token is refused."""
    store = _store(tmp_path)
    inc = _incident(store)
    t1 = store.acquire_lease("rb", "a:1", ttl_s=0.0)
    store.acquire_lease("rb", "b:2", ttl_s=30)
    with pytest.raises(StaleLease):
        store.append(inc, "step", "promote:main", "started", lease="rb", token=t1)
    with pytest.raises(StaleLease):
        store.set_fact(inc, "k", 1, lease="rb", token=t1)
    assert store.events(inc) == []


def test_dead_local_holder_loses_lease_at_once(tmp_path: Path) -> None:
    """A holder process on this host that died (kill -9) does not block the next one."""
    store = _store(tmp_path)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    import socket

    dead = f"{socket.gethostname()}:{proc.stdout.strip()}"
    t1 = store.acquire_lease("rb", dead, ttl_s=300)
    assert store.acquire_lease("rb", f"{socket.gethostname()}:1", ttl_s=30) == t1 + 1


def test_events_and_facts_survive_reopen(tmp_path: Path) -> None:
    """What was journaled is there after the store is opened again."""
    store = _store(tmp_path)
    inc = _incident(store)
    store.append(inc, "step", "freeze:main", "done", {"x": 1}, state="failing_over")
    store.set_fact(inc, "from_region", "region-a")
    store.close()
    again = _store(tmp_path)
    assert again.step_status(inc, "freeze:main") == "done"
    assert again.fact(inc, "from_region") == "region-a"
    assert again.incident(inc).state == "failing_over"
