"""Prove the new primary takes writes through the rewritten secret: connect with
the secret's own credentials, write a canary row, read it back."""

from __future__ import annotations

from typing import Any

from drorch.adapters import postgres as pg
from drorch.adapters import secrets
from drorch.steps.base import Step, StepContext, StepFailed


class CanaryWrite(Step):
    stage = "validate"

    def describe(self, ctx: StepContext) -> str:
        return f"write and read back a canary row in {self.target} through its secret"

    def check(self, ctx: StepContext) -> bool:
        return False  # validation always runs; it is idempotent (upsert of one marker)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        db = ctx.runbook.database(self.target)
        specs = [s for s in ctx.runbook.secrets if s.database == self.target]
        spec = next((s for s in specs if s.region == ctx.to_region), specs[0] if specs else None)
        admin = db.endpoints[ctx.to_region].dsn()
        if spec is None:
            pg.canary_write(admin, ctx.incident_id)
            return {"through": "admin endpoint (no secret configured)"}
        value = secrets.get_value(ctx.aws("secretsmanager", ctx.aws_region(spec.region)),
                                  spec.secret_id)
        user = str(value.get("username", db.endpoints[ctx.to_region].user))
        pg.ensure_canary(admin, user)
        host, port = value.get(spec.host_key), value.get(spec.port_key)
        try:
            pg.canary_write(secrets.dsn_from_secret(value), ctx.incident_id)
        except pg.psycopg.Error as exc:
            raise StepFailed(f"canary write through secret {spec.secret_id} failed: "
                             f"{str(exc).strip().splitlines()[0]}",
                             {"host": host, "port": port}) from exc
        return {"secret_id": spec.secret_id, "host": host, "port": port, "user": user}
