"""Real parts for the lab service tests: moto server, PostgreSQL pair, SMTP sink, app launcher."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from drorch.lab import services
from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode, make_pair, pg_available
from drorch.lab.schema import create_database_and_schema
from drorch.lab.smtp_sink import start_sink

APP_PASSWORD = "s3cret-Lab-pw-7f1c"
FLAG = "/drorch/lab/writes-frozen"
REGION_AWS = {"region-a": "us-east-1", "region-b": "us-west-2"}
REGION_HOST = {"region-a": "127.0.1.1", "region-b": "127.0.2.1"}

needs_postgres = pytest.mark.skipif(not pg_available(), reason="PostgreSQL 15 binaries missing")


def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "condition") -> Any:
    """Poll ``predicate`` until truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    """A scratch directory the ``postgres`` user can traverse (pytest's tmp is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="drorch-labsvc-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A moto server on 127.0.0.1 (all regions), wiped at start; yields its URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    # moto's state is process-wide: start each module from an empty AWS.
    httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()
    try:
        yield url
    finally:
        server.stop()


def aws(url: str, service: str, region: str = "us-east-1") -> Any:
    return boto3.client(service, endpoint_url=url, region_name=region,
                        aws_access_key_id="test", aws_secret_access_key="test")


def db_secret(node: PgNode) -> str:
    return json.dumps({"engine": "postgres", "host": "127.0.0.1", "port": node.port,
                       "dbname": "app", "username": "app", "password": APP_PASSWORD})


@pytest.fixture(scope="module")
def pg_pair(workdir: Path) -> Iterator[tuple[PgNode, PgNode]]:
    """A primary with the app schema and a streaming replica that has replayed it."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 binaries missing")
    primary, replica = make_pair(workdir / "pg")
    try:
        create_database_and_schema(primary.dsn(), APP_PASSWORD)
        wait_for(lambda: _has_users(replica), what="schema on the replica")
        yield primary, replica
    finally:
        primary.destroy()
        replica.destroy()


def _has_users(node: PgNode) -> bool:
    import psycopg

    try:
        with psycopg.connect(node.dsn("app")) as conn:
            return bool(conn.execute("SELECT count(*) FROM users").fetchone()[0])  # type: ignore[index]
    except psycopg.Error:
        return False


@pytest.fixture(scope="module")
def smtp_sink(workdir: Path) -> Iterator[tuple[int, Path]]:
    """An in-process SMTP sink on 127.0.0.1; yields (port, store directory)."""
    port, store = free_port(), workdir / "mail"
    controller = start_sink("127.0.0.1", port, store)
    try:
        yield port, store
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def launch_app(workdir: Path, moto_url: str, smtp_sink: tuple[int, Path]
               ) -> Iterator[Callable[..., str]]:
    """Start a region's app as a subprocess (secret ``lab/<region>/db``); returns its base URL."""
    pids: list[int] = []

    def launch(region: str, **overrides: Any) -> str:
        port = free_port()
        cfg = {"region": region, "aws_region": REGION_AWS[region], "endpoint_url": moto_url,
               "secret_id": f"lab/{region}/db", "flag_parameter": FLAG,
               "smtp_host": "127.0.0.1", "smtp_port": smtp_sink[0],
               "listen_host": REGION_HOST[region], "listen_port": port, **overrides}
        pids.append(services.start_app(cfg, workdir / "logs" / f"app-{region}-{port}.log"))
        return f"http://{REGION_HOST[region]}:{port}"

    try:
        yield launch
    finally:
        for pid in pids:
            services.stop_pid(pid)
