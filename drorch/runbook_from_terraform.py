"""A runbook made from ``terraform output -json`` of ``terraform/examples/two-region``.

Platform teams create the estate with Terraform; copying its identifiers (instance
ids, health check ids, the queue URL) into a runbook by hand is how a failover ends
up acting on the wrong thing. ``runbook_from_outputs`` builds the runbook from the
outputs the example declares (``terraform/examples/two-region/outputs.tf``), and
``write_runbook`` checks that it loads with drorch's own loader
(:func:`drorch.config.load_runbook`) before anything is written.

``terraform output -json`` prints one object per output:
``{"NAME": {"sensitive": bool, "type": <type>, "value": <value>}}``
(https://developer.hashicorp.com/terraform/cli/commands/output). Only ``value`` is
read. Values are never put into error messages: an output marked sensitive is
printed in clear by ``terraform output -json``, and a message must not repeat it.

What the outputs cannot say is left at a conservative default and named in the
file's header: the applications' roles, the RPO/RTO targets, the DNS nameservers to
verify against, the health window.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from drorch.config import Runbook, RunbookError, load_runbook

REQUIRED_OUTPUTS = ("service_name", "regions", "database", "connection_secret", "dns",
                    "write_flag", "alarms")
"""The example's outputs a runbook is made from (``audit_archive``, when present, makes
its ``audit.archive``; ``drorch_role_arn``, ``audit_bucket`` and ``journal_table`` are read
when present, for the header only)."""

DATABASE_NAME = "main"

# RDS and Aurora take minutes to promote (PromoteReadReplica, a global failover); the
# runbook model's default of 60 s would halt a healthy promotion.
PROMOTE_TIMEOUT_S = 900

# The health window written for each region: a failing probe quorum for three minutes,
# probed every 30 s. Route 53 itself needs failure_threshold (3) x request_interval
# (30 s) to call an endpoint unhealthy, so a shorter window would act on less evidence
# than the health check has.
FAIL_AFTER_S = 180
INTERVAL_S = 30
PROBE_TIMEOUT_S = 5


class OutputsError(Exception):
    """The outputs file cannot be made into a runbook; the message says why (file,
    output name, field), never a value."""


def read_outputs(path: Path | None, text: str | None = None) -> dict[str, Any]:
    """Each output's ``value`` by name, from a file (or ``text`` read from stdin)."""
    where = "stdin" if path is None else str(path)
    if text is None:
        assert path is not None
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise OutputsError(f"{where}: no such file") from None
        except IsADirectoryError:
            raise OutputsError(f"{where}: is a directory, not a file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise OutputsError(f"{where}: cannot read it ({type(exc).__name__})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise OutputsError(f"{where}: not JSON (line {exc.lineno}: {exc.msg}); expected "
                           "what `terraform output -json` prints") from None
    if not isinstance(raw, dict):
        raise OutputsError(f"{where}: expected a JSON object of outputs, as `terraform "
                           "output -json` prints")
    values: dict[str, Any] = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict) or "value" not in entry:
            raise OutputsError(f"{where}: output {name!r} has no \"value\": is this "
                               "`terraform output -json` (not `terraform show -json`)?")
        values[name] = entry["value"]
    missing = [n for n in REQUIRED_OUTPUTS if n not in values]
    if missing:
        have = ", ".join(sorted(values)) or "none"
        raise OutputsError(f"{where}: missing output(s) {', '.join(missing)} (it has: "
                           f"{have}); the outputs of terraform/examples/two-region are "
                           "expected")
    return values


def _field(value: Any, path: str, kind: type | tuple[type, ...]) -> Any:
    """The part of output ``value`` at ``path`` (``output.key.key``, the output's own
    name first), which must be of ``kind``."""
    node = value
    parts = path.split(".")
    for depth, part in enumerate(parts[1:], start=2):
        if not isinstance(node, dict) or part not in node:
            raise OutputsError(f"output {parts[0]}: {'.'.join(parts[1:depth])} is missing")
        node = node[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # a JSON true is a Python int: never accept it where a number is expected
    if not isinstance(node, kinds) or (isinstance(node, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise OutputsError(f"output {path}: expected {names}")
    return node


def _port(outputs: dict[str, Any], path: str) -> int:
    """A TCP port (1-65535) as Terraform may print it: a number, or a string of digits
    (``tostring(port)``); anything else is this output's error, never a traceback."""
    head = path.split(".", 1)[0]
    value = _field(outputs[head], path, (int, float, str))
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise OutputsError(f"output {path}: expected a port number (1-65535), not {value!r}")
    return int(text)


def _str(outputs: dict[str, Any], path: str) -> str:
    head, _, rest = path.partition(".")
    text = _field(outputs[head], path if rest else head, str)
    if not text:
        raise OutputsError(f"output {path}: is empty")
    return str(text)


def _map(outputs: dict[str, Any], path: str) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return dict(_field(outputs[head], path if rest else head, dict))


def runbook_from_outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """The runbook (plain data, in the order a reader expects) for the outputs of
    ``terraform/examples/two-region``. Raises :class:`OutputsError`."""
    regions_out = _map(outputs, "regions")
    regions = []
    for name in regions_out:
        aws_region = _field(regions_out, f"regions.{name}.aws_region", str)
        role = _field(regions_out, f"regions.{name}.role", str)
        regions.append({"name": name, "aws_region": aws_region, "role": role})
    regions.sort(key=lambda r: (r["role"] != "primary", r["name"]))
    names = [r["name"] for r in regions]
    if sorted(r["role"] for r in regions) != ["primary", "secondary"]:
        raise OutputsError("output regions: expected two regions, one with role primary")

    kind = _str(outputs, "database.kind")
    if kind not in ("rds", "aurora-global"):
        raise OutputsError("output database.kind: expected rds or aurora-global")
    id_key = "instance_id" if kind == "rds" else "cluster_id"
    endpoints: dict[str, Any] = {}
    for name in names:
        base = f"database.endpoints.{name}"
        endpoints[name] = {
            "host": _str(outputs, f"{base}.host"),
            "port": _port(outputs, f"{base}.port"),
            "dbname": _str(outputs, "database.dbname"),
            "user": _str(outputs, "database.user"),
            id_key: _str(outputs, f"{base}.{id_key}"),
        }
    database: dict[str, Any] = {"name": DATABASE_NAME, "kind": kind}
    if kind == "aurora-global":
        database["global_cluster_id"] = _str(outputs, "database.global_cluster_id")
    database |= {"endpoints": endpoints, "promote_timeout_s": PROMOTE_TIMEOUT_S,
                 "app_roles": []}

    secret_id = _str(outputs, "connection_secret.secret_id")
    secret_regions = _field(outputs["connection_secret"], "connection_secret.regions", list)
    for r in secret_regions:
        if r not in names:
            raise OutputsError("output connection_secret.regions: names a region that is "
                               "not in output regions")
    secrets = [{"secret_id": secret_id, "region": r, "database": DATABASE_NAME}
               for r in secret_regions]

    dns = {
        "zone": _str(outputs, "dns.zone"),
        "records": [{"name": _str(outputs, "dns.record_name"),
                     "type": _str(outputs, "dns.record_type"),
                     "set_identifiers": {n: _field(outputs["dns"], f"dns.set_identifiers.{n}", str)
                                         for n in names}}],
    }

    alarm_region = _str(outputs, "alarms.aws_region")
    health_regions = []
    for name in names:
        ep = endpoints[name]
        health_regions.append({
            "region": name,
            "quorum": 2,
            "fail_after_s": FAIL_AFTER_S,
            "interval_s": INTERVAL_S,
            "probes": [
                {"name": "db", "kind": "postgres", "host": ep["host"], "port": ep["port"],
                 "dbname": ep["dbname"], "user": ep["user"], "timeout_s": PROBE_TIMEOUT_S},
                {"name": "route53", "kind": "route53_health_check",
                 "health_check_id": _field(outputs["dns"], f"dns.health_check_ids.{name}", str),
                 "timeout_s": PROBE_TIMEOUT_S},
                {"name": "alarm", "kind": "cloudwatch_alarm",
                 "alarm_name": _field(outputs["alarms"], f"alarms.alarm_names.{name}", str),
                 "aws_region": alarm_region, "timeout_s": PROBE_TIMEOUT_S},
            ],
        })
    health = {
        "alarm_queue_url": _str(outputs, "alarms.queue_url"),
        # Both alarms live in us-east-1 (Route 53 health check metrics exist only
        # there), so their ARNs cannot say which region an alarm is about.
        "alarm_regions": {_field(outputs["alarms"], f"alarms.alarm_names.{n}", str): n
                          for n in names},
        "regions": health_regions,
    }

    runbook: dict[str, Any] = {
        "name": _str(outputs, "service_name"),
        "description": f"{_str(outputs, 'service_name')}: two regions made by Terraform "
                       "(drorch runbook from-terraform)",
        "regions": regions,
        "databases": [database],
        "secrets": secrets,
        "dns": dns,
        "write_flag": {"parameter": _str(outputs, "write_flag.parameter")},
        "health": health,
    }
    archive = outputs.get("audit_archive")
    if archive is not None:  # optional: without it, audit ship needs --bucket
        runbook["audit"] = {"archive": {
            "url": _str(outputs, "audit_archive.url"),
            "aws_region": _str(outputs, "audit_archive.aws_region"),
            "retention_days": _field(archive, "audit_archive.retention_days", int)}}
    _no_env_references(runbook)
    return runbook


def _no_env_references(node: Any, where: str = "") -> None:
    """The loader replaces ``${VAR}`` in every value: an identifier holding one would be
    changed on load, so it is refused instead of written."""
    if isinstance(node, dict):
        for k, v in node.items():
            _no_env_references(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _no_env_references(v, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        raise OutputsError(f"runbook field {where}: the value contains '${{', which the "
                           "runbook loader would expand")


class _Dumper(yaml.SafeDumper):
    """No anchors or aliases (the runbook loader refuses them)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _header(source: str, outputs: dict[str, Any]) -> str:
    lines = [
        f"# Made by `drorch runbook from-terraform` from {source}"
        f" at {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}.",
        "# Re-run it after `terraform apply` rather than editing identifiers here.",
        "#",
        "# Not in Terraform's outputs, so left for you to set:",
        "#   databases[].app_roles     the applications' roles (the freeze sets them NOLOGIN)",
        "#   targets                   rpo_seconds / rto_seconds",
        "#   dns.nameservers           authoritative servers to verify the flip against",
        "#   validation                flows that prove the service works in the new region",
        f"#   health                    window: {FAIL_AFTER_S}s of 2 failing probes, every "
        f"{INTERVAL_S}s",
        "# drorch connects to PostgreSQL as the database user; the password comes from",
        "# libpq (PGPASSWORD, ~/.pgpass) or endpoints.*.password_env, never this file.",
    ]
    secret = outputs.get("connection_secret")
    if isinstance(secret, dict) and secret.get("replicated") is True:
        lines += ["# The secret's secondary copy is a Secrets Manager replica (read-only): drorch",
                  "# rewrites the primary region's copy and Secrets Manager copies it over; while",
                  "# the primary region is down the replica keeps the old endpoint."]
    for name, label in (("drorch_role_arn", "drorch's IAM role"),
                        ("audit_bucket", "audit archive bucket"),
                        ("journal_table", "journal table (not used by drorch yet)")):
        if isinstance(outputs.get(name), str):
            lines.append(f"# {label}: {outputs[name]}")
    return "\n".join(lines) + "\n"


def render(runbook: dict[str, Any], source: str, outputs: dict[str, Any]) -> str:
    """The runbook as YAML, with a header naming where it came from and what to fill in."""
    body = yaml.dump(runbook, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True, width=100)
    return _header(source, outputs) + body


def check_loads(text: str, directory: Path) -> Runbook:
    """Load ``text`` with drorch's runbook loader from a file in ``directory`` (where it
    will live: a relative state_dir resolves from there). Raises ``RunbookError``."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".drorch-runbook-", suffix=".yaml", dir=directory)
    except OSError:  # printing to stdout from a directory drorch may not write in
        fd, tmp = tempfile.mkstemp(prefix=".drorch-runbook-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        return load_runbook(tmp)
    finally:
        os.unlink(tmp)


def write_runbook(text: str, out: Path, force: bool) -> None:
    """Write ``text`` to ``out`` in one step (a temporary file beside it, then a rename),
    so a reader never sees half a runbook; without ``force`` an existing file is never
    replaced, even one created meanwhile (``os.link`` fails if the name exists)."""
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        raise OutputsError(f"{out}: directory {directory} does not exist")
    if out.exists() and not force:
        raise OutputsError(f"{out}: exists; use --force to replace it")
    fd, tmp = tempfile.mkstemp(prefix=".drorch-runbook-", suffix=".yaml", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        if force:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise OutputsError(f"{out}: exists; use --force to replace it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


__all__ = ["OutputsError", "REQUIRED_OUTPUTS", "RunbookError", "check_loads", "read_outputs",
           "render", "runbook_from_outputs", "write_runbook"]
