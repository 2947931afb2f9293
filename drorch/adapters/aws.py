"""boto3 clients, made in one place so endpoint, retries and timeouts are uniform.

In the lab ``endpoint_url`` points at a moto server; in production it is None.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

_CONFIG = Config(connect_timeout=3, read_timeout=10,
                 retries={"max_attempts": 3, "mode": "standard"})


class AwsClients:
    """A factory of boto3 clients keyed by (service, AWS region)."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        if endpoint_url:
            # moto accepts any credentials; never let a lab call reach real AWS keys.
            os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
            os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")

    @lru_cache(maxsize=64)  # noqa: B019 (one factory per process run)
    def client(self, service: str, region: str) -> Any:
        return boto3.session.Session().client(
            service, region_name=region, endpoint_url=self.endpoint_url, config=_CONFIG)

    def __call__(self, service: str, region: str) -> Any:
        return self.client(service, region)
