"""Validation flows against a real HTTP server on loopback: values carried, retries,
deadlines, redacted evidence and DNS-directed connections."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest

from drorch.lab.ports import free_port
from drorch.validate import FlowSpec, HttpxTransport, run_flows
from tests.integration.validate.shop_app import PASSWORD, Shop, serve


def shop_flow(host: str, deadline_s: float = 5) -> FlowSpec:
    return FlowSpec.model_validate({
        "name": "login-and-checkout",
        "deadline_s": deadline_s,
        "steps": [
            {"name": "login", "method": "POST", "url": f"http://{host}/login",
             "json": {"user": "{user}", "password": "{password}"},
             "expect_json": {"token": "*", "user.name": "{user}"},
             "save": {"token": "token"}},
            {"name": "checkout", "method": "POST", "url": f"http://{host}/checkout",
             "headers": {"Authorization": "Bearer {token}"}, "json": {"sku": "A-1"},
             "expect_status": 201, "expect_json": {"order.status": "paid"},
             "save": {"order_id": "order.id"}, "timeout_s": 2},
        ],
    })


VARS = {"user": "ann", "password": PASSWORD}


@pytest.fixture
def transport() -> Iterator[HttpxTransport]:
    with HttpxTransport() as t:
        yield t


@pytest.fixture
def shop() -> Iterator[tuple[Shop, int]]:
    app = Shop()
    port = free_port()
    server = serve(app, "127.0.0.1", port)
    try:
        yield app, port
    finally:
        server.shutdown()
        server.server_close()


def test_a_flow_carries_the_login_token_into_checkout(shop, transport) -> None:
    """The token saved from login authorises checkout and the flow passes first time."""
    app, port = shop
    [result] = run_flows([shop_flow(f"127.0.0.1:{port}")], http=transport, resolve=None,
                         checks={}, variables=VARS)
    assert result.ok, result.error
    assert result.attempts == 1
    assert [s.status for s in result.steps] == [200, 201]
    assert result.steps[1].response_body["order"]["status"] == "paid"
    assert result.steps[1].request_headers["Authorization"] == "***"
    assert result.started_at <= result.ended_at
    dumped = json.dumps(result.to_dict())
    assert PASSWORD not in dumped
    assert not any(token in dumped for token in app.tokens)


def test_a_failing_flow_retries_until_its_deadline_and_keeps_redacted_evidence(
        shop, transport) -> None:
    """A checkout that keeps failing is retried, then reported failed with the failing
    request and response, and neither the password nor a token appears anywhere."""
    app, port = shop
    app.fail_checkout = True
    [result] = run_flows([shop_flow(f"127.0.0.1:{port}", deadline_s=1.5)], http=transport,
                         resolve=None, checks={}, variables=VARS, backoff_max_s=0.3)
    assert not result.ok
    assert result.attempts >= 2
    assert len(app.tokens) == result.attempts  # every attempt logged in afresh
    assert result.error is not None and result.error.startswith("step checkout:")
    assert "expected status 201, got 500" in result.error
    failing = result.steps[-1]
    assert (failing.name, failing.method, failing.status, failing.ok) == (
        "checkout", "POST", 500, False)
    assert failing.url.endswith("/checkout")
    assert failing.request_body == {"sku": "A-1"}
    assert "payment backend down" in failing.response_body["error"]
    dumped = json.dumps(result.to_dict())
    assert PASSWORD not in dumped
    assert app.tokens and not any(token in dumped for token in app.tokens)


def test_a_flow_passes_once_the_server_starts_answering(transport) -> None:
    """Connections are refused at first; the flow keeps trying and passes when the
    server comes up before the deadline."""
    app, port = Shop(), free_port()
    servers: list[ThreadingHTTPServer] = []
    starter = threading.Timer(0.6, lambda: servers.append(serve(app, "127.0.0.1", port)))
    starter.start()
    try:
        [result] = run_flows([shop_flow(f"127.0.0.1:{port}", deadline_s=8)], http=transport,
                             resolve=None, checks={}, variables=VARS, backoff_max_s=0.3)
    finally:
        starter.cancel()
        starter.join()
        for server in servers:
            server.shutdown()
            server.server_close()
    assert result.ok, result.error
    assert result.attempts >= 2
    assert app.requests == 2  # the refused attempts never reached it


def test_resolve_sends_requests_to_the_address_dns_gives(transport) -> None:
    """With a resolve hook the request connects to the returned address (the server
    listens only there) and the Host header keeps the name."""
    app, port = Shop(), free_port()
    server = serve(app, "127.0.0.2", port)
    asked: list[str] = []

    def resolve(name: str) -> str:
        asked.append(name)
        return "127.0.0.2"

    try:
        [result] = run_flows([shop_flow(f"app.test:{port}")], http=transport,
                             resolve=resolve, checks={}, variables=VARS)
    finally:
        server.shutdown()
        server.server_close()
    assert result.ok, result.error
    assert set(asked) == {"app.test"}
    assert app.hosts_seen == [f"app.test:{port}"] * 2
    assert result.steps[0].url == f"http://app.test:{port}/login"
    assert result.steps[0].connected_to == "127.0.0.2"


def test_an_unknown_variable_fails_the_flow_without_retrying(shop, transport) -> None:
    """A flow missing a runbook variable fails at once, naming it, and sends nothing."""
    app, port = shop
    [result] = run_flows([shop_flow(f"127.0.0.1:{port}", deadline_s=5)], http=transport,
                         resolve=None, checks={}, variables={"user": "ann"})
    assert not result.ok
    assert result.attempts == 1
    assert "{password}" in (result.error or "")
    assert app.requests == 0


def test_flows_run_concurrently_and_results_keep_their_order(shop, transport) -> None:
    """Two flows, one passing and one failing, come back in the order given."""
    _, port = shop
    good = shop_flow(f"127.0.0.1:{port}")
    bad = FlowSpec.model_validate({
        "name": "missing-page", "deadline_s": 0.5,
        "steps": [{"name": "get", "url": f"http://127.0.0.1:{port}/nope"}]})
    results = run_flows([bad, good], http=transport, resolve=None, checks={}, variables=VARS,
                        backoff_max_s=0.1)
    assert [(r.name, r.ok) for r in results] == [("missing-page", False),
                                                 ("login-and-checkout", True)]
    assert "expected status 200, got 404" in (results[0].error or "")


def test_a_name_that_does_not_resolve_fails_the_attempt_and_is_retried(transport) -> None:
    """A resolve hook that raises fails each attempt (retried) and the error names why."""
    calls: list[str] = []

    def resolve(name: str) -> str:
        calls.append(name)
        raise LookupError(f"NXDOMAIN {name}")

    [result] = run_flows([shop_flow(f"app.test:{free_port()}", deadline_s=0.5)],
                         http=transport, resolve=resolve, checks={}, variables=VARS,
                         backoff_max_s=0.1)
    assert not result.ok
    assert len(calls) == result.attempts >= 2
    assert result.error == "step login: request failed (LookupError: NXDOMAIN app.test)"
    assert result.steps[0].status is None and result.steps[0].connected_to is None
