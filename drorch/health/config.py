"""What the runbook says about health: probes per region, the failure window, the guards.

These models are meant to be embedded in the runbook model (``drorch.config``) and
validated once at start; nothing in ``drorch.health`` reads global configuration.
All models are frozen and reject unknown keys, so a typo in a runbook is an error,
not a silently ignored setting.

Secrets: a PostgreSQL probe may carry a password inside ``dsn``; the field is kept
out of ``repr`` and probe errors are redacted, but prefer ``password_env``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drorch.unique import require_unique


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _ProbeBase(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    timeout_s: float = Field(default=2.0, gt=0, le=120)


class HttpProbe(_ProbeBase):
    """GET ``url``; healthy when the status is ``expect_status`` and, if set, the body
    contains ``body_contains``. Redirects are not followed; proxies from the
    environment are not used (the probe measures the endpoint, not a proxy)."""

    kind: Literal["http"] = "http"
    url: str = Field(pattern=r"^https?://")
    expect_status: int = Field(default=200, ge=100, le=599)
    body_contains: str | None = None


class TcpProbe(_ProbeBase):
    """Healthy when a TCP connection to ``host:port`` opens within the timeout."""

    kind: Literal["tcp"] = "tcp"
    host: str
    port: int = Field(ge=1, le=65535)


class PostgresProbe(_ProbeBase):
    """``SELECT 1`` bounded by ``connect_timeout``, ``tcp_user_timeout`` and
    ``statement_timeout`` together (FINDINGS: only all three bound a hung server).

    Give either ``dsn`` or ``host`` (+ port/dbname/user, password from ``password_env``).
    """

    kind: Literal["postgres"] = "postgres"
    dsn: str | None = Field(default=None, repr=False)
    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    dbname: str = "postgres"
    user: str = "postgres"
    password_env: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PostgresProbe:
        if (self.dsn is None) == (self.host is None):
            raise ValueError("postgres probe: give exactly one of 'dsn' or 'host'")
        return self


class Route53HealthCheckProbe(_ProbeBase):
    """Healthy when at least ``min_healthy_share`` of Route 53's checkers report success.

    ``aws_region`` picks the client's region (Route 53 is global; default us-east-1).
    """

    kind: Literal["route53_health_check"] = "route53_health_check"
    health_check_id: str = Field(min_length=1)
    min_healthy_share: float = Field(default=0.5, gt=0, le=1)
    aws_region: str | None = None


class CloudWatchAlarmProbe(_ProbeBase):
    """Unhealthy while the alarm is in ``ALARM`` (and, if asked, ``INSUFFICIENT_DATA``,
    which is what a metric that stopped arriving usually produces)."""

    kind: Literal["cloudwatch_alarm"] = "cloudwatch_alarm"
    alarm_name: str = Field(min_length=1)
    aws_region: str | None = None
    insufficient_data_is_failure: bool = False


ProbeSpec = Annotated[
    HttpProbe | TcpProbe | PostgresProbe | Route53HealthCheckProbe | CloudWatchAlarmProbe,
    Field(discriminator="kind"),
]


class RegionHealth(_Model):
    """How one region is judged.

    The region is *failing* in a round when at least ``quorum`` of its probes fail,
    and *failed* once it has been failing continuously for ``fail_after_s`` (the
    runbook's N minutes, in seconds so the lab can use a few seconds). A failing
    streak ends after ``healthy_rounds_to_reset`` consecutive healthy rounds.
    ``suspect_interval_s`` is the probe interval while an alarm is firing or the
    region is degraded (default: half of ``interval_s``).
    """

    region: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    aws_region: str | None = None
    probes: list[ProbeSpec] = Field(min_length=1)
    quorum: int = Field(ge=1)
    fail_after_s: float = Field(gt=0)
    interval_s: float = Field(gt=0)
    healthy_rounds_to_reset: int = Field(default=1, ge=1)
    suspect_interval_s: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> RegionHealth:
        require_unique([p.name for p in self.probes], "probe name", ("probes",))
        if self.quorum > len(self.probes):
            raise ValueError(
                f"region {self.region!r}: quorum {self.quorum} is more than the "
                f"{len(self.probes)} probe(s) configured"
            )
        if self.fail_after_s < self.interval_s:
            raise ValueError(
                f"region {self.region!r}: fail_after_s ({self.fail_after_s}) must be at "
                f"least one probe interval ({self.interval_s})"
            )
        if self.suspect_interval_s is not None and self.suspect_interval_s > self.interval_s:
            raise ValueError(f"region {self.region!r}: suspect_interval_s exceeds interval_s")
        return self

    @property
    def effective_suspect_interval_s(self) -> float:
        return self.suspect_interval_s if self.suspect_interval_s else self.interval_s / 2

    @property
    def max_timeout_s(self) -> float:
        return max(p.timeout_s for p in self.probes)

    @property
    def max_gap_s(self) -> float:
        """Observations further apart than this break a failing streak (continuity unknown)."""
        return 3 * self.interval_s + self.max_timeout_s

    @property
    def lag_reading_max_age_s(self) -> float:
        """How long before the failing count began a replica-lag reading may be and still
        stand in for a primary that can no longer answer: two probe rounds, each given its
        interval plus its slowest probe's timeout (a round in which the server is shutting
        down, its port still open, comes between the last reading and the count; a busy
        watcher's rounds run late by up to a timeout)."""
        return 2 * (self.interval_s + self.max_timeout_s)


class HealthPolicy(_Model):
    """Region health settings plus the rules for acting on them.

    Alarms reach a region by, in order: ``alarm_regions`` (alarm name -> region),
    a ``cloudwatch_alarm`` probe of that region naming the alarm, or the AWS
    region in the alarm's ARN matching a region's ``aws_region``.

    ``recovery_period_s``: after a completed failover the watcher starts no other
    failover by itself for this long (counted from the failover's completion) *and*
    not before a human has run ``drorch ack INCIDENT``: a region that just failed
    over is often still unsettled, and a second automatic move is a decision a
    person should have seen coming. A human ``drorch failover`` is not held.
    """

    regions: list[RegionHealth] = Field(default_factory=list)
    alarm_queue_url: str | None = None
    alarm_may_trigger_alone: bool = False
    alarm_regions: dict[str, str] = Field(default_factory=dict)
    max_replica_lag_bytes: int | None = Field(default=None, ge=0)
    refuse_on_unknown_lag: bool = True
    recovery_period_s: float = Field(default=3600.0, ge=0)

    @model_validator(mode="after")
    def _references(self) -> HealthPolicy:
        names = [r.region for r in self.regions]
        require_unique(names, "health region", ("regions",), field="region")
        if self.regions:
            unknown = sorted(set(self.alarm_regions.values()) - set(names))
            if unknown:
                raise ValueError(f"health.alarm_regions: unknown region(s) {unknown}")
        return self

    def region(self, name: str) -> RegionHealth:
        for r in self.regions:
            if r.region == name:
                return r
        raise KeyError(name)
