"""Point each connection secret at the new primary: one new version, the old kept
as AWSPREVIOUS. Idempotent twice over: ``check`` compares the current value, and
the version token is derived from the incident, so a retried call after a kill
is the same version, not a second one.
"""

from __future__ import annotations

import uuid
from typing import Any

from drorch.adapters import aurora, rds, secrets
from drorch.steps.base import Step, StepContext, StepFailed


def secret_target(secret_id: str, region: str) -> str:
    return f"{secret_id}@{region}"


class RewriteSecret(Step):
    stage = "secrets"
    api = "Secrets Manager"
    _seen: tuple[dict[str, Any], str] | None = None

    def _spec(self, ctx: StepContext) -> Any:
        secret_id, _, region = self.target.rpartition("@")
        return next(s for s in ctx.runbook.secrets
                    if s.secret_id == secret_id and s.region == region)

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("secretsmanager", ctx.aws_region(self._spec(ctx).region))

    def api_region(self, ctx: StepContext) -> str | None:
        return str(self._spec(ctx).region)

    def _wanted(self, ctx: StepContext) -> tuple[str, int]:
        """Where the secret must point: the runbook's endpoint in the region we move to,
        or for kind rds (aurora-global) the endpoint AWS describes for the promoted
        instance (the cluster's writer endpoint), journaled once, so a resumed step
        writes the same value."""
        db = ctx.runbook.database(self._spec(ctx).database)
        ep = db.endpoints[ctx.to_region]
        if db.kind not in ("rds", "aurora-global"):
            return ep.host, ep.port
        key = f"rds:{db.name}:{ctx.to_region}:endpoint"
        known = ctx.facts.get(key)
        if known is None:
            known = list(self._described_endpoint(ctx, db, ep))
            ctx.facts.set(key, known)
        return str(known[0]), int(known[1])

    def _described_endpoint(self, ctx: StepContext, db: Any, ep: Any) -> tuple[str, int]:
        """The endpoint AWS describes now: the instance's (rds) or the regional
        cluster's writer endpoint (aurora-global). Raises StepFailed when there is none."""
        client = ctx.aws("rds", ctx.aws_region(ctx.to_region))
        try:
            if db.kind == "aurora-global":
                cluster = aurora.describe_cluster(client, str(ep.cluster_id))
                address, port, what = cluster.endpoint, cluster.port, "Aurora describes no writer"
                name, status = ep.cluster_id, cluster.status
            else:
                inst = rds.describe(client, str(ep.instance_id))
                address, port, what = inst.address, inst.port, "RDS describes no"
                name, status = ep.instance_id, inst.status
        except (aurora.AuroraError, rds.RdsError) as exc:
            raise StepFailed(f"secret {self.target}: {exc}") from exc
        if not address or port is None:
            raise StepFailed(f"secret {self.target}: {what} endpoint for {name} in "
                             f"{ctx.to_region} (status {status})")
        return address, port

    def describe(self, ctx: StepContext) -> str:
        spec = self._spec(ctx)
        db = ctx.runbook.database(spec.database)
        if db.kind in ("rds", "aurora-global"):
            ep = db.endpoints[ctx.to_region]
            return (f"rewrite secret {spec.secret_id} in {spec.region} to the endpoint "
                    f"AWS describes for {ep.instance_id or ep.cluster_id} in "
                    f"{ctx.to_region}")
        host, port = self._wanted(ctx)
        return f"rewrite secret {spec.secret_id} in {spec.region} to {host}:{port}"

    def check(self, ctx: StepContext) -> bool:
        spec = self._spec(ctx)
        value, version = secrets.get_with_version(self._client(ctx), spec.secret_id)
        self._seen = (value, version)  # ``apply`` follows at once: no second read
        host, port = self._wanted(ctx)
        return value.get(spec.host_key) == host and int(value.get(spec.port_key, 0)) == port

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        spec = self._spec(ctx)
        client = self._client(ctx)
        seen, self._seen = self._seen, None
        value, previous = seen or secrets.get_with_version(client, spec.secret_id)
        host, port = self._wanted(ctx)
        value = {**value, spec.host_key: host, spec.port_key: port}
        token = str(uuid.uuid5(uuid.NAMESPACE_URL, f"drorch:{ctx.incident_id}:{self.id}"))
        version = secrets.put_value(client, spec.secret_id, value, token)
        return {"secret_id": spec.secret_id, "region": spec.region, "host": host, "port": port,
                "version_id": version, "previous_version_id": previous}
