"""Which steps, in which stages, a failover runs: derived from the runbook alone.

A stage's steps run at once; stages run in order. Several database pairs are
frozen, promoted and validated in parallel.
"""

from __future__ import annotations

from drorch.config import Runbook
from drorch.steps.base import Stage
from drorch.steps.dns import FlipDns
from drorch.steps.freeze import FreezeDatabase, LowerWriteFlag, RaiseWriteFlag
from drorch.steps.promote import OpenWrites, PromoteDatabase
from drorch.steps.secrets import RewriteSecret, secret_target
from drorch.steps.validate import CanaryWrite, RunFlows


def failover_plan(runbook: Runbook, from_region: str, to_region: str) -> list[Stage]:
    dbs = [d.name for d in runbook.databases]
    freeze = []
    if runbook.write_flag:
        freeze.append(RaiseWriteFlag(from_region))
    freeze += [FreezeDatabase(d) for d in dbs]
    opened = [OpenWrites(d) for d in dbs]
    if runbook.write_flag:
        opened.append(LowerWriteFlag(to_region))
    stages = [
        Stage("freeze", tuple(freeze)),
        Stage("promote", tuple(PromoteDatabase(d) for d in dbs)),
        Stage("open", tuple(opened)),
        Stage("secrets", tuple(RewriteSecret(secret_target(s.secret_id, s.region))
                               for s in runbook.secrets)),
    ]
    if runbook.dns:
        stages.append(Stage("dns", (FlipDns(runbook.dns.zone),)))
    validate: list = [CanaryWrite(d) for d in dbs]
    if runbook.validation and runbook.validation.flows:
        validate.append(RunFlows("flows"))
    stages.append(Stage("validate", tuple(validate)))
    return [s for s in stages if s.steps]
