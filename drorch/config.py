"""The runbook: a pydantic model of what drorch may do, validated once at start.

A malformed runbook must never reach a step. ``load_runbook`` turns every
problem (bad YAML, wrong type, missing field, unknown key, a reference to a
region or database that does not exist) into one ``RunbookError`` whose message
names the file, the line when known, the field path and what is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from drorch.health.config import HealthPolicy, RegionHealth
from drorch.reconcile.config import ReconcileSpec
from drorch.runbook_file import (
    MAX_SHOWN,
    Problem,
    RunbookError,
    expand_env,
    read_runbook_file,
    runbook_error,
)
from drorch.state_dir import resolve_state_dir
from drorch.unique import DuplicateName, require_unique
from drorch.validate.spec import FlowSpec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Region(_Model):
    """One of the two regions."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$",
                      description="drorch's name for it (lower case, digits, dashes)")
    aws_region: str = Field(description="Its AWS region, e.g. us-east-1")
    role: Literal["primary", "secondary"] = Field(
        description="Which one serves writes before any failover (exactly one primary); "
        "afterwards the journal says which serves")


class LocalNode(_Model):
    """A PostgreSQL cluster on the host drorch runs on: the failback stops, starts and
    rewrites it with ``pg_ctl`` and ``pg_rewind``, as its data directory's owner."""

    data_directory: str = Field(description="The cluster's data directory (PGDATA) on this "
                                "host; symbolic links are followed, and a relative path is "
                                "taken from the runbook's state directory.")
    log_file: str | None = Field(default=None, description="Where pg_ctl writes the server's "
                                 "log when drorch starts it; default: NAME-REGION.log beside "
                                 "the data directory.")
    pg_bin: str | None = Field(default=None, description="PostgreSQL's bin directory "
                               "(pg_ctl, pg_rewind); default $DRORCH_PG_BIN or "
                               "/usr/lib/postgresql/15/bin.")


class Endpoint(_Model):
    """Where a database listens in one region. The password is never here: it lives
    in the connection secret or the environment (``password_env``)."""

    host: str = Field(description="Host name or address drorch connects to")
    port: int = Field(ge=1, le=65535, description="PostgreSQL port")
    dbname: str = Field(default="postgres", description="Database to connect to")
    user: str = Field(default="postgres", description="Role drorch connects as (see the "
                      "README for what it must be allowed)")
    password_env: str | None = Field(default=None, description="Environment variable "
                                     "holding that role's password (libpq's PGPASSWORD, "
                                     ".pgpass or a client certificate work too)")
    node: LocalNode | None = Field(
        default=None, description="Control of this node (kind postgres): needed by the "
        "failback to fence, keep evidence of and rebuild the old primary. Without it drorch "
        "says which operation it cannot do.")
    instance_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z][A-Za-z0-9-]{0,62}$",
        description="kind rds: the DB instance identifier in this region (the primary "
        "instance, or the cross-region read replica). host and port stay what drorch "
        "connects to for the freeze and the RPO; the secret gets the endpoint RDS "
        "describes after promotion.")
    fence_security_group_ids: list[str] = Field(
        default_factory=list,
        description="kind rds, failback: the VPC security groups the old primary is put in "
        "to fence it (groups that admit no application: its network path closed), as well "
        "as the SQL lockout. Empty: the SQL lockout alone, and the report says so.")
    cluster_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z][A-Za-z0-9-]{0,62}$",
        description="kind aurora-global: the regional DB cluster identifier in this region "
        "(a member of the global cluster). The secret gets that cluster's writer endpoint "
        "as Aurora describes it.")

    def dsn(self, dbname: str | None = None, **extra: Any) -> str:
        parts = {
            "host": self.host,
            "port": str(self.port),
            "dbname": dbname or self.dbname,
            "user": self.user,
            "connect_timeout": "2",  # libpq's floor; a hung region must not stall a step
            "tcp_user_timeout": "2000",
            **{k: str(v) for k, v in extra.items()},
        }
        if self.password_env and os.environ.get(self.password_env):
            parts["password"] = os.environ[self.password_env]
        return " ".join(f"{k}={v}" for k, v in parts.items())


class DatabasePair(_Model):
    """A PostgreSQL primary in one region and its streaming replica in the other."""

    name: str = Field(description="drorch's name for the pair (steps are named after it)")
    kind: Literal["postgres", "rds", "aurora-global"] = Field(
        default="postgres", description="postgres: self-managed (promotion over SQL); rds: "
        "RDS for PostgreSQL with a cross-region read replica (promotion through the RDS "
        "API, PromoteReadReplica); aurora-global: Aurora PostgreSQL Global Database "
        "(switchover when the old primary answers and has nothing unreplicated, else "
        "managed failover or detach-and-promote, as aurora_unplanned says).")
    global_cluster_id: str | None = Field(
        default=None, description="kind aurora-global: the global cluster's identifier.")
    aurora_unplanned: Literal["failover", "detach"] = Field(
        default="failover", description="kind aurora-global, when the old primary does not "
        "answer: failover (FailoverGlobalCluster with AllowDataLoss) or detach "
        "(RemoveFromGlobalCluster: the secondary becomes a standalone writable cluster; "
        "for accounts or engine versions where managed failover is not allowed).")
    endpoints: dict[str, Endpoint] = Field(description="Per region name, where its node "
                                           "listens (exactly the runbook's regions)")
    app_roles: list[str] = Field(default_factory=list, description="The applications' "
                                 "roles: the freeze sets them NOLOGIN on the old primary "
                                 "and ends their sessions; the open step lets them in again")
    replication_role: str = Field(default="postgres", description="Role the replica "
                                  "streams with (a failback's rebuilt node uses it)")
    max_lag_bytes: int | None = Field(
        default=None, ge=0,
        description="Deprecated and read by nothing (accepted so older runbooks load): the "
        "lag guard is health.max_replica_lag_bytes.")
    promote_timeout_s: float = Field(default=60, gt=0, description="A promotion not "
                                     "confirmed within this halts (never rolls back)")
    freeze_others_wait_s: float = Field(
        default=0, ge=0, le=600,
        description="The freeze ends every client session on the node it freezes, not only "
        "the app_roles' (any of them could commit after the barrier): their open write "
        "transactions get this long to finish first; 0 ends them at once.")
    resync_timeout_s: float = Field(default=300, gt=0, description="Failback: how long the "
                                    "rewound or rebuilt old primary may take to stream again "
                                    "(kind rds: each snapshot and each new cross-region read "
                                    "replica to become available and catch up)")
    reconcile: ReconcileSpec | None = Field(default=None, description="Failback: how the "
                                            "old primary's divergent writes come back")
    split_wal_max_mb: int | None = Field(
        default=None, ge=1,
        description="After an unplanned promotion drorch keeps the new primary's WAL from "
        "the split (a slot) until the failback reads it. PostgreSQL keeps it without limit "
        "unless max_slot_wal_keep_size is set: set this to have drorch set that cap "
        "(server-wide, restored after the failback) so a long wait for failback cannot "
        "fill the disk of the only primary; past it the WAL is dropped and rows only the "
        "new primary changed are attributed by commit time or go to a human.")
    sequence_gap: int = Field(
        default=1_000_000, ge=0,
        description="After a promotion that could not wait for the old primary (it may "
        "have written past the split), every ascending sequence of the promoted database "
        "skips this many values, so the new primary's keys do not collide with the ones "
        "the old primary handed out; 0 turns it off.")


    @model_validator(mode="after")
    def _kind_fits_endpoints(self) -> DatabasePair:
        if self.kind == "aurora-global" and not self.global_cluster_id:
            raise ValueError("global_cluster_id: kind aurora-global needs the global "
                             "cluster's identifier")
        if self.kind != "aurora-global" and self.global_cluster_id:
            raise ValueError("global_cluster_id: only kind aurora-global has one")
        for region, ep in self.endpoints.items():
            if self.kind == "aurora-global" and not ep.cluster_id:
                raise ValueError(f"endpoints.{region}.cluster_id: kind aurora-global needs "
                                 "the regional cluster's identifier in every region")
            if self.kind != "aurora-global" and ep.cluster_id:
                raise ValueError(f"endpoints.{region}.cluster_id: only kind aurora-global "
                                 "names a DB cluster")
            if self.kind == "aurora-global" and ep.node is not None:
                raise ValueError(f"endpoints.{region}.node: kind aurora-global has no host "
                                 "to control (Aurora manages the nodes)")
            if self.kind == "rds" and not ep.instance_id:
                raise ValueError(f"endpoints.{region}.instance_id: kind rds needs the DB "
                                 "instance identifier in every region")
            if self.kind == "rds" and ep.node is not None:
                raise ValueError(f"endpoints.{region}.node: kind rds has no host to control "
                                 "(RDS manages the node)")
            if self.kind != "rds" and ep.fence_security_group_ids:
                raise ValueError(f"endpoints.{region}.fence_security_group_ids: only kind rds "
                                 "is fenced by security group")
            if self.kind == "postgres" and ep.instance_id:
                raise ValueError(f"endpoints.{region}.instance_id: only kind rds names a DB "
                                 "instance")
        return self


class ConnectionSecret(_Model):
    """A Secrets Manager secret (a JSON object) the applications read to connect: a
    failover writes a new version pointing at the new primary (the old one stays as
    AWSPREVIOUS). Its password is never read into drorch's logs or reports."""

    secret_id: str = Field(description="Secret name or ARN")
    region: str = Field(description="Which region's copy (a runbook region name)")
    database: str = Field(description="The database pair it points at")
    host_key: str = Field(default="host", description="Key of the host in the JSON")
    port_key: str = Field(default="port", description="Key of the port in the JSON")


class DnsRecord(_Model):
    """A weighted Route 53 record set: one record per region."""

    name: str = Field(description="Fully qualified name, with the trailing dot")
    type: Literal["A", "AAAA", "CNAME"] = Field(default="A", description="Record type")
    set_identifiers: dict[str, str] = Field(description="Per region name, the "
                                            "SetIdentifier of its weighted record")

    @model_validator(mode="after")
    def _distinct_identifiers(self) -> DnsRecord:
        """Two regions on one set identifier would be one record: the flip could not
        move weight from one region to the other."""
        require_unique(list(self.set_identifiers.values()), "set identifier",
                       ("set_identifiers",), field=None, keys=list(self.set_identifiers))
        return self


class Dns(_Model):
    """The Route 53 flip: one change batch (old region 0, new region
    ``active_weight``), wait INSYNC, then ask the authoritative servers."""

    zone: str = Field(description="Hosted zone name, with the trailing dot")
    records: list[DnsRecord] = Field(description="The weighted records to flip")
    active_weight: int = Field(default=100, ge=0, le=255, description="Weight of the "
                               "serving region's records")
    insync_timeout_s: float = Field(default=120, gt=0, description="How long the change "
                                    "may take to be INSYNC")
    nameservers: list[str] = Field(
        default_factory=list,
        description="host:port of authoritative servers the DNS step queries after the flip",
    )
    verify_timeout_s: float = Field(default=60, gt=0, description="How long the "
                                    "nameservers may take to answer with the new region")

    @model_validator(mode="after")
    def _unique_records(self) -> Dns:
        require_unique([(r.name, r.type) for r in self.records], "dns record (name, type)",
                       ("records",))
        return self


class WriteFlag(_Model):
    """An SSM parameter per region that applications and jobs honour."""

    parameter: str = Field(description="SSM parameter name, in each region's SSM")


class Validation(_Model):
    """Flows that must pass in the new region before a failover is done.
    ``variables`` are templates' inputs; keep passwords out (use ``${ENV}``)."""

    variables: dict[str, str] = Field(default_factory=dict, description="Values the "
                                      "flows' templates use ({user}, {password})")
    flows: list[FlowSpec] = Field(default_factory=list, description="User journeys that "
                                  "must pass in the new region before a failover is done")

    @model_validator(mode="after")
    def _variables_defined(self) -> Validation:
        require_unique([f.name for f in self.flows], "flow name", ("flows",))
        for flow in self.flows:
            missing = flow.missing_variables(set(self.variables))
            if missing:
                raise ValueError(f"flow {flow.name!r} uses undefined variables {sorted(missing)}")
        return self


class LabPorts(_Model):
    """Only for the local lab: where its extra services listen."""

    app_port: int = Field(ge=1, le=65535, description="The lab's sample app (one per "
                          "region, on 127.0.1.1 and 127.0.2.1)")
    dns_port: int = Field(ge=1, le=65535, description="The lab's authoritative DNS server")
    smtp_port: int = Field(ge=1, le=65535, description="The lab's SMTP sink")


class Targets(_Model):
    """What the business agreed to; reports say met or MISSED."""

    rpo_seconds: float | None = Field(default=None, ge=0, description="Most data loss, in "
                                      "seconds of commits")
    rto_seconds: float | None = Field(default=None, ge=0, description="Longest time from "
                                      "the first failure to the flows passing again")


class Aws(_Model):
    """How drorch reaches AWS. Credentials come from boto3's usual chain (environment,
    shared config, instance or task role), never from the runbook."""

    endpoint_url: str | None = Field(default=None, description="Another endpoint for every "
                                     "service (the lab's moto); null: AWS itself")
    # Per AWS region, for regional services (SSM, Secrets Manager, SQS): one region's API
    # can then fail on its own (the lab puts a proxy per region here). Route 53 is global
    # and keeps ``endpoint_url``.
    region_endpoints: dict[str, str] = Field(
        default_factory=dict, description="Per AWS region, an endpoint for its regional "
        "services (SSM, Secrets Manager, SQS)")
    # A step aimed at the failed region (its write flag, its copy of a secret) gets this
    # long before it is deferred: that region's API may be down or hanging, and the
    # failover must not wait on it.
    failed_region_deadline_s: float = Field(
        default=5.0, gt=0, le=300, description="How long a step aimed at the failed "
        "region's API may take before it is deferred")


class AuditArchive(_Model):
    """Where ``drorch audit ship`` copies the audit log and the incident reports: an S3
    bucket with Object Lock (``terraform/modules/audit-bucket``)."""

    url: str = Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$",
                     description="s3://BUCKET[/PREFIX]: the archive's root")
    aws_region: str | None = Field(default=None, description="The bucket's AWS region; "
                                   "default: the primary region's")
    retention_days: int = Field(ge=1, le=36500, description="Every shipped object is kept "
                                "under COMPLIANCE retention this many days from its shipping "
                                "(nobody, root included, can delete or overwrite it before)")


class AuditSettings(_Model):
    """The audit log's archive (the log itself is always ``<state_dir>/audit.jsonl``)."""

    archive: AuditArchive | None = Field(default=None, description="Where `drorch audit "
                                         "ship` copies it; none: shipping needs --bucket")


class Runbook(_Model):
    """What drorch may do for one service: its two regions, database pairs, secrets,
    DNS, write flag, health policy, validation flows and targets."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Names the "
                      "runbook's incidents, lease and default state directory")
    description: str = Field(default="", description="Free text")
    state_dir: str = Field(
        default="", validate_default=True,
        description="Journal, audit log, reports and lab files. Relative to the runbook "
        "file's directory (never the current directory); empty or absent: "
        "$XDG_STATE_HOME/drorch/<name> (default ~/.local/state/drorch/<name>). Always an "
        "absolute path once loaded.")
    aws: Aws = Field(default=Aws(), description="Endpoints and the failed-region deadline")
    regions: list[Region] = Field(description="Exactly two: one primary, one secondary")
    databases: list[DatabasePair] = Field(description="At least one pair")
    secrets: list[ConnectionSecret] = Field(default_factory=list,
                                            description="Connection secrets to repoint")
    dns: Dns | None = Field(default=None, description="The Route 53 flip; none: no DNS step")
    write_flag: WriteFlag | None = Field(default=None, description="A parameter the "
                                         "applications honour; none: no flag steps")
    health: HealthPolicy | None = Field(default=None, description="What `drorch watch` "
                                        "probes and when it fails over; none: no watching")
    validation: Validation | None = Field(default=None, description="Flows that prove the "
                                          "service works in the new region")
    targets: Targets = Field(default=Targets(), description="RPO and RTO targets")
    audit: AuditSettings = Field(default=AuditSettings(), description="The audit "
                                 "log's archive")
    lab: LabPorts | None = Field(default=None, description="Only for the local lab: marks "
                                 "the runbook as a lab one (`drorch lab ...` runs it; "
                                 "`lab down --purge` may delete its state)")

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir(cls, value: Any, info: ValidationInfo) -> str:
        """Absolute from here on: relative to the runbook file (``load_runbook`` passes its
        directory as context), a per-user default when not given (``drorch.state_dir``)."""
        base = (info.context or {}).get("runbook_dir")
        return resolve_state_dir(None if value is None else str(value),
                                 str(info.data.get("name") or "default"), base)

    @model_validator(mode="after")
    def _references_resolve(self) -> Runbook:
        names = [r.name for r in self.regions]
        require_unique(names, "region name", ("regions",))
        roles = sorted(r.role for r in self.regions)
        if roles != ["primary", "secondary"]:
            raise ValueError("exactly one primary and one secondary region are required")
        db_names = [d.name for d in self.databases]
        if not db_names:
            raise ValueError("at least one database pair is required")
        require_unique(db_names, "database name", ("databases",))
        require_unique([(s.secret_id, s.region) for s in self.secrets],
                       "secret (secret_id, region)", ("secrets",), field="secret_id")
        for db in self.databases:
            missing = set(names) - set(db.endpoints)
            unknown = set(db.endpoints) - set(names)
            if missing or unknown:
                raise ValueError(
                    f"database {db.name!r}: endpoints must name exactly the regions "
                    f"{names} (missing {sorted(missing)}, unknown {sorted(unknown)})"
                )
        files = [db.reconcile.conflict_file for db in self.databases
                 if db.reconcile is not None and db.reconcile.conflict_file]
        shared = sorted({f for f in files if files.count(f) > 1})
        if shared:
            raise ValueError(f"reconcile.conflict_file {shared[0]!r} is given to more than one "
                             "database: each database's conflicts need a file of their own")
        for s in self.secrets:
            if s.region not in names:
                raise ValueError(f"secret {s.secret_id!r}: unknown region {s.region!r}")
            if s.database not in db_names:
                raise ValueError(f"secret {s.secret_id!r}: unknown database {s.database!r}")
        for rec in (self.dns.records if self.dns else []):
            if set(rec.set_identifiers) != set(names):
                raise ValueError(
                    f"dns record {rec.name!r}: set_identifiers must name the regions {names}"
                )
        for rh in (self.health.regions if self.health else []):
            if rh.region not in names:
                raise ValueError(f"health: unknown region {rh.region!r}")
        for flow in (self.validation.flows if self.validation else []):
            for check in flow.checks:
                if getattr(check, "database", None) not in (None, *db_names):
                    raise ValueError(f"flow {flow.name!r}: unknown database "
                                     f"{check.database!r}")  # type: ignore[union-attr]
        return self

    def region_health(self, name: str) -> RegionHealth | None:
        """A region's health spec, with its AWS region filled in from ``regions``."""
        for rh in (self.health.regions if self.health else []):
            if rh.region == name:
                if rh.aws_region is None:
                    return rh.model_copy(update={"aws_region": self.region(name).aws_region})
                return rh
        return None

    @property
    def primary(self) -> Region:
        return next(r for r in self.regions if r.role == "primary")

    @property
    def secondary(self) -> Region:
        return next(r for r in self.regions if r.role == "secondary")

    def region(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    def database(self, name: str) -> DatabasePair:
        return next(d for d in self.databases if d.name == name)


def _expand_env(text: str) -> str:
    """``${VAR}`` and ``${VAR:-default}`` in a whole text (the loader substitutes inside
    parsed values instead: see ``drorch.runbook_file``)."""
    value, missing = expand_env(text)
    if missing:
        raise RunbookError(f"environment variable {missing[0]} is not set")
    return value


def _strip_lines(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip_lines(v) for k, v in obj.items() if k != "__lines__"}
    if isinstance(obj, list):
        return [_strip_lines(v) for v in obj]
    return obj


def _line_of(raw: Any, loc: tuple[int | str, ...]) -> int | None:
    """The line of the deepest key on ``loc`` that exists in the YAML."""
    line = None
    node = raw
    for part in loc:
        if isinstance(node, dict):
            lines = node.get("__lines__", {})
            if part in lines:
                line = lines[part]
            node = node.get(part) if isinstance(part, str) else None
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def _problem(raw: Any, error: Any) -> Problem:
    """One pydantic error as a problem at the line of the deepest field it names; a
    repeated name (``DuplicateName``) is placed at its item, with the first use's line."""
    loc = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    text = _describe(error)
    if isinstance(cause, DuplicateName):
        first = _line_of(raw, loc + cause.first)
        loc += cause.at
        text = str(cause) + (f" (first at line {first})" if first else "")
    field = ".".join(str(p) for p in loc) or "(runbook)"
    return Problem(_line_of(raw, loc), f"{field}: {text}")


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (not part of the runbook format)"
    return str(error["msg"]).removeprefix("Value error, ")


def load_runbook(path: str | Path) -> Runbook:
    """Read and validate a runbook; raise ``RunbookError`` with a readable message:
    every line names the file (and line and field where there is one), at most a
    screenful of them (``drorch.runbook_file`` says what is refused and why)."""
    path = Path(path)
    raw = read_runbook_file(path)
    if not isinstance(raw, dict):
        raise RunbookError(f"{path}: a runbook must be a YAML mapping at the top level")
    try:
        return Runbook.model_validate(_strip_lines(raw),
                                      context={"runbook_dir": path.resolve().parent})
    except ValidationError as exc:
        problems = [_problem(raw, err) for err in exc.errors()[:MAX_SHOWN]]
        raise runbook_error(path, problems, total=exc.error_count()) from None
