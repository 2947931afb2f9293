"""The JSON forms of ``drorch status`` and ``drorch plan`` (and ``--dry-run``): pydantic
models, so each form has one schema (``docs/cli-json.md`` is generated from them,
``python -m drorch.docgen``) and the CLI cannot print a document its schema does not
allow (every document is validated before it is printed).

Stability as for the report: within ``schema_version`` 1 keys are only added.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlannedStep(_Out):
    id: str = Field(description="stage:target, e.g. promote:main")
    description: str = Field(description="What the step would do now")
    irreversible: bool = Field(description="Cannot be undone once requested (promotion)")


class PlannedStage(_Out):
    name: str = Field(description="freeze, promote, open, dns, validate; a failback adds "
                      "fence, reconcile, resync first and rejoin last")
    parallel: bool = Field(description="Its steps run at once")
    steps: list[PlannedStep]


class ReadinessOut(_Out):
    """One readiness verdict (``drorch plan`` only)."""

    check: str = Field(description="Which check: database.replica, database.lag, secret, "
                       "dns.records, dns.health_checks, dns.ttl, alarms, write_flag, wal, "
                       "journal, iam")
    target: str = Field(description="What it is about: a database, a secret in a region, "
                        "a record, an alarm, the caller's IAM principal; - when none")
    status: Literal["pass", "warn", "fail", "skip"] = Field(
        description="pass; warn (a failover would probably work, or a region's API did not "
        "answer: not checked); fail (a failover would fail or do harm); skip (does not "
        "apply to this runbook, or not checked, said in reason)")
    reason: str = Field(description="Why, in one sentence (never a secret value)")
    fix: str = Field(description="What to do about a warn or fail; empty on pass")


class PlanOutput(_Out):
    """``drorch plan --output json``, ``drorch failover|failback --dry-run --output json``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["failover", "failback"]
    runbook: str
    from_region: str = Field(description="Where writes are served now")
    to_region: str = Field(description="Where they would move")
    allowed: bool = Field(description="False when the run would be refused now (exit 3, "
                          "or 6 when there is nothing to do)")
    refusal: str | None = Field(description="Why it would be refused, or null")
    stages: list[PlannedStage] = Field(description="Empty when refused")
    warnings: list[str] = Field(description="WAL that would not be kept for an exact "
                                "reconciliation, a split not pinned, checks that failed; "
                                "given whether or not the run would be refused")
    notes: list[str] = Field(description="How much WAL the split's pin holds, and its bound")
    readiness: list[ReadinessOut] = Field(
        default_factory=list, description="drorch plan: every readiness check's verdict, "
        "made from the same view of who serves; empty for --dry-run")
    ready: Literal["ready", "warnings", "not_ready"] | None = Field(
        default=None, description="drorch plan: not_ready when a check failed (exit 2), "
        "warnings when one warned (exit 1), else ready (exit 0), for a run that would be "
        "allowed; null for --dry-run")


class ProbeOut(_Out):
    probe: str
    ok: bool


class RegionHealthOut(_Out):
    region: str
    role: Literal["primary", "secondary"] = Field(description="As the journal says now")
    status: str = Field(description="The watcher's last verdict: healthy, degraded, failed, "
                        "unknown (never watched)")
    progress: str = Field(description="The window's sentence")
    observed_at: float | None = Field(description="When the verdict was reached (unix s)")
    probes: list[ProbeOut]


class WatchDecisionOut(_Out):
    action: Literal["none", "wait", "refuse", "failover"]
    guard: str | None
    reason: str


class WatcherOut(_Out):
    state: str = Field(description="monitoring, failing_over, stopped, ... as last saved")
    updated_at: float | None = Field(description="The watcher's last tick (unix s)")
    age_s: float | None = Field(description="Seconds since that tick, at the status call")
    stale_after_s: float = Field(description="Older than this, a running watcher's verdict "
                                 "is stale: 3 probe intervals plus the slowest timeout, at "
                                 "least 10 s")
    stale: bool = Field(description="A watcher not stopped whose last tick is older than "
                        "stale_after_s (exit 7)")
    decision: WatchDecisionOut | None


class StepOut(_Out):
    id: str
    status: str = Field(description="As in the report's steps[].status")
    duration_s: float | None
    wait_s: float | None


class IncidentOut(_Out):
    incident_id: str
    kind: Literal["failover", "failback"]
    state: str = Field(description="Machine state (failed_over, halted, monitoring, ...)")
    actor: str
    from_region: str | None
    to_region: str | None
    rto_s: float | None
    rpo_s: float | None
    steps: list[StepOut]


class StatusOutput(_Out):
    """``drorch status --output json``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    runbook: str
    state_dir: str = Field(description="Where the journal and audit log are")
    active_region: str = Field(description="The region serving writes, from the journal")
    health: list[RegionHealthOut] = Field(description="Empty without a health section")
    watcher: WatcherOut | None = Field(description="null when no watcher ever ran")
    hold: str | None = Field(description="Why automatic failover is held now, or null")
    latest_incident: IncidentOut | None
    attention: list[str] = Field(description="What needs a human now; empty when nothing")
    exit_code: int = Field(description="The command's exit status (0, 5 halted, 7 stale)")
