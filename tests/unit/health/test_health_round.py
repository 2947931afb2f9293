"""Probe rounds: concurrent, bounded by each probe's timeout, never raising."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from drorch.health.config import CloudWatchAlarmProbe, PostgresProbe, RegionHealth, TcpProbe
from drorch.health.probes import run_probe, run_round


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never sends a byte."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(2)
        for c in held:
            c.close()
        srv.close()


def test_hung_probe_fails_at_its_timeout_and_round_returns(silent_server: int) -> None:
    """A server that never answers is a failure at the probe's timeout, others unaffected.

    libpq's own connect_timeout here is a whole second; the round's deadline is 0.3 s,
    so the "timed out after 0.3s" error can only come from the round not waiting.
    """
    spec = RegionHealth(
        region="region-a",
        probes=[
            PostgresProbe(name="db", host="127.0.0.1", port=silent_server, timeout_s=0.3),
            TcpProbe(name="port", host="127.0.0.1", port=silent_server, timeout_s=0.3),
        ],
        quorum=1, fail_after_s=30, interval_s=5,
    )
    db, port = run_round(spec)
    assert (db.probe, db.ok, db.error) == ("db", False, "timed out after 0.3s")
    assert (port.probe, port.ok, port.error) == ("port", True, None)
    assert db.region == port.region == "region-a"


def test_run_probe_reports_errors_instead_of_raising() -> None:
    """An AWS probe without a client factory is a failed result with a reason."""
    result = run_probe(CloudWatchAlarmProbe(name="a", alarm_name="x", aws_region="us-east-1"))
    assert not result.ok and "no AWS client factory" in (result.error or "")
