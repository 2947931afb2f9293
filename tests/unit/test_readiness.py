"""Readiness, the pure parts: the verdict and plan's exit code, IAM policy evaluation,
the caller's principal, drift between two runs, and the list of calls drorch makes held
to the iam module's grants."""

from __future__ import annotations

import re

import pytest

from drorch.cli_output import PlanOutput
from drorch.config import load_runbook
from drorch.exitcodes import ExitCode
from drorch.readiness.actions import needed
from drorch.readiness.drift import changes
from drorch.readiness.iam import principal_of
from drorch.readiness.policy_eval import evaluate
from drorch.readiness.result import CheckResult, verdict
from tests.conftest import ROOT

RUNBOOKS = ROOT / "runbooks"


def _r(status: str, check: str = "secret", target: str = "t") -> CheckResult:
    return CheckResult(check, target, status, "why")  # type: ignore[arg-type]


def test_the_worst_status_decides_the_verdict() -> None:
    """fail -> not_ready, warn -> warnings, pass and skip -> ready."""
    assert verdict([]) == "ready"
    assert verdict([_r("pass"), _r("skip")]) == "ready"
    assert verdict([_r("pass"), _r("warn")]) == "warnings"
    assert verdict([_r("warn"), _r("fail"), _r("skip")]) == "not_ready"


@pytest.mark.parametrize(("allowed", "ready", "code"), [
    (True, "ready", ExitCode.OK), (True, "warnings", 1), (True, "not_ready", 2),
    (True, None, ExitCode.OK)])
def test_plan_exit_code_follows_readiness_when_allowed(allowed: bool, ready: str | None,
                                                       code: int) -> None:
    """0 ready, 1 warnings, 2 not ready; no readiness (dry run): 0."""
    from drorch.cli_plan import plan_exit_code

    plan = PlanOutput(kind="failover", runbook="x", from_region="a", to_region="b",
                      allowed=allowed, refusal=None, stages=[], warnings=[], notes=[],
                      ready=ready)  # type: ignore[arg-type]
    assert plan_exit_code(None, None, plan) == code  # type: ignore[arg-type]


def test_a_refused_plan_keeps_its_code_whatever_the_readiness() -> None:
    """Refused (3) or nothing to do (6) wins over a readiness verdict."""
    from drorch.cli_plan import plan_exit_code

    class _Refusal:
        nothing_to_do = False

    class _Engine:
        def refusal(self, kind: str) -> _Refusal:
            return _Refusal()

    plan = PlanOutput(kind="failover", runbook="x", from_region="a", to_region="b",
                      allowed=False, refusal="already failed over", stages=[], warnings=[],
                      notes=[], ready="ready")
    assert plan_exit_code(None, _Engine(), plan) == ExitCode.REFUSED  # type: ignore[arg-type]


POLICY = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["ssm:Get*", "ssm:PutParameter"],
     "Resource": "arn:aws:ssm:*:111122223333:parameter/drorch/*"},
    {"Effect": "Allow", "Action": "route53:ChangeResourceRecordSets",
     "Resource": "arn:aws:route53:::hostedzone/Z1",
     "Condition": {"ForAllValues:StringEquals": {"route53:ChangeResourceRecordSetsActions":
                                                 ["UPSERT"]}}},
    {"Effect": "Deny", "Action": "ssm:PutParameter",
     "Resource": "arn:aws:ssm:us-west-2:111122223333:parameter/drorch/locked"},
    {"Effect": "Allow", "NotAction": ["iam:*", "route53:*"], "NotResource": "arn:aws:s3:::*"},
]}


@pytest.mark.parametrize(("action", "resource", "decision", "conditional"), [
    ("ssm:GetParameter", "arn:aws:ssm:us-east-1:111122223333:parameter/drorch/flag",
     "allowed", False),
    ("SSM:putparameter", "arn:aws:ssm:us-east-1:111122223333:parameter/drorch/flag",
     "allowed", False),  # actions match case-insensitively
    ("ssm:PutParameter", "arn:aws:ssm:us-west-2:111122223333:parameter/drorch/locked",
     "explicitDeny", False),
    ("route53:ChangeResourceRecordSets", "arn:aws:route53:::hostedzone/Z1", "allowed", True),
    ("route53:ChangeResourceRecordSets", "arn:aws:route53:::hostedzone/Z2",
     "implicitDeny", False),
    ("sqs:ReceiveMessage", "arn:aws:sqs:us-east-1:111122223333:q", "allowed",
     False),  # by the NotAction/NotResource statement
    ("iam:GetRole", "arn:aws:iam::111122223333:role/x", "implicitDeny", False),
    ("s3:GetObject", "arn:aws:s3:::bucket/key", "implicitDeny", False),
])
def test_policy_evaluation(action: str, resource: str, decision: str,
                           conditional: bool) -> None:
    """Deny wins, Allow matches with wildcards (actions case-insensitively), Not*
    statements match what they do not name, conditions are reported unevaluated."""
    got = evaluate([POLICY], action, resource)
    assert (got.decision, got.conditional) == (decision, conditional)


def test_the_principal_of_a_caller() -> None:
    """An assumed role's session names its role; users and root are said as such."""
    assert principal_of("arn:aws:sts::111122223333:assumed-role/drorch-app/i-0abc") == (
        "arn:aws:iam::111122223333:role/drorch-app", "role")
    assert principal_of("arn:aws:iam::111122223333:user/alice") == (
        "arn:aws:iam::111122223333:user/alice", "user")
    assert principal_of("arn:aws:iam::111122223333:root")[1] == "root"
    assert principal_of("arn:aws:sts::111122223333:federated-user/bob")[1] == "other"


def test_drift_is_only_what_changed() -> None:
    """Same statuses: no drift; a changed, a new and a gone result each are one."""
    before = [r.as_dict() for r in (_r("pass", "a"), _r("pass", "b"), _r("warn", "c"))]
    assert changes(before, [_r("pass", "a"), _r("pass", "b"), _r("warn", "c")]) == []
    got = changes(before, [_r("fail", "a"), _r("warn", "c"), _r("pass", "d")])
    assert {(d["check"], d["was"], d["now"]) for d in got} == {
        ("a", "pass", "fail"), ("d", "unknown", "pass"), ("b", "pass", "gone")}
    assert {d["was"] for d in changes(None, [_r("pass")])} == {"unknown"}


def _granted() -> set[str]:
    text = (ROOT / "terraform" / "modules" / "iam" / "main.tf").read_text()
    code = re.sub(r"#.*|variable\s*=.*", "", text)
    return set(re.findall(r'"((?:ssm|secretsmanager|route53|sqs|sns|rds|cloudwatch|iam|s3):'
                          r'[A-Za-z]+)"', code))


def test_the_calls_readiness_checks_for_are_what_the_iam_module_grants(monkeypatch:
                                                                       pytest.MonkeyPatch
                                                                       ) -> None:
    """Every action the IAM check asks about is granted by terraform/modules/iam, and
    every grant but the IAM check's own reads is asked about (for the lab runbooks of
    each kind, with an alarm chain learned): neither list can drift from the other."""
    monkeypatch.setenv("DRORCH_STATE_DIR", "/tmp/drorch-unit-readiness")
    learned = {"secret_arn": ["arn:aws:secretsmanager:us-east-1:1:secret:lab/main/db-AbCdEf"],
               "hosted_zone_id": ["Z1"], "health_check_id": ["hc-1"],
               "alarm_arn": ["arn:aws:cloudwatch:us-east-1:1:alarm:a"],
               "topic_arn": ["arn:aws:sns:us-east-1:1:t"], "queue_arn": ["arn:aws:sqs:x:1:q"]}
    asked: set[str] = set()
    for name in ("lab.yaml", "aws-rds.yaml", "aws-aurora-global.yaml"):
        rb = load_runbook(RUNBOOKS / name)
        health = rb.health.model_copy(update={"alarm_queue_url": "http://q/1/q"})
        asked |= {n.action for n in needed(rb.model_copy(update={"health": health}), "1",
                                           learned=learned)}
    granted = _granted()
    assert sorted(asked - granted) == []
    own = {a for a in granted if a.startswith("iam:")}
    # GetHealthCheckStatus is asked only for route53_health_check probes (none in the lab)
    assert sorted(granted - own - asked) == ["route53:GetHealthCheckStatus"]
    assert own == {"iam:SimulatePrincipalPolicy", "iam:ListAttachedRolePolicies",
                   "iam:ListRolePolicies", "iam:GetRolePolicy", "iam:GetPolicy",
                   "iam:GetPolicyVersion"}


def test_aws_failures_are_sorted_into_what_a_verdict_needs() -> None:
    """Not found, unreachable, denied and not offered are told apart (the last is how
    moto answers an operation it lacks: HTTP 500 or a body botocore cannot parse)."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError
    from botocore.parsers import ResponseParserError

    from drorch.adapters.readiness_aws import classify

    def client_error(code: str, status: int = 400) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")

    assert classify(client_error("ResourceNotFoundException")) == "not_found"
    assert classify(client_error("DBInstanceNotFound")) == "not_found"
    assert classify(client_error("GlobalClusterNotFoundFault")) == "not_found"
    assert classify(client_error("AccessDenied", 403)) == "denied"
    assert classify(client_error("InternalFailure", 500)) == "unsupported"
    assert classify(ResponseParserError("invalid XML received")) == "unsupported"
    assert classify(EndpointConnectionError(endpoint_url="http://x")) == "unreachable"
    assert classify(ConnectTimeoutError(endpoint_url="http://x")) == "unreachable"
    assert classify(client_error("ThrottlingException")) == "other"


def test_an_allow_only_under_a_condition_warns_and_a_plain_allow_passes() -> None:
    """A role whose only Allow for a call holds under a Condition drorch does not
    evaluate (here: another region) is not proof it may make the call: a warning naming
    the action, never a pass; without the condition, a pass; a conditional Deny refuses."""
    from drorch.readiness.actions import Needed
    from drorch.readiness.iam import decide, iam_row

    needs = [Needed("ssm:PutParameter", "arn:aws:ssm:us-east-1:1:parameter/flag", "flag")]
    allow = {"Effect": "Allow", "Action": "ssm:PutParameter", "Resource": "*"}
    cond = {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}

    decisions, conditional = decide([{"Statement": [{**allow, "Condition": cond}]}], needs)
    row = iam_row("role", needs, decisions, "evaluated")
    assert conditional and row.status == "warn" and "ssm:PutParameter" in row.reason

    decisions, _ = decide([{"Statement": [allow]}], needs)
    assert iam_row("role", needs, decisions, "evaluated").status == "pass"

    deny = {"Effect": "Deny", "Action": "ssm:*", "Resource": "*", "Condition": cond}
    decisions, _ = decide([{"Statement": [allow, deny]}], needs)
    assert iam_row("role", needs, decisions, "evaluated").status == "fail"

    # the conditions terraform/modules/iam puts on record changes, which drorch's own
    # UPSERTs of the runbook's records meet, are no reason to doubt
    flip = [Needed("route53:ChangeResourceRecordSets", "arn:aws:route53:::hostedzone/Z1",
                   "dns")]
    upserts = {"ForAllValues:StringEquals": {
        "route53:ChangeResourceRecordSetsActions": ["UPSERT"],
        "route53:ChangeResourceRecordSetsRecordTypes": ["A"]}}
    decisions, conditional = decide([{"Statement": [{
        "Effect": "Allow", "Action": "route53:ChangeResourceRecordSets",
        "Resource": "arn:aws:route53:::hostedzone/Z1", "Condition": upserts}]}], flip)
    assert conditional and iam_row("role", flip, decisions, "evaluated").status == "pass"
