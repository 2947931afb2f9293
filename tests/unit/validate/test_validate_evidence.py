"""Evidence keeps what a human needs to see and never a secret."""

from __future__ import annotations

import json

from drorch.validate.evidence import (
    BODY_LIMIT,
    FlowResult,
    StepEvidence,
    body_evidence,
    headers_evidence,
    redact_url,
    secret_values_in,
)
from drorch.validate.runner import _judge
from drorch.validate.spec import HttpStep


def test_secret_headers_are_masked_and_others_kept() -> None:
    """Authorization and Cookie become ***; Content-Type stays."""
    out = headers_evidence({"Authorization": "Bearer abcdef", "Cookie": "s=1",
                            "Content-Type": "application/json"}, set())
    assert out == {"Authorization": "***", "Cookie": "***", "Content-Type": "application/json"}


def test_secret_values_are_collected_from_secret_keys() -> None:
    """Values under password/token keys, and a bearer credential alone, are secrets."""
    found = secret_values_in({"user": "ann", "password": "hunter22",
                              "nested": [{"Authorization": "Bearer tok-123456"}]})
    assert found == {"hunter22", "Bearer tok-123456", "tok-123456"}


def test_body_evidence_masks_keys_and_scrubs_known_values_in_text() -> None:
    """A JSON body keeps its shape with secrets masked; a text body loses known secrets."""
    body = json.dumps({"token": "tok-123456", "echo": "you sent tok-123456", "id": 3})
    assert body_evidence(body.encode(), {"tok-123456"}) == {
        "token": "***", "echo": "you sent ***", "id": 3}
    assert body_evidence(b"error for hunter22", {"hunter22"}) == "error for ***"


def test_a_large_body_is_truncated_after_redaction() -> None:
    """Bodies over the limit become truncated text, with the secret already gone."""
    secret = "s3cr3t-value"
    body = ("x" * (BODY_LIMIT - 5) + secret + "y" * 100).encode()
    out = body_evidence(body, {secret})
    assert isinstance(out, str)
    assert "truncated" in out
    assert "s3cr3t" not in out
    assert len(out) < BODY_LIMIT + 50


def test_urls_lose_secret_query_parameters_and_credentials() -> None:
    """?token= values and user:password@ are masked; the rest of the URL is kept."""
    out = redact_url("http://bob:pw12345@app.test/x?token=abc123&page=2", set())
    assert "abc123" not in out and "pw12345" not in out
    assert "page=2" in out and "app.test/x" in out


def test_flow_results_are_json_serializable() -> None:
    """FlowResult.to_dict() goes through json.dumps unchanged."""
    result = FlowResult(name="f", ok=False, attempts=2, duration_s=1.0, started_at=1.0,
                        ended_at=2.0, steps=[StepEvidence(name="s", method="GET", url="u")],
                        error="boom")
    assert json.loads(json.dumps(result.to_dict()))["steps"][0]["name"] == "s"


def step(**kw: object) -> HttpStep:
    return HttpStep.model_validate({"name": "s", "url": "http://h/", **kw})


def test_judge_checks_status_fields_and_saved_paths() -> None:
    """Wrong status, a missing field, a different value and an unsavable path each fail."""
    assert _judge(step(), 200, None, {}) is None
    assert "expected status 200, got 503" in (_judge(step(), 503, None, {}) or "")
    assert _judge(step(), 200, {"a": 1}, {"a": "*"}) is None
    assert "no 'b'" in (_judge(step(), 200, {"a": 1}, {"b": "*"}) or "")
    assert "expected 2, got 1" in (_judge(step(), 200, {"a": 1}, {"a": 2}) or "")
    assert "not JSON" in (_judge(step(save={"t": "token"}), 200, None, {}) or "")
    assert "cannot save" in (_judge(step(save={"t": "token"}), 200, {"x": 1}, {}) or "")


def test_judge_does_not_print_a_secret_field_value() -> None:
    """A mismatch on a token field says so without showing the token."""
    problem = _judge(step(), 200, {"token": "tok-999999"}, {"token": "other"}) or ""
    assert "tok-999999" not in problem and "token" in problem
