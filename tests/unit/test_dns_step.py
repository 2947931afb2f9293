"""The DNS step when Route 53's API itself fails: a plain sentence, not a botocore trace."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.config import Config

from drorch.config import load_runbook
from drorch.lab.ports import free_port
from drorch.steps.base import StepContext, StepFailed
from drorch.steps.dns import FlipDns
from tests.conftest import LAB_RUNBOOK


class _Facts(dict[str, Any]):
    def set(self, key: str, value: Any) -> None:
        self[key] = value


def test_route53_unreachable_is_said_plainly() -> None:
    """Nothing listens where Route 53 should be: the step fails naming Route 53's
    control plane, what DNS still does and what a human can do."""
    rb = load_runbook(LAB_RUNBOOK)
    dead = f"http://127.0.0.1:{free_port()}"

    def clients(service: str, region: str) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=dead,
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=Config(connect_timeout=1, retries={"max_attempts": 1}))

    ctx = StepContext(rb, "inc-1", "alice", "region-a", "region-b", clients, _Facts())
    step = FlipDns(rb.dns.zone)  # type: ignore[union-attr]
    for call in (step.check, step.apply):
        with pytest.raises(StepFailed) as info:
            call(ctx)
        text = str(info.value)
        assert text.startswith("Route 53's API (control plane in us-east-1) failed")
        assert "DNS still sends clients to region-a" in text and "drorch resume" in text
