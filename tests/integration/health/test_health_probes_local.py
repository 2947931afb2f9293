"""Probes against real endpoints on 127.0.0.1: HTTP, TCP and PostgreSQL 15."""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from drorch.health.config import HttpProbe, PostgresProbe, RegionHealth, TcpProbe
from drorch.health.probes import run_probe, run_round
from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode, make_pair, pg_available


class _Handler(BaseHTTPRequestHandler):
    routes = {"/ok": (200, b"status: green"), "/down": (503, b"maintenance")}

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        status, body = self.routes.get(self.path, (404, b"no such page"))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_http_probe_checks_status_and_body(http_base: str) -> None:
    """HTTP is healthy only with the expected status and, if asked, the expected text."""
    ok = run_probe(HttpProbe(name="h", url=f"{http_base}/ok", body_contains="green"))
    assert ok.ok and ok.error is None
    wrong_body = run_probe(HttpProbe(name="h", url=f"{http_base}/ok", body_contains="red"))
    assert not wrong_body.ok and "does not contain 'red'" in (wrong_body.error or "")
    down = run_probe(HttpProbe(name="h", url=f"{http_base}/down"))
    assert not down.ok and down.error == "HTTP 503, expected 200"
    expected_503 = run_probe(HttpProbe(name="h", url=f"{http_base}/down", expect_status=503))
    assert expected_503.ok


def test_tcp_probe_open_and_closed_ports(http_base: str) -> None:
    """TCP is healthy when something listens and fails when the port is closed."""
    port = int(http_base.rsplit(":", 1)[1])
    assert run_probe(TcpProbe(name="t", host="127.0.0.1", port=port)).ok
    closed = run_probe(TcpProbe(name="t", host="127.0.0.1", port=free_port()))
    assert not closed.ok and "refused" in (closed.error or "").lower()


def test_http_probe_to_closed_port_fails(http_base: str) -> None:
    """An HTTP endpoint nobody listens on is a failure with a reason."""
    result = run_probe(HttpProbe(name="h", url=f"http://127.0.0.1:{free_port()}/ok"))
    assert not result.ok and result.error


pg = pytest.mark.skipif(not pg_available(), reason="PostgreSQL 15 binaries not installed")


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[tuple[PgNode, PgNode]]:
    # Not pytest's tmp_path: its parents are 0700 and the server runs as ``postgres``.
    workdir = Path(tempfile.mkdtemp(prefix="drorch-health-"))
    nodes: list[PgNode] = []
    try:
        primary, replica = make_pair(workdir)
        nodes = [replica, primary]
        yield primary, replica
    finally:
        for node in nodes:
            node.signal_all(signal.SIGCONT)
            node.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


def _pg_region(primary: PgNode, timeout_s: float) -> RegionHealth:
    return RegionHealth(
        region="region-a",
        probes=[
            PostgresProbe(name="db", host="127.0.0.1", port=primary.port, timeout_s=timeout_s),
            TcpProbe(name="db-port", host="127.0.0.1", port=primary.port, timeout_s=timeout_s),
        ],
        quorum=1, fail_after_s=10, interval_s=1,
    )


@pg
def test_postgres_probe_healthy_on_primary_and_replica(pg_pair: tuple[PgNode, PgNode]) -> None:
    """``SELECT 1`` succeeds on a running primary and on its hot standby."""
    primary, replica = pg_pair
    assert run_probe(PostgresProbe(name="a", dsn=primary.dsn())).ok
    assert run_probe(PostgresProbe(name="b", host="127.0.0.1", port=replica.port)).ok


@pg
def test_stopped_postgres_fails_at_timeout_then_recovers(pg_pair: tuple[PgNode, PgNode]) -> None:
    """A SIGSTOPped server (port open, nobody answers) fails the probe at its timeout."""
    primary, _ = pg_pair
    spec = _pg_region(primary, timeout_s=0.5)
    primary.signal_all(signal.SIGSTOP)
    try:
        db, port = run_round(spec)
    finally:
        primary.signal_all(signal.SIGCONT)
    assert not db.ok and db.error == "timed out after 0.5s"
    assert port.ok  # the kernel still completes the handshake: only SQL tells the truth
    db_again, _ = run_round(_pg_region(primary, timeout_s=5))
    assert db_again.ok, db_again.error


@pg
def test_postgres_error_is_redacted_of_password(pg_pair: tuple[PgNode, PgNode]) -> None:
    """A server error that would echo the password shows ``***`` instead."""
    primary, _ = pg_pair
    dsn = f"host=127.0.0.1 port={primary.port} user=postgres dbname=hunter2x password=hunter2x"
    result = run_probe(PostgresProbe(name="db", dsn=dsn))
    assert not result.ok and result.error
    assert "hunter2x" not in result.error and 'database "***" does not exist' in result.error


@pg
def test_killed_postgres_fails_fast_with_refused(pg_pair: tuple[PgNode, PgNode]) -> None:
    """A crashed server fails the probe with the connection error, not a timeout."""
    primary, _ = pg_pair
    primary.kill()
    try:
        result = run_probe(PostgresProbe(name="db", host="127.0.0.1", port=primary.port))
    finally:
        primary.start()
    assert not result.ok and "refused" in (result.error or "").lower()


def test_socket_helper_sanity() -> None:
    """free_port returns a port nobody listens on (the closed-port tests rely on it)."""
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
