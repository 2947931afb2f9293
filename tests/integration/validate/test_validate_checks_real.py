"""Checks behind the API against real parts: the order row in PostgreSQL and the
confirmation e-mail in the lab's SMTP sink, driven by a real HTTP checkout."""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from drorch.adapters.postgres import connect
from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode, pg_available
from drorch.lab.smtp_sink import start_sink
from drorch.validate import FlowSpec, HttpxTransport, lab_check_runners, run_flows
from tests.integration.validate.shop_app import PASSWORD, Shop, serve

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not pg_available(), reason="PostgreSQL 15 binaries not installed")]


@pytest.fixture(scope="module")
def pg_node() -> Iterator[PgNode]:
    # Not pytest's tmp_path: its parents are 0700 and the server runs as ``postgres``.
    workdir = Path(tempfile.mkdtemp(prefix="drorch-validate-"))
    node = PgNode("validate", workdir / "data", free_port(), workdir)
    try:
        node.init_primary()
        node.start()
        with connect(node.dsn()) as conn:
            conn.execute("CREATE TABLE orders (id bigint PRIMARY KEY, username text NOT NULL)")
        yield node
    finally:
        node.destroy()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    store, port = tmp_path / "mail", free_port()
    controller = start_sink("127.0.0.1", port, store)
    try:
        yield port, store
    finally:
        controller.stop()


def send_confirmation(smtp_port: int, order_id: int, user: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"] = "shop@example.com", f"{user}@example.com"
    msg["Subject"] = f"Order {order_id} confirmed"
    msg.set_content("Thanks!")
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as smtp:
        smtp.send_message(msg)


def buy_flow(http_port: int, store: Path, deadline_s: float) -> FlowSpec:
    return FlowSpec.model_validate({
        "name": "buy", "deadline_s": deadline_s,
        "steps": [
            {"name": "login", "method": "POST", "url": f"http://127.0.0.1:{http_port}/login",
             "json": {"user": "{user}", "password": "{password}"}, "save": {"token": "token"}},
            {"name": "checkout", "method": "POST",
             "url": f"http://127.0.0.1:{http_port}/checkout",
             "headers": {"Authorization": "Bearer {token}"}, "json": {"sku": "A-1"},
             "expect_status": 201, "save": {"order_id": "order.id"}},
        ],
        "checks": [
            {"kind": "db_row", "name": "order-row", "database": "main",
             "sql": "SELECT 1 FROM orders WHERE id = %(order_id)s AND username = %(user)s"},
            {"kind": "mailbox", "name": "confirmation", "store": str(store),
             "subject_contains": "Order {order_id} confirmed", "to": "{user}@example.com"},
        ],
    })


@pytest.fixture
def run_shop(pg_node: PgNode) -> Iterator[Callable[..., Any]]:
    servers: list[Any] = []

    def query(database: str, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        assert database == "main"
        with connect(pg_node.dsn()) as conn:
            return conn.execute(sql, params).fetchall()

    def run(on_order: Callable[[int, str], None], store: Path, deadline_s: float = 5) -> Any:
        port = free_port()
        servers.append(serve(Shop(on_order), "127.0.0.1", port))
        with HttpxTransport() as http:
            [result] = run_flows([buy_flow(port, store, deadline_s)], http=http, resolve=None,
                                 checks=lab_check_runners(query),
                                 variables={"user": "ann", "password": PASSWORD},
                                 backoff_max_s=0.3)
        return result

    try:
        yield run
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def insert_order(node: PgNode, order_id: int, user: str) -> None:
    with connect(node.dsn()) as conn:
        conn.execute("INSERT INTO orders VALUES (%s, %s) ON CONFLICT DO NOTHING", (order_id, user))


def test_the_order_row_and_the_email_are_found(pg_node, sink, run_shop) -> None:
    """Login, checkout, then the order's row in PostgreSQL and its e-mail in the sink:
    the flow passes and both checks say what they found."""
    smtp_port, store = sink

    def on_order(order_id: int, user: str) -> None:
        insert_order(pg_node, order_id, user)
        send_confirmation(smtp_port, order_id, user)

    result = run_shop(on_order, store)
    assert result.ok, result.error
    assert result.attempts == 1
    assert [(c.name, c.ok) for c in result.checks] == [("order-row", True),
                                                      ("confirmation", True)]
    assert result.checks[0].detail == "1 row(s) in main"
    assert str(store) in (result.checks[1].detail or "")


def test_an_order_missing_from_the_new_primary_fails_the_flow(pg_node, sink, run_shop) -> None:
    """Checkout answers 201 but the row never reaches the database: the check is polled
    until the deadline (checkout is not repeated) and the flow fails naming the check."""
    smtp_port, store = sink
    result = run_shop(lambda oid, user: send_confirmation(smtp_port, oid, user), store,
                      deadline_s=1.5)
    assert not result.ok
    assert result.attempts == 1
    row, mail = result.checks
    assert (row.ok, mail.ok) == (False, True)
    assert row.attempts >= 2 and mail.attempts == 1
    assert "0 row(s) in main, expected at least 1" in (row.error or "")
    assert (result.error or "").startswith("check order-row:")


def test_a_late_email_is_waited_for(pg_node, sink, run_shop) -> None:
    """An e-mail that arrives after the checkout answered is found on a later poll."""
    smtp_port, store = sink
    timers: list[threading.Timer] = []

    def on_order(order_id: int, user: str) -> None:
        insert_order(pg_node, order_id, user)
        timer = threading.Timer(0.5, send_confirmation, (smtp_port, order_id, user))
        timers.append(timer)
        timer.start()

    try:
        result = run_shop(on_order, store, deadline_s=8)
    finally:
        for timer in timers:
            timer.join()
    assert result.ok, result.error
    assert result.checks[1].attempts >= 2
