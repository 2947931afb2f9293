"""The sink mailbox check reads the sink's store directory, one JSON file per message."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from drorch.validate import CheckFailed, SinkMailboxCheck
from drorch.validate.spec import MailboxCheckSpec
from drorch.validate.template import TemplateError


def write(store: Path, name: str, **record: object) -> None:
    store.mkdir(exist_ok=True)
    (store / f"{name}.json").write_text(json.dumps(record))


def spec(**kw: object) -> MailboxCheckSpec:
    return MailboxCheckSpec.model_validate(
        {"store": "mail", "subject_contains": "Order {order_id}", **kw})


def test_a_matching_message_since_the_flow_started_is_found(tmp_path: Path) -> None:
    """A message whose subject contains the rendered template, received (ISO time) after
    the flow started, passes; the detail names its message id."""
    write(tmp_path / "mail", "1", subject="Your Order 7 is confirmed", to=["ann@example.com"],
          message_id="<m1@x>", received_at="2099-01-01T00:00:00+00:00")
    detail = SinkMailboxCheck(tmp_path).run(spec(), {"order_id": 7}, since=time.time())
    assert "<m1@x>" in detail


def test_old_messages_and_other_recipients_do_not_count(tmp_path: Path) -> None:
    """A message from before the flow, or to someone else, does not satisfy the check."""
    now = time.time()
    write(tmp_path / "mail", "old", subject="Order 7", to=["ann@example.com"],
          received_at=now - 3600)
    write(tmp_path / "mail", "other", subject="Order 7", to="Bob <bob@example.com>",
          received_at=now)
    check = SinkMailboxCheck(tmp_path)
    with pytest.raises(CheckFailed, match="2 message"):
        check.run(spec(to="ann@example.com"), {"order_id": 7}, since=now)
    assert check.run(spec(to="bob@example.com"), {"order_id": 7}, since=now)


def test_unreadable_files_are_skipped_and_a_missing_store_fails(tmp_path: Path) -> None:
    """A half-written file is ignored; a store that does not exist is a failed check."""
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "partial.json").write_text('{"subject": "Order')
    with pytest.raises(CheckFailed, match="0 message"):
        SinkMailboxCheck(tmp_path).run(spec(), {"order_id": 7}, since=0)
    with pytest.raises(CheckFailed, match="does not exist"):
        SinkMailboxCheck(tmp_path / "nowhere").run(spec(), {"order_id": 7}, since=0)


def test_an_unknown_template_variable_is_a_runbook_error(tmp_path: Path) -> None:
    """A subject naming a value nobody saved raises TemplateError, not CheckFailed."""
    with pytest.raises(TemplateError):
        SinkMailboxCheck(tmp_path).run(spec(), {}, since=0)


def test_a_check_kind_without_a_runner_fails_the_flow_at_once(tmp_path: Path) -> None:
    """A flow whose check kind has no registered runner fails without retrying."""
    from drorch.validate import FlowSpec, HttpxTransport, run_flows

    flow = FlowSpec.model_validate({"name": "mail-only", "deadline_s": 5, "checks": [
        {"kind": "mailbox", "store": str(tmp_path), "subject_contains": "x"}]})
    with HttpxTransport() as http:
        [result] = run_flows([flow], http=http, resolve=None, checks={}, variables={})
    assert not result.ok
    assert result.checks[0].attempts == 1
    assert "no check runner registered for kind 'mailbox'" in (result.error or "")
