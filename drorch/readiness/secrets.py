"""The connection secrets: each exists in both regions (as a copy the runbook names or
as a Secrets Manager replica in sync), none is scheduled for deletion, a copy drorch
writes is not a read-only replica, and no rotation is in flight.

From ``DescribeSecret`` (Secrets Manager API Reference): ``PrimaryRegion`` is set on a
replica (writes to it are refused); ``ReplicationStatus[].Status`` is ``InSync``,
``Failed`` or ``InProgress`` per replica region; a version labelled ``AWSPENDING`` that
is not also ``AWSCURRENT`` is a rotation that has not finished (its finishSecret step
would move AWSCURRENT to that version, undoing the endpoint a failover just wrote).
"""

from __future__ import annotations

from typing import Any

from drorch.adapters import readiness_aws as ra
from drorch.readiness.context import Context, aws_problem, not_configured
from drorch.readiness.result import CheckResult, failed, passed

CHECK = "secret"


def check(ctx: Context) -> list[CheckResult]:
    rb = ctx.runbook
    if not rb.secrets:
        return [not_configured(CHECK, "connection secrets")]
    out: list[CheckResult] = []
    for secret_id in dict.fromkeys(s.secret_id for s in rb.secrets):
        listed = [s.region for s in rb.secrets if s.secret_id == secret_id]
        out += _one_secret(ctx, secret_id, listed)
    return out


def _describe(ctx: Context, secret_id: str, region: str) -> dict[str, Any] | CheckResult:
    aws_region = ctx.aws_region(region)
    target = f"{secret_id} in {region}"
    try:
        return ra.describe_secret(ctx.aws("secretsmanager", aws_region), secret_id)
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        res = aws_problem(ctx, CHECK, target, "Secrets Manager", aws_region, exc,
                          f"secret {secret_id}")
        if res.status == "fail":
            return failed(CHECK, target, f"secret {secret_id} does not exist in {region} "
                          f"({aws_region}): applications there cannot read where to "
                          "connect, and a failover cannot repoint it",
                          "create it there, or replicate it (terraform/modules/secrets)")
        return res


def _one_secret(ctx: Context, secret_id: str, listed: list[str]) -> list[CheckResult]:
    out: list[CheckResult] = []
    seen: dict[str, dict[str, Any]] = {}
    for region in listed:
        meta = _describe(ctx, secret_id, region)
        if isinstance(meta, CheckResult):
            out.append(meta)
            continue
        seen[region] = meta
        out.append(_listed_copy(ctx, secret_id, region, meta))
    # regions the runbook does not list: a replica of a listed copy must be there
    for region in (r.name for r in ctx.runbook.regions if r.name not in listed):
        out.append(_replica_copy(ctx, secret_id, region, seen))
    return out


def _listed_copy(ctx: Context, secret_id: str, region: str,
                 meta: dict[str, Any]) -> CheckResult:
    target = f"{secret_id} in {region}"
    ctx.learn("secret_arn", meta.get("ARN"))
    if meta.get("DeletedDate"):
        return failed(CHECK, target, f"scheduled for deletion ({meta['DeletedDate']})",
                      "restore it (RestoreSecret) or remove it from the runbook")
    primary = meta.get("PrimaryRegion")
    if primary and primary != ctx.aws_region(region):
        return failed(CHECK, target, f"this copy is a read-only replica of {primary}'s: "
                      "the failover's PutSecretValue here would be refused",
                      f"list only the primary copy ({ctx.region_of_aws(primary)}) in the "
                      "runbook's secrets; Secrets Manager copies it over")
    pending = [v for v, stages in (meta.get("VersionIdsToStages") or {}).items()
               if "AWSPENDING" in stages and "AWSCURRENT" not in stages]
    if pending:
        return failed(CHECK, target, f"a rotation is in flight (version {pending[0]} is "
                      "AWSPENDING): its last step would make that version current, "
                      "undoing the endpoint a failover writes",
                      "let the rotation finish, or cancel it (CancelRotateSecret) and "
                      "remove the AWSPENDING label, before relying on a failover")
    bad = [r for r in meta.get("ReplicationStatus") or []
           if r.get("Status") != "InSync"]
    if bad:
        r = bad[0]
        return failed(CHECK, target, f"replication to {r.get('Region')} is "
                      f"{r.get('Status')} ({r.get('StatusMessage') or 'no message'}): that "
                      "region's copy does not follow this one",
                      "fix the replica (ReplicateSecretToRegions with "
                      "ForceOverwriteReplicaSecret) or recreate it")
    notes = []
    if meta.get("RotationEnabled"):
        notes.append(f"rotation enabled, next {meta.get('NextRotationDate') or 'unknown'}")
    replicas = [r.get("Region") for r in meta.get("ReplicationStatus") or []]
    if replicas:
        notes.append(f"replicated in sync to {', '.join(map(str, replicas))}")
    return passed(CHECK, target, "exists, no rotation in flight"
                  + (f" ({'; '.join(notes)})" if notes else ""))


def _replica_copy(ctx: Context, secret_id: str, region: str,
                  seen: dict[str, dict[str, Any]]) -> CheckResult:
    target = f"{secret_id} in {region}"
    aws_region = ctx.aws_region(region)
    replicated_to = {str(r.get("Region")) for meta in seen.values()
                     for r in meta.get("ReplicationStatus") or []}
    if seen and aws_region not in replicated_to:
        return failed(CHECK, target, f"the runbook lists no copy in {region} and the "
                      f"secret is not replicated to {aws_region}: applications there "
                      "cannot read it", f"replicate it to {aws_region} "
                      "(terraform/modules/secrets, replicate = true) or list and create "
                      f"a copy in {region}")
    meta = _describe(ctx, secret_id, region)
    if isinstance(meta, CheckResult):
        return meta
    if not meta.get("PrimaryRegion"):
        return failed(CHECK, target, f"{region} has its own secret {secret_id}, not a "
                      "replica, and the runbook does not list it: a failover would leave "
                      "it pointing at the old primary", "list it in the runbook's secrets")
    return passed(CHECK, target, f"a replica of {meta['PrimaryRegion']}'s copy, in sync")
