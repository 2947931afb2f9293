"""The write flag (an SSM parameter) exists in both regions: the freeze raises it in
the old region and the open step clears it in the new one, and applications and jobs
in each region read their own region's copy. Raised in the serving region means its
writes are frozen now (a failover or drill left it so, or someone raised it)."""

from __future__ import annotations

from drorch.adapters import readiness_aws as ra
from drorch.readiness.context import Context, aws_problem, not_configured
from drorch.readiness.result import CheckResult, failed, passed, warned

CHECK = "write_flag"


def check(ctx: Context) -> list[CheckResult]:
    flag = ctx.runbook.write_flag
    if flag is None:
        return [not_configured(CHECK, "write flag (write_flag)")]
    out: list[CheckResult] = []
    for region in ctx.runbook.regions:
        target = f"{flag.parameter} in {region.name}"
        try:
            value = ra.parameter_value(ctx.aws("ssm", region.aws_region), flag.parameter)
        except Exception as exc:  # noqa: BLE001 (sorted into a verdict)
            out.append(aws_problem(ctx, CHECK, target, "SSM", region.aws_region, exc,
                                   f"parameter {flag.parameter}"))
            continue
        if value is None:
            out.append(failed(CHECK, target, f"parameter {flag.parameter} does not exist in "
                              f"{region.name}'s SSM ({region.aws_region}): applications "
                              "there cannot be told to stop writing",
                              f"create it in {region.aws_region} with value false "
                              "(terraform/modules/write-flag)"))
        elif value not in ("true", "false"):
            out.append(warned(CHECK, target, f"holds {value!r}, neither true nor false: "
                              "drorch writes only those, and what an application makes of "
                              "anything else is its own guess",
                              f"put false (or true, if writes there must stop) in "
                              f"{region.aws_region}"))
        elif value == "true" and region.name == ctx.serving:
            out.append(warned(CHECK, target, f"raised in {region.name}, which serves "
                              "writes: its applications are told not to write",
                              "lower it if no failover or drill is in hand "
                              "(`drorch status` says)"))
        else:
            out.append(passed(CHECK, target, f"exists ({value})"))
    return out
