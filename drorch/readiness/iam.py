"""The caller may make every call drorch will make (:mod:`drorch.readiness.actions`).

Who is asking: ``GetCallerIdentity`` (an assumed role's session ARN names the role).
How it is checked, in order: IAM's own ``SimulatePrincipalPolicy`` (identity policies,
boundaries and conditions as IAM evaluates them); where the endpoint does not offer it
(moto has no simulation) or the caller may not call it, the role's own policies read
with ``ListAttachedRolePolicies`` / ``GetPolicyVersion`` / ``ListRolePolicies`` /
``GetRolePolicy`` and evaluated by :mod:`drorch.readiness.policy_eval` (conditions not
evaluated, said so); where neither can be done (an IAM user, a role IAM does not know),
``skip`` with "not checked" and the reason, never a guess.

The calls this check itself makes (``iam:SimulatePrincipalPolicy`` and the policy reads)
are not in the list it checks: a caller without them gets "not checked".
"""

from __future__ import annotations

from collections import defaultdict

from drorch.adapters import readiness_aws as ra
from drorch.readiness.actions import Needed, needed
from drorch.readiness.context import Context, aws_problem
from drorch.readiness.policy_eval import evaluate
from drorch.readiness.result import CheckResult, failed, passed, skipped, warned

CHECK = "iam"
IAM_REGION = "us-east-1"
"""IAM is global; boto3 signs for us-east-1."""


def principal_of(caller: str) -> tuple[str, str]:
    """(IAM ARN to check, kind: role, user, root or other) for a caller ARN."""
    parts = caller.split(":", 5)
    if len(parts) < 6:
        return caller, "other"
    partition, service, account, resource = parts[1], parts[2], parts[4], parts[5]
    if service == "sts" and resource.startswith("assumed-role/"):
        return f"arn:{partition}:iam::{account}:role/{resource.split('/')[1]}", "role"
    if service == "iam" and resource == "root":
        return caller, "root"
    if service == "iam" and resource.startswith(("role/", "user/")):
        return caller, resource.split("/", 1)[0]
    return caller, "other"


def check(ctx: Context) -> list[CheckResult]:
    region = ctx.aws_region(ctx.serving)
    try:
        caller = ra.caller_arn(ctx.aws("sts", region))
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        return [aws_problem(ctx, CHECK, "caller", "STS", region, exc, "who drorch runs as")]
    principal, kind = principal_of(caller)
    partition, account = caller.split(":")[1], caller.split(":")[4]
    needs = needed(ctx.runbook, account, partition, ctx.learned)
    target = principal
    if kind == "root":
        return [warned(CHECK, target, "drorch runs with the account's root credentials: "
                       "every call is allowed, and every other call too",
                       "run drorch as the role terraform/modules/iam creates")]
    client = ctx.aws("iam", IAM_REGION)
    try:
        decisions = _simulate(client, principal, needs)
        how = "IAM policy simulation"
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        why = ra.classify(exc)
        if why == "unreachable":
            return [aws_problem(ctx, CHECK, target, "IAM", IAM_REGION, exc,
                                "the caller's permissions")]
        said = {"unsupported": "is not offered by this endpoint",
                "denied": f"was refused ({ra.error_text(exc)})"}.get(
                    why, f"failed ({ra.error_text(exc)})")
        if kind != "role":
            return [skipped(CHECK, target, f"not checked: SimulatePrincipalPolicy {said}, "
                            f"and the caller is {kind}, not a role whose policies drorch "
                            "can read", "run drorch as a role (terraform/modules/iam), or "
                            "check its permissions against terraform/modules/iam by hand")]
        try:
            docs = ra.role_policy_documents(client, principal.rsplit("/", 1)[1])
        except Exception as read_exc:  # noqa: BLE001 (sorted into a verdict)
            return [skipped(CHECK, target, f"not checked: SimulatePrincipalPolicy {said}, "
                            "and the role's policies could not be read "
                            f"({ra.error_text(read_exc)})", "grant iam:SimulatePrincipal"
                            "Policy on the role itself (terraform/modules/iam does)")]
        decisions, conditional = decide([d for _, d in docs], needs)
        how = (f"the role's {len(docs)} policies evaluated by drorch (SimulatePrincipal"
               f"Policy {said}; {'conditions not evaluated, ' if conditional else ''}"
               "boundaries and SCPs not seen)")
    return [iam_row(target, needs, decisions, how)]


def decide(docs: list[dict[str, object]], needs: list[Needed]
           ) -> tuple[dict[tuple[str, str], str], bool]:
    """Each needed call's decision under the role's policy documents, and whether any
    deciding statement had a Condition. An Allow that holds only under a Condition
    drorch did not evaluate is ``allowed-if``, no proof: the call may well be refused
    there (a region, a tag, a time)."""
    decisions: dict[tuple[str, str], str] = {}
    conditional = False
    for n in needs:
        ev = evaluate(docs, n.action, n.resource)
        unvouched = ev.condition_keys - VOUCHED_KEYS
        decisions[(n.action, n.resource)] = (
            "allowed-if" if ev.decision == "allowed" and unvouched else ev.decision)
        conditional |= ev.conditional
    return decisions, conditional


VOUCHED_KEYS = frozenset(k.lower() for k in (
    "route53:ChangeResourceRecordSetsNormalizedRecordNames",
    "route53:ChangeResourceRecordSetsRecordTypes",
    "route53:ChangeResourceRecordSetsActions"))
"""Condition keys drorch's own calls are made to meet: its record changes are UPSERTs of
the runbook's records and types, what terraform/modules/iam allows. Any other condition
(a region, a tag, a time, a source address) drorch does not evaluate."""


def _simulate(client: object, principal: str,
              needs: list[Needed]) -> dict[tuple[str, str], str]:
    by_resource: dict[str, list[str]] = defaultdict(list)
    for n in needs:
        by_resource[n.resource].append(n.action)
    decisions: dict[tuple[str, str], str] = {}
    for resource, actions in by_resource.items():
        got = ra.simulate(client, principal, sorted(set(actions)),
                          [] if resource == "*" else [resource])
        for action in actions:
            decisions[(action, resource)] = got.get(action, "implicitDeny")
    return decisions


def iam_row(target: str, needs: list[Needed], decisions: dict[tuple[str, str], str],
             how: str) -> CheckResult:
    """The IAM row for ``decisions`` (see :func:`decide`): fail naming what is refused,
    warn naming what is allowed only under a condition, else pass."""
    refused = [n for n in needs
               if decisions.get((n.action, n.resource)) not in ("allowed", "allowed-if")]
    if_only = sorted({n.action for n in needs
                      if decisions.get((n.action, n.resource)) == "allowed-if"})
    if refused:
        actions = sorted({n.action for n in refused})
        first = refused[0]
        return failed(CHECK, target, f"may not call {', '.join(actions)} (e.g. "
                      f"{first.action} on {first.resource}, for {first.why}): drorch would "
                      f"fail at that step ({how})", "grant them: "
                      "terraform/modules/iam grants exactly the calls drorch makes")
    if if_only:
        return warned(CHECK, target, f"{', '.join(if_only)} allowed only under a Condition "
                      f"drorch does not evaluate ({how}): a failover may be refused there",
                      "grant them without a condition, or check the condition holds for "
                      "every call drorch makes (its regions, its resources)")
    return passed(CHECK, target, f"may make all {len({n.action for n in needs})} kinds of "
                  f"call drorch makes, on {len({n.resource for n in needs})} resources "
                  f"({how})")
