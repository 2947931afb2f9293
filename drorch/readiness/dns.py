"""The Route 53 side of a failover: the zone, each weighted record's set identifier per
region, the health checks those records and the runbook's probes name, and a TTL the
RTO target leaves room for.

TTL: resolvers may keep answering with the old region for up to the record's TTL after
the flip (RFC 1035 section 3.2.1; Route 53 does not shorten it), so it is spent from
the RTO budget after everything else: a TTL longer than the whole target cannot meet
it (fail), one longer than half of it leaves too little for detection, freeze,
promotion and validation (warn). Alias records have no TTL of their own (pass).
"""

from __future__ import annotations

from drorch.adapters import readiness_aws as ra
from drorch.adapters import route53 as r53
from drorch.readiness.context import Context, aws_problem, not_configured
from drorch.readiness.result import CheckResult, failed, passed, skipped, warned

RECORDS = "dns.records"
HEALTH_CHECKS = "dns.health_checks"
TTL = "dns.ttl"
ROUTE53_REGION = "us-east-1"
"""Route 53's control plane is global; boto3 signs for us-east-1."""


def check(ctx: Context) -> list[CheckResult]:
    dns = ctx.runbook.dns
    if dns is None:
        return [not_configured(RECORDS, "DNS records (dns)")]
    client = ctx.aws("route53", ROUTE53_REGION)
    try:
        zone = r53.zone_id(client, dns.zone)
    except LookupError:
        return [failed(RECORDS, dns.zone, f"hosted zone {dns.zone} not found",
                       "create it (terraform/modules/route53-failover) or correct dns.zone")]
    except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
        return [aws_problem(ctx, RECORDS, dns.zone, "Route 53", ROUTE53_REGION, exc,
                            f"hosted zone {dns.zone}")]
    ctx.learn("hosted_zone_id", zone)
    out: list[CheckResult] = []
    health_ids: dict[str, str] = {}
    for rec in dns.records:
        target = f"{rec.name} {rec.type}"
        try:
            found = {w.set_identifier: w for w in r53.weighted_records(client, zone, rec.name,
                                                                      rec.type)}
        except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
            out.append(aws_problem(ctx, RECORDS, target, "Route 53", ROUTE53_REGION, exc,
                                   f"records of {rec.name}"))
            continue
        missing = [f"{region} ({sid})" for region, sid in rec.set_identifiers.items()
                   if sid not in found]
        if missing:
            out.append(failed(RECORDS, target, "no weighted record with the set identifier "
                              f"of {', '.join(missing)}: the flip could not move traffic "
                              "there", "create the weighted records "
                              "(terraform/modules/route53-failover) or correct "
                              "dns.records[].set_identifiers"))
        else:
            weights = ", ".join(f"{region} {found[sid].weight}"
                                for region, sid in rec.set_identifiers.items())
            out.append(passed(RECORDS, target, f"weighted records for every region "
                              f"({weights})"))
        for region, sid in rec.set_identifiers.items():
            if sid in found and found[sid].raw.get("HealthCheckId"):
                health_ids[str(found[sid].raw["HealthCheckId"])] = f"{target} {region}"
        out.append(_ttl(ctx, target, [w.raw for w in found.values()]))
    for rh in (ctx.runbook.health.regions if ctx.runbook.health else []):
        for probe in rh.probes:
            if probe.kind == "route53_health_check":
                health_ids.setdefault(probe.health_check_id,
                                      f"probe {probe.name} of {rh.region}")
    out += _health_checks(ctx, client, health_ids)
    return out


def _ttl(ctx: Context, target: str, raws: list[dict]) -> CheckResult:
    ttls = [int(r["TTL"]) for r in raws if r.get("TTL") is not None]
    if not ttls:
        if raws:
            return passed(TTL, target, "alias records: no TTL of their own")
        return skipped(TTL, target, "no record to read a TTL from (see dns.records)")
    ttl = max(ttls)
    rto = ctx.runbook.targets.rto_seconds
    if rto is None:
        return passed(TTL, target, f"TTL {ttl}s (no targets.rto_seconds to judge it by)")
    if ttl > rto:
        return failed(TTL, target, f"TTL {ttl}s is longer than the whole RTO target "
                      f"({rto:g}s): clients may keep reaching the failed region after the "
                      "flip for longer than the target allows",
                      f"lower the records' TTL to at most {rto / 2:g}s (half the RTO target)")
    if ttl > rto / 2:
        return warned(TTL, target, f"TTL {ttl}s takes more than half the RTO target "
                      f"({rto:g}s), leaving {rto - ttl:g}s to detect, freeze, promote and "
                      "validate", f"lower the TTL to at most {rto / 2:g}s")
    return passed(TTL, target, f"TTL {ttl}s, within half the RTO target ({rto:g}s)")


def _health_checks(ctx: Context, client: object,
                   health_ids: dict[str, str]) -> list[CheckResult]:
    if not health_ids:
        return [skipped(HEALTH_CHECKS, "-", "no record or probe names a Route 53 health "
                        "check (weights are flipped by drorch whatever their health)")]
    out: list[CheckResult] = []
    for hc_id, used_by in health_ids.items():
        target = f"{hc_id} ({used_by})"
        ctx.learn("health_check_id", hc_id)
        try:
            found = ra.health_check(client, hc_id)
        except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
            out.append(aws_problem(ctx, HEALTH_CHECKS, target, "Route 53", ROUTE53_REGION,
                                   exc, f"health check {hc_id}"))
            continue
        if found is None:
            out.append(failed(HEALTH_CHECKS, target, f"health check {hc_id} does not exist",
                              "create it (terraform/modules/route53-failover) or correct "
                              "the record or probe that names it"))
            continue
        config = found.get("HealthCheckConfig") or {}
        what = config.get("FullyQualifiedDomainName") or config.get("IPAddress") or "?"
        if config.get("Disabled"):
            out.append(warned(HEALTH_CHECKS, target, f"health check {hc_id} ({what}) is "
                              "disabled: Route 53 reports it healthy whatever happens",
                              "enable it"))
            continue
        out.append(passed(HEALTH_CHECKS, target, f"exists ({config.get('Type', '?')} "
                          f"{what})"))
    return out
