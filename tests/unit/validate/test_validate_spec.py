"""The runbook's flow models refuse malformed flows and know which variables they need."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from drorch.validate.spec import (
    Check,
    DbRowCheckSpec,
    FlowSpec,
    HttpStep,
    MailboxCheckSpec,
)

LOGIN = {
    "name": "login",
    "method": "post",
    "url": "http://{app_host}/login",
    "json": {"user": "{user}", "password": "{password}"},
    "expect_json": {"token": "*"},
    "save": {"token": "token"},
}
CHECKOUT = {
    "name": "checkout",
    "method": "POST",
    "url": "http://{app_host}/checkout",
    "headers": {"Authorization": "Bearer {token}"},
    "expect_status": 201,
    "save": {"order_id": "order.id"},
}


def flow(**extra: object) -> dict[str, object]:
    return {"name": "buy", "steps": [LOGIN, CHECKOUT], **extra}


def test_a_full_flow_parses_with_defaults() -> None:
    """A flow with steps and both check kinds parses; defaults fill deadline and status."""
    spec = FlowSpec.model_validate(flow(checks=[
        {"kind": "db_row", "database": "main", "sql": "select 1 from orders where id=%(order_id)s"},
        {"kind": "mailbox", "store": "/tmp/mail", "subject_contains": "Order {order_id}"},
    ]))
    assert spec.deadline_s == 30
    assert spec.steps[0].method == "POST"
    assert spec.steps[0].expect_status == 200
    assert spec.steps[0].json_body == {"user": "{user}", "password": "{password}"}
    assert isinstance(spec.checks[0], DbRowCheckSpec)
    assert isinstance(spec.checks[1], MailboxCheckSpec)
    assert spec.checks[0].expect_rows == 1


def test_unknown_keys_are_refused() -> None:
    """A misspelt key in a step is an error, not silently ignored."""
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        HttpStep.model_validate({**CHECKOUT, "expect_stauts": 200})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "FETCH"}, "method must be one of"),
        ({"url": "ftp://x/"}, "http:// or https://"),
        ({"expect_status": 999}, "less than or equal to 599"),
        ({"save": {"order id": "order.id"}}, "not a valid variable name"),
        ({"save": {"order_id": "order..id"}}, "dotted JSON path"),
        ({"expect_json": {"": 1}}, "dotted JSON path"),
        ({"timeout_s": 0}, "greater than 0"),
    ],
)
def test_invalid_step_fields_are_refused(change: dict[str, object], message: str) -> None:
    """Each malformed step field is refused with a message naming the problem."""
    with pytest.raises(ValidationError, match=message):
        HttpStep.model_validate({**CHECKOUT, **change})


def test_check_kind_is_a_discriminated_union() -> None:
    """An unknown check kind is refused; a db_row check needs expect_rows >= 1."""
    adapter = TypeAdapter(Check)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        adapter.validate_python({"kind": "imap", "store": "x", "subject_contains": "y"})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        adapter.validate_python({"kind": "db_row", "database": "main", "sql": "s",
                                 "expect_rows": 0})


def test_a_flow_needs_steps_or_checks_and_unique_names() -> None:
    """An empty flow and a flow with two steps of one name are refused."""
    with pytest.raises(ValidationError, match="neither steps nor checks"):
        FlowSpec.model_validate({"name": "empty"})
    with pytest.raises(ValidationError, match="used twice"):
        FlowSpec.model_validate({"name": "dup", "steps": [LOGIN, LOGIN]})


def test_deadline_must_be_positive() -> None:
    """A zero deadline is refused."""
    with pytest.raises(ValidationError, match="greater than 0"):
        FlowSpec.model_validate(flow(deadline_s=0))


def test_variables_used_excludes_values_saved_by_earlier_steps() -> None:
    """Only names no earlier step saves must come from the runbook."""
    spec = FlowSpec.model_validate(flow(checks=[
        {"kind": "db_row", "database": "main",
         "sql": "select 1 from orders where id=%(order_id)s and region=%(region)s"},
        {"kind": "mailbox", "store": "m", "subject_contains": "Order {order_id}", "to": "{user}"},
    ]))
    assert spec.variables_used() == {"app_host", "user", "password", "region"}
    assert spec.missing_variables({"app_host", "user", "password"}) == {"region"}


def test_a_variable_used_before_it_is_saved_is_reported_missing() -> None:
    """A step that uses a value a later step saves needs it from the runbook."""
    spec = FlowSpec.model_validate({"name": "wrong-order", "steps": [CHECKOUT, LOGIN]})
    assert "token" in spec.variables_used()
