"""Prove the new primary takes writes through the rewritten secret: connect with
the secret's own credentials, write a canary row, read it back."""

from __future__ import annotations

from pathlib import Path
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
        except (pg.psycopg.Error, pg.CommitNotAcknowledged) as exc:
            raise StepFailed(f"canary write through secret {spec.secret_id} failed: "
                             f"{str(exc).strip().splitlines()[0]}",
                             {"host": host, "port": port}) from exc
        return {"secret_id": spec.secret_id, "host": host, "port": port, "user": user}


class RunFlows(Step):
    """The runbook's user journeys (login, checkout, email...) against whatever the
    authoritative DNS now answers; every flow's evidence goes to the journal."""

    stage = "validate"

    def describe(self, ctx: StepContext) -> str:
        names = [f.name for f in ctx.runbook.validation.flows] if ctx.runbook.validation else []
        return f"run flows {names} in {ctx.to_region} (deadline and retries per flow)"

    def check(self, ctx: StepContext) -> bool:
        return False  # always proven again: flows are read-mostly and idempotent enough

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        from drorch.validate import HttpxTransport, lab_check_runners, run_flows

        spec = ctx.runbook.validation
        assert spec is not None

        def query(database: str, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            dsn = ctx.runbook.database(database).endpoints[ctx.to_region].dsn()
            with pg.connect(dsn, 5000) as c:
                return list(c.execute(sql, params).fetchall())

        with HttpxTransport() as http:
            results = run_flows(spec.flows, http=http, resolve=_resolver(ctx),
                                # a relative mailbox store is under the state directory
                                checks=lab_check_runners(query, Path(ctx.runbook.state_dir)),
                                variables=spec.variables)
        flows = [r.to_dict() for r in results]
        ctx.facts.set("flows", flows)
        failed = [f for f in flows if not f["ok"]]
        if failed:
            raise StepFailed(f"flow(s) {[f['name'] for f in failed]} failed: "
                             f"{failed[0].get('error')}", {"flows": flows})
        return {"flows": [{"name": f["name"], "ok": f["ok"], "attempts": f["attempts"],
                           "duration_s": f["duration_s"]} for f in flows]}


def _resolver(ctx: StepContext) -> Any:
    """Resolve names through the runbook's authoritative servers, as users will."""
    dns_spec = ctx.runbook.dns
    if dns_spec is None or not dns_spec.nameservers:
        return None
    from drorch.adapters import dns as dnsq

    nameserver = dns_spec.nameservers[0]

    def resolve(host: str) -> str:
        answers, _ = dnsq.answers(nameserver, host if host.endswith(".") else host + ".")
        if not answers:
            raise LookupError(f"{host}: no answer from {nameserver}")
        return sorted(answers)[0]

    return resolve
