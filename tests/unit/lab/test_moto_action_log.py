"""The lab moto server's action log (what ``drorch.lab.lab.moto_actions`` counts) writes
each line whole: the server answers on many threads, and a line written in two parts
(``print``: text, then newline) fused with another thread's line, so an action went
uncounted (a flaky ``CopyDBClusterSnapshot == 1`` in test_aurora_failover)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from moto.core.responses import BaseResponse

from drorch.lab import moto_server


class _Writes:
    """A stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_action_is_logged_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # wrap a stand-in dispatch (restored afterwards), not this process's moto
    monkeypatch.setattr(BaseResponse, "call_action", lambda self: "answered")
    moto_server.log_actions()
    stream = _Writes()
    monkeypatch.setattr(sys, "stderr", stream)
    response: Any = BaseResponse.__new__(BaseResponse)
    response.service_name, response.region = "rds", "us-east-1"
    response._get_action = lambda: "CopyDBClusterSnapshot"

    assert BaseResponse.call_action(response) == "answered"
    assert stream.calls == [
        f"{moto_server.ACTION_LOG_PREFIX} rds us-east-1 CopyDBClusterSnapshot\n"]
