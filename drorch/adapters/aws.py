"""boto3 clients, made in one place so endpoint, retries and timeouts are uniform.

In the lab ``endpoint_url`` points at a moto server and ``region_endpoints`` at a proxy
per AWS region in front of it (so one region's API can be down while the other's
answers); in production both are empty and boto3 picks AWS's endpoints.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import boto3
from botocore.config import Config

from drorch.adapters.aws_calls import after_call

_CONFIG = Config(connect_timeout=3, read_timeout=10,
                 retries={"max_attempts": 3, "mode": "standard"})


GLOBAL_SERVICES = frozenset({"route53"})
"""Services with one endpoint for every region (Route 53's control plane is in us-east-1)."""


_session_lock = threading.Lock()
_session: boto3.session.Session | None = None


def _make_client(service: str, region: str, endpoint_url: str | None, config: Config) -> Any:
    """A client from one boto3 session per process: each new session loads and parses
    the service's model again (~0.1 s of CPU per client; a failover makes several, each
    CLI call too). Clients are thread-safe, sessions are not ("Multithreading or
    multiprocessing with Resources / Clients", boto3 docs): creation holds a lock."""
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        client = _session.client(service, region_name=region, endpoint_url=endpoint_url,
                                 config=config)
    hook = partial(after_call, service, region)
    client.meta.events.register("after-call", hook)
    client.meta.events.register("after-call-error", hook)
    return client


class AwsClients:
    """A factory of boto3 clients keyed by (service, AWS region)."""

    def __init__(self, endpoint_url: str | None = None,
                 region_endpoints: dict[str, str] | None = None) -> None:
        self.endpoint_url = endpoint_url
        self.region_endpoints = dict(region_endpoints or {})
        if endpoint_url or self.region_endpoints:
            # moto accepts any credentials; never let a lab call reach real AWS keys.
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")

    @classmethod
    def for_runbook(cls, runbook: Any) -> AwsClients:
        """The clients a runbook's ``aws`` block describes (endpoints; none in production)."""
        return cls(runbook.aws.endpoint_url, runbook.aws.region_endpoints)

    @lru_cache(maxsize=64)  # noqa: B019 (one factory per process run)
    def client(self, service: str, region: str, deadline_s: float | None = None) -> Any:
        config = _CONFIG if deadline_s is None else Config(
            connect_timeout=deadline_s / 2, read_timeout=deadline_s / 2,
            retries={"max_attempts": 1, "mode": "standard"})
        return _make_client(service, region, self.endpoint_for(service, region), config)

    def with_deadline(self, deadline_s: float) -> Callable[[str, str], Any]:
        """Clients whose calls give up within ``deadline_s`` (one attempt; connect and
        read timeouts of half of it each): for best-effort calls to a region that may be
        down, which must not land long after the caller moved on."""
        return lambda service, region: self.client(service, region, deadline_s)

    def endpoint_for(self, service: str, region: str) -> str | None:
        if service in GLOBAL_SERVICES:
            return self.endpoint_url
        return self.region_endpoints.get(region, self.endpoint_url)

    def __call__(self, service: str, region: str) -> Any:
        return self.client(service, region)
