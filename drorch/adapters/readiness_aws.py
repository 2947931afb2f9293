"""Read-only AWS calls for the readiness checks (``drorch plan``, ``drorch watch``).

Each function makes one kind of call and returns plain data; none changes anything.
Errors are left to the caller, which sorts them with :func:`classify`: a resource that
is not there (``not_found``), a region whose API does not answer (``unreachable``),
the caller not allowed (``denied``), an operation the endpoint does not offer
(``unsupported``: moto answers HTTP 500 for a call it does not implement), or other.

Response shapes are those of the AWS API references: Secrets Manager ``DescribeSecret``
(``RotationEnabled``, ``VersionIdsToStages``, ``PrimaryRegion``, ``ReplicationStatus``),
Route 53 ``GetHealthCheck``, CloudWatch ``DescribeAlarms`` (``AlarmActions``), SNS
``ListSubscriptionsByTopic``, SQS ``GetQueueAttributes`` (``QueueArn``, ``Policy``),
RDS ``DescribeDBInstances`` (``StatusInfos`` "read replication") and
``DescribeGlobalClusters`` (``GlobalClusterMembers``), STS ``GetCallerIdentity``, IAM
``SimulatePrincipalPolicy`` and the role policy reads.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import unquote

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

Failure = Literal["not_found", "unreachable", "denied", "unsupported", "other"]

_NOT_FOUND = {"ResourceNotFoundException", "ParameterNotFound", "NoSuchHealthCheck",
              "NoSuchHostedZone", "DBInstanceNotFound", "DBInstanceNotFoundFault",
              "GlobalClusterNotFoundFault", "DBClusterNotFoundFault", "NotFound",
              "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
              "NoSuchEntity", "ResourceNotFound"}
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
           "AuthorizationError", "AuthorizationErrorException"}
_UNSUPPORTED = {"InternalFailure", "InternalError", "NotImplemented", "InternalServerError"}


def classify(exc: BaseException) -> Failure:
    """What kind of failure ``exc`` is, for a readiness verdict."""
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                        ConnectionClosedError)):
        return "unreachable"
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _NOT_FOUND or code.endswith("NotFound") or code.endswith("NotFoundFault"):
            return "not_found"
        if code in _DENIED:
            return "denied"
        if code in _UNSUPPORTED or status in (500, 501):
            return "unsupported"
        return "other"
    if isinstance(exc, (NotImplementedError, ResponseParserError)):
        # moto answers an operation it does not implement with a body botocore cannot
        # parse (server mode) or raises NotImplementedError (in process)
        return "unsupported"
    if isinstance(exc, BotoCoreError):
        return "unreachable" if "connect" in str(exc).lower() else "other"
    return "other"


def error_text(exc: BaseException) -> str:
    """AWS's error code and message (never a request parameter)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip().rstrip(":")
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


# -- Secrets Manager ------------------------------------------------------------------
def describe_secret(client: Any, secret_id: str) -> dict[str, Any]:
    """``DescribeSecret``: metadata only, never the value."""
    resp = client.describe_secret(SecretId=secret_id)
    return {k: resp.get(k) for k in ("ARN", "Name", "PrimaryRegion", "ReplicationStatus",
                                     "RotationEnabled", "NextRotationDate",
                                     "VersionIdsToStages", "DeletedDate")}


# -- SSM --------------------------------------------------------------------------------
def parameter_value(client: Any, name: str) -> str | None:
    """``GetParameter``'s value; None when SSM says ``ParameterNotFound``."""
    try:
        return str(client.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        if classify(exc) == "not_found":
            return None
        raise


# -- Route 53 -------------------------------------------------------------------------
def health_check(client: Any, health_check_id: str) -> dict[str, Any] | None:
    """``GetHealthCheck``'s ``HealthCheck``; None when Route 53 has no such check."""
    try:
        return dict(client.get_health_check(HealthCheckId=health_check_id)["HealthCheck"])
    except ClientError as exc:
        if classify(exc) == "not_found":
            return None
        raise


# -- CloudWatch, SNS, SQS ---------------------------------------------------------------
def alarms(client: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """``DescribeAlarms`` for ``names`` (metric and composite alarms), by name."""
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(names), 100):  # AlarmNames takes at most 100
        resp = client.describe_alarms(AlarmNames=names[i:i + 100],
                                      AlarmTypes=["MetricAlarm", "CompositeAlarm"])
        for alarm in [*resp.get("MetricAlarms", []), *resp.get("CompositeAlarms", [])]:
            found[alarm["AlarmName"]] = alarm
    return found


def topic_subscriptions(client: Any, topic_arn: str) -> list[dict[str, str]]:
    """``ListSubscriptionsByTopic``: ``[{Protocol, Endpoint, SubscriptionArn}]``."""
    subs: list[dict[str, str]] = []
    for page in client.get_paginator("list_subscriptions_by_topic").paginate(
            TopicArn=topic_arn):
        subs += page.get("Subscriptions", [])
    return subs


def queue_attributes(client: Any, queue_url: str) -> dict[str, Any]:
    """``GetQueueAttributes`` of the queue's ARN and access policy (parsed, or None)."""
    attrs = client.get_queue_attributes(QueueUrl=queue_url,
                                        AttributeNames=["QueueArn", "Policy"])["Attributes"]
    policy = attrs.get("Policy")
    return {"QueueArn": attrs.get("QueueArn"),
            "Policy": json.loads(policy) if policy else None}


# -- RDS ----------------------------------------------------------------------------------
def db_instance(client: Any, identifier: str) -> dict[str, Any]:
    """``DescribeDBInstances`` of one instance (raises ``DBInstanceNotFound``)."""
    return dict(client.describe_db_instances(DBInstanceIdentifier=identifier)
                ["DBInstances"][0])


def global_cluster(client: Any, identifier: str) -> dict[str, Any]:
    """``DescribeGlobalClusters`` of one global cluster (``GlobalClusterNotFoundFault``)."""
    return dict(client.describe_global_clusters(GlobalClusterIdentifier=identifier)
                ["GlobalClusters"][0])


# -- who is asking, and what may they do ------------------------------------------------
def caller_arn(client: Any) -> str:
    """``GetCallerIdentity``'s ARN (STS answers it for any credentials, no permission
    needed)."""
    return str(client.get_caller_identity()["Arn"])


def simulate(client: Any, principal_arn: str, actions: list[str],
             resources: list[str]) -> dict[str, str]:
    """``SimulatePrincipalPolicy`` of ``actions`` on ``resources``: each action's
    ``EvalDecision`` (``allowed``, ``explicitDeny``, ``implicitDeny``)."""
    decisions: dict[str, str] = {}
    kwargs: dict[str, Any] = {"PolicySourceArn": principal_arn, "ActionNames": actions}
    if resources:
        kwargs["ResourceArns"] = resources
    for page in client.get_paginator("simulate_principal_policy").paginate(**kwargs):
        for result in page.get("EvaluationResults", []):
            decisions[result["EvalActionName"]] = result["EvalDecision"]
    return decisions


def role_policy_documents(client: Any, role_name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every identity policy of the role: ``[(name, document)]``, attached managed
    policies (their default version) and inline ones."""
    docs: list[tuple[str, dict[str, Any]]] = []
    for page in client.get_paginator("list_attached_role_policies").paginate(
            RoleName=role_name):
        for attached in page.get("AttachedPolicies", []):
            policy = client.get_policy(PolicyArn=attached["PolicyArn"])["Policy"]
            version = client.get_policy_version(PolicyArn=attached["PolicyArn"],
                                                VersionId=policy["DefaultVersionId"])
            docs.append((attached["PolicyName"],
                         _document(version["PolicyVersion"]["Document"])))
    for page in client.get_paginator("list_role_policies").paginate(RoleName=role_name):
        for name in page.get("PolicyNames", []):
            inline = client.get_role_policy(RoleName=role_name, PolicyName=name)
            docs.append((name, _document(inline["PolicyDocument"])))
    return docs


def _document(doc: Any) -> dict[str, Any]:
    """IAM returns policy documents URL-encoded JSON (boto3 often decodes them)."""
    if isinstance(doc, dict):
        return doc
    return dict(json.loads(unquote(str(doc))))
