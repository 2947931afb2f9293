"""The lab SMTP sink stores every message as JSON and finds it again."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from drorch.lab import services
from drorch.lab.ports import free_port
from drorch.lab.smtp_sink import find_message, list_messages

from .conftest import wait_for


def send(port: int, subject: str, to: str = "ops@example.com") -> str:
    msg = EmailMessage()
    message_id = make_msgid(domain="test.example")
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = (
        "app@example.com", to, subject, message_id)
    msg.set_content("hello from the test\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.send_message(msg)
    return message_id


def test_in_process_sink_stores_fields(smtp_sink: tuple[int, Path]) -> None:
    """A delivered message is stored with sender, recipients, subject, id and body."""
    port, store = smtp_sink
    message_id = send(port, "first one")
    record = wait_for(lambda: find_message(store, message_id=message_id), what="stored mail")
    assert record["from"] == "app@example.com"
    assert record["to"] == ["ops@example.com"]
    assert record["subject"] == "first one"
    assert record["body"].strip() == "hello from the test"
    assert record["received_at"]
    assert find_message(store, message_id=message_id.strip("<>")) == record


def test_find_by_subject_returns_newest_and_none_when_absent(smtp_sink: tuple[int, Path]) -> None:
    """Subject search returns the newest match; no match gives None."""
    port, store = smtp_sink
    send(port, "drill 1 alpha")
    second = send(port, "drill 2 alpha")
    wait_for(lambda: find_message(store, message_id=second), what="second mail")
    assert find_message(store, subject_contains="alpha")["message_id"] == second  # type: ignore[index]
    assert find_message(store, subject_contains="no such subject") is None
    assert find_message(store, subject_contains="alpha", message_id="<other@x>") is None
    assert len(list_messages(store)) >= 3


def test_sink_subprocess_starts_receives_and_stops(workdir: Path) -> None:
    """The sink started by services receives mail into its store and stop_pid ends it."""
    port, store = free_port(), workdir / "sub-mail"
    pid = services.start_smtp_sink("127.0.0.1", port, store=store, log_path=workdir / "smtp.log")
    try:
        message_id = send(port, "via subprocess")
        wait_for(lambda: find_message(store, message_id=message_id), what="stored mail")
    finally:
        assert services.stop_pid(pid)
    assert not services.pid_alive(pid)
    assert list_messages(workdir / "does-not-exist") == []


def test_start_reports_a_service_that_cannot_bind(smtp_sink: tuple[int, Path],
                                                  workdir: Path) -> None:
    """Starting a sink on a port already taken raises ServiceStartError and starts nothing."""
    with pytest.raises(services.ServiceStartError, match="is not free"):
        services.start_smtp_sink("127.0.0.1", smtp_sink[0], store=workdir / "clash",
                                 log_path=workdir / "clash.log", timeout=10)


def test_start_reports_a_service_that_dies(workdir: Path) -> None:
    """A service that exits during start-up raises ServiceStartError quoting its log."""
    with pytest.raises(services.ServiceStartError, match=r"(?s)drorch.lab.app exited.*aws_region"):
        services.start_app({"region": "region-a", "listen_port": free_port()},
                           workdir / "dies.log", timeout=10)
