"""Flip Route 53 weights to the new region in one change batch, wait INSYNC, then
check with real DNS queries that the authoritative servers answer with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from drorch.adapters import dns as dnsq
from drorch.adapters import route53
from drorch.steps.base import Step, StepContext, StepFailed


class FlipDns(Step):
    stage = "dns"

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("route53", "us-east-1")  # Route 53 is global

    def _wanted(self, ctx: StepContext) -> dict[tuple[str, str], int]:
        spec = ctx.runbook.dns
        assert spec is not None
        out = {}
        for rec in spec.records:
            name = rec.name if rec.name.endswith(".") else rec.name + "."
            out[(name, rec.set_identifiers[ctx.from_region])] = 0
            out[(name, rec.set_identifiers[ctx.to_region])] = spec.active_weight
        return out

    def _records(self, ctx: StepContext, zone: str) -> list[route53.WeightedRecord]:
        spec = ctx.runbook.dns
        assert spec is not None
        out: list[route53.WeightedRecord] = []
        for rec in spec.records:
            found = route53.weighted_records(self._client(ctx), zone, rec.name, rec.type)
            missing = set(rec.set_identifiers.values()) - {r.set_identifier for r in found}
            if missing:
                raise StepFailed(f"dns record {rec.name} {rec.type}: no weighted record with "
                                 f"set identifier(s) {sorted(missing)}")
            out += found
        return out

    def describe(self, ctx: StepContext) -> str:
        return (f"set weights in {self.target}: {ctx.from_region} 0, {ctx.to_region} "
                f"{ctx.runbook.dns.active_weight if ctx.runbook.dns else '-'}; wait INSYNC; "
                "verify answers")

    def check(self, ctx: StepContext) -> bool:
        with _route53_api(ctx):
            zone = route53.zone_id(self._client(ctx), self.target)
            wanted = self._wanted(ctx)
            have = {(r.name, r.set_identifier): r.weight for r in self._records(ctx, zone)}
        return all(have.get(k) == w for k, w in wanted.items())

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        spec = ctx.runbook.dns
        assert spec is not None
        client = self._client(ctx)
        with _route53_api(ctx):
            zone = route53.zone_id(client, self.target)
            records = self._records(ctx, zone)
            change_id = route53.change_weights(client, zone, records, self._wanted(ctx),
                                               f"drorch {ctx.incident_id}: to {ctx.to_region}")
        ctx.facts.set(f"dns:{self.target}:change", change_id)
        insync_s = route53.wait_insync(client, change_id, spec.insync_timeout_s)
        detail: dict[str, Any] = {"change_id": change_id, "insync_wait_s": round(insync_s, 4)}
        detail.update(verify_answers(ctx, records))
        detail["wait_s"] = round(insync_s + detail.get("dns_verify_s", 0.0), 4)
        return detail


@contextmanager
def _route53_api(ctx: StepContext) -> Iterator[None]:
    """Route 53's control plane (its change API) lives in one AWS region, us-east-1,
    and can fail while both of ours are fine: say so plainly, with what it means."""
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise StepFailed(
            f"Route 53's API (control plane in us-east-1) failed: {exc}. DNS still sends "
            f"clients to {ctx.from_region}; set the weights by hand ({ctx.to_region} "
            f"{ctx.runbook.dns.active_weight if ctx.runbook.dns else 100}, "
            f"{ctx.from_region} 0) or wait for the API, then `drorch resume`",
            {"route53_error": str(exc)}) from exc


def verify_answers(ctx: StepContext, records: list[route53.WeightedRecord]) -> dict[str, Any]:
    """Ask every configured authoritative server until all answers are the new
    region's values, or fail at the deadline."""
    spec = ctx.runbook.dns
    if spec is None or not spec.nameservers:
        return {"dns_verified": False, "dns_verify_note": "no nameservers configured"}
    expected: dict[str, set[str]] = {}
    for rec in spec.records:
        name = rec.name if rec.name.endswith(".") else rec.name + "."
        sid = rec.set_identifiers[ctx.to_region]
        for r in records:
            if r.name == name and r.set_identifier == sid:
                expected[name] = {v["Value"] for v in r.raw.get("ResourceRecords", [])}
    start = time.monotonic()
    last: dict[str, Any] = {}
    while True:
        ok = True
        for ns in spec.nameservers:
            for name, want in expected.items():
                got, ttl = dnsq.answers(ns, name)
                last[f"{ns} {name}"] = {"answers": sorted(got), "ttl": ttl}
                ok &= bool(got) and got <= want
        if ok:
            return {"dns_verified": True, "dns_verify_s": round(time.monotonic() - start, 4),
                    "dns_answers": last}
        if time.monotonic() - start > spec.verify_timeout_s:
            raise StepFailed(f"DNS answers did not move to {ctx.to_region} within "
                             f"{spec.verify_timeout_s:.0f}s", {"dns_answers": last})
        time.sleep(0.05)
