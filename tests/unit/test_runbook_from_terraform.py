"""``drorch runbook from-terraform``: Terraform's outputs in, a runbook that loads out.

The fixture ``tests/fixtures/terraform/two-region-outputs.json`` is what
``terraform output -json`` printed for ``terraform/examples/two-region`` applied to
the lab's moto server (RDS kind, ``journal_replica = false``), unedited: each output
``{"sensitive": ..., "type": ..., "value": ...}``.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drorch.cli import app
from drorch.config import load_runbook
from drorch.runbook_from_terraform import (
    REQUIRED_OUTPUTS,
    OutputsError,
    read_outputs,
    runbook_from_outputs,
)
from tests.conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "terraform" / "two-region-outputs.json"
EXAMPLE_OUTPUTS = ROOT / "terraform" / "examples" / "two-region" / "outputs.tf"


def _raw() -> dict[str, Any]:
    return dict(json.loads(FIXTURE.read_text()))


def _invoke(*args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(app, ["runbook", "from-terraform", *args], input=stdin)


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "outputs.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return path


def test_fixture_is_shaped_like_terraform_output_json() -> None:
    """Every output the example declares is in the fixture, each with the three keys
    ``terraform output -json`` prints, and nothing in it is marked sensitive."""
    raw = _raw()
    declared = re.findall(r'^output "([^"]+)"', EXAMPLE_OUTPUTS.read_text(), re.M)
    assert sorted(raw) == sorted(declared)
    for name, entry in raw.items():
        assert set(entry) == {"sensitive", "type", "value"}, name
        assert entry["sensitive"] is False, name
    assert set(REQUIRED_OUTPUTS) <= set(raw)


def test_runbook_from_the_example_loads_and_names_what_terraform_made(tmp_path: Path) -> None:
    out = tmp_path / "app.yaml"
    result = _invoke(str(FIXTURE), "--out", str(out))
    assert result.exit_code == 0, result.output
    runbook = load_runbook(out)
    v = {k: e["value"] for k, e in _raw().items()}

    assert runbook.name == v["service_name"]
    assert [(r.name, r.aws_region, r.role) for r in runbook.regions] == [
        ("region-a", "us-east-1", "primary"), ("region-b", "us-west-2", "secondary")]
    db = runbook.database("main")
    assert db.kind == "rds"
    for region in ("region-a", "region-b"):
        ep = v["database"]["endpoints"][region]
        assert db.endpoints[region].instance_id == ep["instance_id"]
        assert (db.endpoints[region].host, db.endpoints[region].port) == (ep["host"], ep["port"])
        assert db.endpoints[region].dbname == v["database"]["dbname"]
    assert db.promote_timeout_s >= 600  # RDS promotes in minutes, not the default 60 s
    # a replicated secret: only the primary's copy is writable
    assert [(s.secret_id, s.region) for s in runbook.secrets] == [
        (v["connection_secret"]["secret_id"], "region-a")]
    assert runbook.dns is not None
    assert runbook.dns.zone == v["dns"]["zone"]
    rec = runbook.dns.records[0]
    assert (rec.name, rec.type) == (v["dns"]["record_name"], v["dns"]["record_type"])
    assert rec.set_identifiers == v["dns"]["set_identifiers"]
    assert runbook.write_flag is not None
    assert runbook.write_flag.parameter == v["write_flag"]["parameter"]
    health = runbook.health
    assert health is not None
    assert health.alarm_queue_url == v["alarms"]["queue_url"]
    assert health.alarm_regions == {name: region for region, name
                                    in v["alarms"]["alarm_names"].items()}
    for region in ("region-a", "region-b"):
        probes = {p.name: p for p in health.region(region).probes}
        assert probes["route53"].health_check_id == v["dns"]["health_check_ids"][region]  # type: ignore[union-attr]
        assert probes["alarm"].alarm_name == v["alarms"]["alarm_names"][region]  # type: ignore[union-attr]
        assert probes["alarm"].aws_region == "us-east-1"  # type: ignore[union-attr]
    archive = runbook.audit.archive  # audit ship needs no --bucket
    assert archive is not None
    assert (archive.url, archive.aws_region, archive.retention_days) == (
        v["audit_archive"]["url"], v["audit_archive"]["aws_region"],
        v["audit_archive"]["retention_days"])
    text = out.read_text()
    assert text.startswith("# Made by `drorch runbook from-terraform` from two-region-outputs")
    assert v["drorch_role_arn"] in text  # named in the header


def test_stdout_is_the_default_and_dash_reads_stdin(tmp_path: Path) -> None:
    from_file = _invoke(str(FIXTURE))
    from_stdin = _invoke("-", stdin=FIXTURE.read_text())
    assert from_file.exit_code == 0 and from_stdin.exit_code == 0, from_stdin.output
    for result in (from_file, from_stdin):
        path = tmp_path / "printed.yaml"
        path.write_text(result.stdout)
        assert load_runbook(path).database("main").kind == "rds"


def test_aurora_global_and_independent_secrets(tmp_path: Path) -> None:
    raw = copy.deepcopy(_raw())
    db = raw["database"]["value"]
    db["kind"] = "aurora-global"
    db["global_cluster_id"] = "app-main"
    for region, ep in db["endpoints"].items():
        ep["cluster_id"], ep["instance_id"] = f"app-main-{region[-1]}", None
    raw["connection_secret"]["value"] |= {"replicated": False,
                                          "regions": ["region-a", "region-b"]}
    out = tmp_path / "aurora.yaml"
    result = _invoke(str(_write(tmp_path, raw)), "--out", str(out))
    assert result.exit_code == 0, result.output
    runbook = load_runbook(out)
    pair = runbook.database("main")
    assert (pair.kind, pair.global_cluster_id) == ("aurora-global", "app-main")
    assert pair.endpoints["region-b"].cluster_id == "app-main-b"
    assert pair.endpoints["region-b"].instance_id is None
    assert sorted(s.region for s in runbook.secrets) == ["region-a", "region-b"]


def test_existing_file_is_kept_without_force(tmp_path: Path) -> None:
    out = tmp_path / "app.yaml"
    out.write_text("mine\n")
    refused = _invoke(str(FIXTURE), "--out", str(out))
    assert refused.exit_code == 2
    assert "exists; use --force" in refused.output
    assert out.read_text() == "mine\n"
    forced = _invoke(str(FIXTURE), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert load_runbook(out).name == "app"
    assert [p.name for p in tmp_path.iterdir()] == ["app.yaml"]  # no temporary file left


@pytest.mark.parametrize("case, expected", [
    ("missing-file", "no such file"),
    ("directory", "is a directory"),
    ("not-json", "not JSON"),
    ("not-object", "expected a JSON object of outputs"),
    ("show-json", "has no \"value\""),
    ("missing-outputs", "missing output(s) database, alarms"),
    ("bad-field", "output database.endpoints.region-b.host: expected str"),
    ("absent-field", "output dns: set_identifiers is missing"),
    ("bool-port", "output database.endpoints.region-a.port: expected int or float or str"),
    ("text-port", "output database.endpoints.region-a.port: expected a port number"),
    ("fraction-port", "output database.endpoints.region-a.port: expected a port number"),
    ("nan-port", "output database.endpoints.region-a.port: expected a port number"),
    ("env-reference", "contains '${'"),
    ("bad-out-dir", "does not exist"),
    ("does-not-load", "does not load"),
])
def test_errors_are_one_message_and_exit_2(tmp_path: Path, case: str, expected: str) -> None:
    raw = copy.deepcopy(_raw())
    args: list[str] = []
    path: Path = tmp_path / "outputs.json"
    if case == "missing-file":
        path = tmp_path / "nope.json"
    elif case == "directory":
        path = tmp_path
    elif case == "not-json":
        path.write_text("{not json")
    elif case == "not-object":
        path.write_text("[]")
    elif case == "show-json":
        path = _write(tmp_path, {"values": {"outputs": {}}})
    elif case == "missing-outputs":
        del raw["database"], raw["alarms"]
        path = _write(tmp_path, raw)
    elif case == "bad-field":
        raw["database"]["value"]["endpoints"]["region-b"]["host"] = None
        path = _write(tmp_path, raw)
    elif case == "absent-field":
        del raw["dns"]["value"]["set_identifiers"]
        path = _write(tmp_path, raw)
    elif case in ("bool-port", "text-port", "fraction-port"):
        raw["database"]["value"]["endpoints"]["region-a"]["port"] = {
            "bool-port": True, "text-port": "abc", "fraction-port": 5432.5}[case]
        path = _write(tmp_path, raw)
    elif case == "nan-port":
        path.write_text(json.dumps(raw).replace('"port": 5432', '"port": NaN', 1))
    elif case == "env-reference":
        raw["write_flag"]["value"]["parameter"] = "/drorch/${HOME}/flag"
        path = _write(tmp_path, raw)
    elif case == "bad-out-dir":
        path = FIXTURE
        args = ["--out", str(tmp_path / "no" / "such" / "dir.yaml")]
    elif case == "does-not-load":
        raw["service_name"]["value"] = "not a valid name"
        path = _write(tmp_path, raw)
    result = _invoke(str(path), *args)
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_error_messages_never_repeat_values(tmp_path: Path) -> None:
    """An output marked sensitive is printed in clear by ``terraform output -json``: a
    wrong value is named by its path, not shown."""
    raw = copy.deepcopy(_raw())
    raw["database"]["value"]["endpoints"]["region-a"]["host"] = ["s3cr3t-value"]
    raw["database"]["sensitive"] = True
    result = _invoke(str(_write(tmp_path, raw)))
    assert result.exit_code == 2
    assert "s3cr3t-value" not in result.output


def test_two_regions_with_one_primary_are_required() -> None:
    values = {k: e["value"] for k, e in _raw().items()}
    values["regions"]["region-b"]["role"] = "primary"
    with pytest.raises(OutputsError, match="one with role primary"):
        runbook_from_outputs(values)


def test_read_outputs_returns_values_only(tmp_path: Path) -> None:
    values = read_outputs(FIXTURE)
    assert values["service_name"] == "app"
    assert "sensitive" not in values["database"]
