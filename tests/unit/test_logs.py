"""Log lines go to whatever stderr is when they are written: a stand-in stderr that was
closed (a test runner's capture, an embedding program's) must not break later logging."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from drorch import logs


def test_logging_survives_the_stderr_it_was_configured_under_being_closed(
        capsys: pytest.CaptureFixture[str]) -> None:
    saved = structlog.get_config()
    real, stand_in = sys.stderr, io.StringIO()
    try:
        sys.stderr = stand_in
        logs.configure(json_logs=True)
        structlog.get_logger().info("while.swapped")
        sys.stderr = real
        stand_in.close()
        structlog.get_logger().info("after.close", n=1)  # raised ValueError before
    finally:
        sys.stderr = real
        structlog.configure(**saved)
    assert "after.close" in capsys.readouterr().err
