"""The Terraform under ``terraform/``: formatted, valid, checkov-clean, applied to moto.

- ``terraform fmt -check -recursive`` on the whole tree;
- ``terraform init -plugin-dir`` + ``terraform validate`` of every module and of
  ``examples/two-region``, each in a copy under ``tmp_path`` (nothing is written into
  the repository). A module that takes an aliased provider (``configuration_aliases``)
  cannot be validated alone without a configuration for the alias, so its copy gets
  an empty ``provider "aws" { alias = ... }`` block: the module itself is unchanged;
- checkov (``make checkov``'s command) passes, and every skipped check is listed with
  its reason in its module's README;
- slow: the example's modules applied to the lab's moto server; ``terraform output
  -json`` through ``drorch runbook from-terraform``; ``drorch plan`` with that runbook
  reports ready; a failover with it runs on the lab (``terraform/README.md`` says what
  moto cannot play and what the test does instead).

Terraform and the AWS provider are found at ``/usr/local/bin/terraform`` (or on PATH)
and ``/opt/tf-plugins`` (offline: ``../shared/FINDINGS.md``); without them these tests
skip saying so, unless ``DRORCH_TEST_REQUIRE_REAL_PARTS=1``, which makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from drorch.cli import app
from drorch.config import load_runbook
from tests.conftest import REQUIRE_REAL_PARTS, ROOT

TF_ROOT = ROOT / "terraform"
MODULES = sorted(p.name for p in (TF_ROOT / "modules").iterdir() if p.is_dir())
CONFIGS = ["examples/two-region", *(f"modules/{m}" for m in MODULES)]
"""Validated configurations: the example (every module with real inputs) and each module
on its own (its variables, validations and provider requirements as a caller meets
them); ~4 s of CPU each, two at a time."""
PLUGIN_DIR = Path(os.environ.get("DRORCH_TF_PLUGIN_DIR", "/opt/tf-plugins"))
PROVIDER = PLUGIN_DIR / "registry.terraform.io/hashicorp/aws/5.100.0"


def _terraform() -> str | None:
    found = shutil.which("terraform")
    if found:
        return found
    return "/usr/local/bin/terraform" if os.access("/usr/local/bin/terraform", os.X_OK) else None


TERRAFORM = _terraform()
_MISSING = ("terraform not found (PATH or /usr/local/bin/terraform)" if TERRAFORM is None
            else f"AWS provider 5.100.0 not under {PLUGIN_DIR}" if not PROVIDER.is_dir()
            else None)


@pytest.fixture
def needs_terraform() -> None:
    if _MISSING is None:
        return
    if REQUIRE_REAL_PARTS:
        pytest.fail(f"DRORCH_TEST_REQUIRE_REAL_PARTS=1 but {_MISSING}")
    pytest.skip(f"Terraform tests skipped: {_MISSING}")


def _env(tmp: Path) -> dict[str, str]:
    """No version check call, no CLI config from the machine, never a prompt."""
    rc = tmp / "terraformrc"
    rc.write_text("")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TF_", "AWS_"))}
    return env | {"CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": str(rc),
                  "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}


def _tf(args: list[str], cwd: Path, env: dict[str, str],
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert TERRAFORM is not None
    return subprocess.run([TERRAFORM, *args, "-no-color"], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def _init(cwd: Path, env: dict[str, str]) -> None:
    res = _tf(["init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", "-input=false"],
              cwd, env)
    assert res.returncode == 0, f"terraform init in {cwd.name}:\n{res.stdout}{res.stderr}"


_ALIASES = re.compile(r"configuration_aliases\s*=\s*\[([^\]]*)\]")


def _stub_aliases(directory: Path) -> None:
    """An empty configuration for each provider alias the module expects from its
    caller: ``terraform validate`` of such a module alone fails without one."""
    text = (directory / "versions.tf").read_text()
    match = _ALIASES.search(text)
    if not match:
        return
    blocks = [f'provider "aws" {{\n  alias = "{a.strip().split(".")[1]}"\n}}\n'
              for a in match.group(1).split(",") if a.strip()]
    (directory / "zz_validate_providers.tf").write_text("\n".join(blocks))


@pytest.mark.usefixtures("needs_terraform")
def test_fmt_check_recursive(tmp_path: Path) -> None:
    res = _tf(["fmt", "-check", "-recursive", "-diff", str(TF_ROOT)], tmp_path, _env(tmp_path))
    assert res.returncode == 0, f"terraform fmt -check found unformatted files:\n{res.stdout}"


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    """``terraform validate`` of every configuration, in copies, two at a time (each
    loads the provider's schema: ~3 s of CPU)."""
    if _MISSING is not None:
        return {}
    tmp = tmp_path_factory.mktemp("tf-validate")
    shutil.copytree(TF_ROOT, tmp / "terraform",
                    ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl",
                                                  "*.tfstate*"))
    env = _env(tmp)

    def one(config: str) -> tuple[int, str]:
        directory = tmp / "terraform" / config
        _stub_aliases(directory)
        init = _tf(["init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", "-input=false"],
                   directory, env)
        if init.returncode != 0:
            return init.returncode, init.stdout + init.stderr
        res = _tf(["validate"], directory, env)
        return res.returncode, res.stdout + res.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CONFIGS, pool.map(one, CONFIGS), strict=True))


@pytest.mark.usefixtures("needs_terraform")
@pytest.mark.parametrize("config", CONFIGS)
def test_validate(config: str, validated: dict[str, tuple[int, str]]) -> None:
    code, output = validated[config]
    assert code == 0, f"terraform validate {config}:\n{output}"
    assert "The configuration is valid" in output


def test_every_module_has_the_usual_layout() -> None:
    for module in MODULES:
        directory = TF_ROOT / "modules" / module
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
            assert (directory / name).is_file(), f"modules/{module}/{name} is missing"
        readme = (directory / "README.md").read_text()
        assert "## Inputs" in readme and "## Outputs" in readme, module
        # every variable and output is in the README's tables
        for kind in ("variable", "output"):
            tf = "variables.tf" if kind == "variable" else "outputs.tf"
            for name in re.findall(rf'^{kind} "([^"]+)"', (directory / tf).read_text(), re.M):
                assert f"`{name}`" in readme or name in readme, f"{module}: {kind} {name}"


# -- the IAM policy against the code ----------------------------------------------------

_POLICY_SERVICES = ("ssm", "secretsmanager", "route53", "sqs", "rds", "cloudwatch", "s3",
                    "sns", "iam", "sts")
# IAM authorises a batch call as its single-message action
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html),
# and some S3 operations as an action of another name (Service Authorization Reference,
# Amazon S3)
_AUTHORISED_AS = {"sqs:DeleteMessageBatch": "sqs:DeleteMessage",
                  "s3:ListObjectsV2": "s3:ListBucket",
                  "s3:ListObjectVersions": "s3:ListBucketVersions",
                  "s3:GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration"}
# Actions an operation needs besides its own, as drorch calls it: PutObject with an
# Object Lock retention, GetObject of a version and with its retention headers
# (drorch/adapters/s3.py)
_ALSO_NEEDS = {"s3:PutObject": ("s3:PutObjectRetention",),
               "s3:GetObject": ("s3:GetObjectVersion", "s3:GetObjectRetention")}
_NO_PERMISSION = {"sts:GetCallerIdentity"}
"""Calls IAM always allows ("No permissions are required to perform this operation",
STS API Reference, GetCallerIdentity)."""
_WAITERS = {"db_instance_available": "rds:DescribeDBInstances",
            "db_snapshot_available": "rds:DescribeDBSnapshots",
            "db_cluster_available": "rds:DescribeDBClusters",
            "db_cluster_deleted": "rds:DescribeDBClusters"}


def _calls_in_code() -> dict[str, set[str]]:
    """Every AWS operation drorch's steps, adapters and health checks call (a method
    of a boto3 client, a paginator or a waiter), as IAM actions, with the files."""
    import ast

    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    operations: dict[str, set[str]] = {}
    for service in _POLICY_SERVICES:
        for op in session.get_service_model(service).operation_names:
            operations.setdefault(xform_name(op), set()).add(f"{service}:{op}")
    found: dict[str, set[str]] = {}
    for folder in ("steps", "adapters", "health"):
        for path in sorted((ROOT / "drorch" / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                name, actions = node.func.attr, set()
                first = node.args[0].value if node.args and isinstance(
                    node.args[0], ast.Constant) else None
                if name == "get_paginator" and isinstance(first, str):
                    actions = operations.get(first, set())
                elif name == "get_waiter" and isinstance(first, str):
                    actions = {_WAITERS[first]}
                elif name in operations:
                    actions = operations[name]
                if len(actions) > 1:  # e.g. add_tags_to_resource: the adapter's service
                    actions = {a for a in actions if a.startswith(f"{path.stem}:")}
                assert len(actions) <= 1, f"{name} in {path} is ambiguous: {actions}"
                for action in actions - _NO_PERMISSION:
                    action = _AUTHORISED_AS.get(action, action)
                    for needed in (action, *_ALSO_NEEDS.get(action, ())):
                        found.setdefault(needed, set()).add(str(path.relative_to(ROOT)))
    return found


def test_iam_policy_grants_exactly_the_calls_drorch_makes() -> None:
    """The iam module's actions (kms only for customer managed keys, which drorch never
    calls itself) against the operations the code calls: a call added without its
    action, or an action left after its call is gone, fails here."""
    text = (TF_ROOT / "modules" / "iam" / "main.tf").read_text()
    code = re.sub(r"#.*|variable\s*=.*", "", text)  # comments, condition keys
    # sts: only the trust policy's sts:AssumeRole (who may become the role), never a grant
    services = "|".join(s for s in _POLICY_SERVICES if s != "sts")
    granted = set(re.findall(rf'"((?:{services}):[A-Za-z]+)"', code))
    called = _calls_in_code()
    assert sorted(set(called) - granted) == [], "called but not granted"
    assert sorted(granted - set(called)) == [], "granted but never called"
    assert {"rds:PromoteReadReplica", "route53:ChangeResourceRecordSets",
            "sqs:ReceiveMessage", "iam:SimulatePrincipalPolicy"} <= granted  # the scan works


# -- apply against the lab's moto, then runbook, plan and a failover (slow) -------------

_SERVICES = ("cloudwatch", "dynamodb", "iam", "route53", "s3", "secretsmanager", "sns", "sqs",
             "ssm", "sts")


def _provider(alias: str, region: str, endpoint: str) -> str:
    endpoints = "\n".join(f'    {s} = "{endpoint}"' for s in _SERVICES)
    return f"""provider "aws" {{
  alias                       = "{alias}"
  region                      = "{region}"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true

  endpoints {{
{endpoints}
  }}
}}
"""


def _chain_root(modules: Path, endpoint: str, db: dict[str, Any]) -> str:
    """The two-region example's modules for an apply to moto, outputs shaped as the
    example's (``examples/two-region/outputs.tf``). What differs, and why:

    - the database is not applied: ``db`` describes the lab's RDS instances (read from
      moto, as the rds-postgres module's outputs would say them), because an instance
      Terraform creates in moto has no PostgreSQL behind it (the lab binds its own to
      its clusters) and takes ~80 s to apply;
    - the alarm chain is in the secondary region (the example: us-east-1, where Route 53
      health check metrics are): moto's queue URLs do not say their region, and drorch
      reads such a queue in the secondary region;
    - the journal table without its replica (a DynamoDB replica hangs against moto,
      FINDINGS)."""
    providers = "\n".join(_provider(a, r, endpoint) for a, r in
                          (("primary", "us-east-1"), ("secondary", "us-west-2")))
    return providers + f"""
terraform {{
  required_providers {{
    aws = {{
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }}
  }}
}}

locals {{
  db = {json.dumps(db)}
}}

module "dns" {{
  source      = "{modules}/route53-failover"
  providers   = {{ aws = aws.primary }}
  zone_name   = "tf.drorch.test"
  create_zone = true
  record_name = "app.tf.drorch.test"
  ttl         = 60
  regions = {{
    "region-a" = {{
      set_identifier = "region-a", weight = 100, records = ["127.0.1.1"],
      health_check_ip = "127.0.1.1", health_check_type = "TCP", health_check_port = 5432
    }}
    "region-b" = {{
      set_identifier = "region-b", weight = 0, records = ["127.0.2.1"],
      health_check_ip = "127.0.2.1", health_check_type = "TCP", health_check_port = 5432
    }}
  }}
}}

module "alarms" {{
  source           = "{modules}/alarms"
  providers        = {{ aws = aws.secondary }}
  name_prefix      = "drorch-tfapply"
  health_check_ids = module.dns.health_check_ids
}}

module "write_flag_primary" {{
  source         = "{modules}/write-flag"
  providers      = {{ aws = aws.primary }}
  parameter_name = "/drorch/tfapply/writes-frozen"
}}

module "write_flag_secondary" {{
  source         = "{modules}/write-flag"
  providers      = {{ aws = aws.secondary }}
  parameter_name = "/drorch/tfapply/writes-frozen"
}}

module "secret" {{
  source                  = "{modules}/secrets"
  providers               = {{ aws = aws.primary, aws.secondary = aws.secondary }}
  name                    = "tfapply/main/db"
  replica_region          = "us-west-2"
  replicate               = false
  recovery_window_in_days = 0
  initial_value = {{
    host = local.db.primary_address, port = tostring(local.db.port),
    dbname = local.db.db_name, username = local.db.master_username
  }}
}}

module "journal" {{
  source          = "{modules}/journal-table"
  providers       = {{ aws = aws.primary }}
  table_name      = "drorch-tfapply-journal"
  replica_regions = []
}}

module "audit" {{
  source         = "{modules}/audit-bucket"
  providers      = {{ aws = aws.primary }}
  bucket_name    = "drorch-tfapply-audit"
  retention_days = 1
}}

module "iam" {{
  source                    = "{modules}/iam"
  providers                 = {{ aws = aws.primary }}
  audit_bucket_arn          = module.audit.bucket_arn
  role_name                 = "drorch-tfapply"
  trusted_principal_arns    = ["arn:aws:iam::123456789012:root"]
  write_flag_parameter_arns = [
    module.write_flag_primary.parameter_arn, module.write_flag_secondary.parameter_arn
  ]
  secret_arns               = module.secret.secret_arns
  hosted_zone_id            = module.dns.zone_id
  record_names              = [module.dns.record_name]
  record_types              = [module.dns.record_type]
  health_check_ids          = values(module.dns.health_check_ids)
  alarm_arns                = module.alarms.alarm_arns
  alarm_queue_arn           = module.alarms.queue_arn
  alarm_topic_arn           = module.alarms.topic_arn
  rds_instance_arns         = local.db.instance_arns
}}

output "service_name" {{
  value = "tfapply"
}}

output "regions" {{
  value = {{
    "region-a" = {{ aws_region = "us-east-1", role = "primary" }}
    "region-b" = {{ aws_region = "us-west-2", role = "secondary" }}
  }}
}}

output "database" {{
  value = {{
    name = "main", kind = "rds", global_cluster_id = null
    dbname = local.db.db_name, user = local.db.master_username
    endpoints = {{
      "region-a" = {{ host = local.db.primary_address, port = local.db.port,
                     instance_id = local.db.primary_instance_id, cluster_id = null }}
      "region-b" = {{ host = local.db.replica_address, port = local.db.replica_port,
                     instance_id = local.db.replica_instance_id, cluster_id = null }}
    }}
  }}
}}

output "connection_secret" {{
  value = {{
    secret_id  = module.secret.secret_name
    replicated = module.secret.replicated
    regions    = module.secret.replicated ? ["region-a"] : ["region-a", "region-b"]
  }}
}}

output "dns" {{
  value = {{
    zone             = module.dns.zone_name
    record_name      = module.dns.record_name
    record_type      = module.dns.record_type
    ttl              = module.dns.ttl
    set_identifiers  = module.dns.set_identifiers
    health_check_ids = module.dns.health_check_ids
  }}
}}

output "write_flag" {{
  value = {{ parameter = module.write_flag_primary.parameter_name }}
}}

output "alarms" {{
  value = {{
    queue_url   = module.alarms.queue_url
    aws_region  = module.alarms.aws_region
    alarm_names = module.alarms.alarm_names
  }}
}}

output "drorch_role_arn" {{
  value = module.iam.role_arn
}}

output "audit_archive" {{
  value = {{
    url            = "s3://${{module.audit.bucket_name}}/tfapply"
    aws_region     = "us-east-1"
    retention_days = module.audit.retention_days
  }}
}}

output "journal_table" {{
  value = module.journal.table_name
}}
"""


def _lab_database(aws: Any, runbook: Any) -> dict[str, Any]:
    """The lab's RDS pair as the rds-postgres module's outputs would say it."""
    a, b = (runbook.database("main").endpoints[r] for r in ("region-a", "region-b"))
    ia = aws("rds", "us-east-1").describe_db_instances(
        DBInstanceIdentifier=a.instance_id)["DBInstances"][0]
    ib = aws("rds", "us-west-2").describe_db_instances(
        DBInstanceIdentifier=b.instance_id)["DBInstances"][0]
    return {"db_name": a.dbname, "master_username": a.user,
            # what drorch connects to in the lab (the runbook's endpoints): the lab's
            # moto binds each instance to its cluster by tags
            "primary_address": a.host, "port": a.port, "replica_address": b.host,
            "replica_port": b.port, "primary_instance_id": ia["DBInstanceIdentifier"],
            "replica_instance_id": ib["DBInstanceIdentifier"],
            "instance_arns": [ia["DBInstanceArn"], ib["DBInstanceArn"]]}


def _session_as(aws: Any, role_arn: str) -> dict[str, str]:
    creds = aws("sts", "us-east-1").assume_role(RoleArn=role_arn,
                                                RoleSessionName="drorch")["Credentials"]
    return {"AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"]}


@pytest.mark.usefixtures("needs_terraform")
def test_slow_apply_to_moto_then_runbook_plan_ready_and_a_failover_on_the_lab(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        worker_moto: tuple[int, Path]) -> None:
    """Slow (~1.5 min: the alarm chain's SQS resources take ~50 s against moto): the
    example's modules applied to the lab's moto (kind rds lab); `drorch runbook
    from-terraform` of its outputs; `drorch plan` with that runbook, as the role the iam
    module made, reports ready (exit 0, every check passing or not applicable); then a
    failover with that runbook runs on the lab and promotes the real standby."""
    from drorch.adapters.aws import AwsClients
    from tests.conftest import running_lab

    with running_lab(tmp_path, monkeypatch, ROOT / "runbooks" / "aws-rds.yaml",
                     moto=worker_moto) as lab:
        endpoint = lab.runbook.aws.endpoint_url
        assert endpoint
        aws = AwsClients(endpoint)
        root = tmp_path / "root"
        root.mkdir()
        (root / "main.tf").write_text(
            _chain_root(TF_ROOT / "modules", endpoint, _lab_database(aws, lab.runbook)))
        env = _env(tmp_path)
        _init(root, env)
        res = _tf(["apply", "-auto-approve", "-input=false", "-parallelism=30"], root, env,
                  timeout=300)
        assert res.returncode == 0, f"terraform apply:\n{res.stdout[-4000:]}{res.stderr}"
        outputs = _tf(["output", "-json"], root, env)
        assert outputs.returncode == 0, outputs.stderr
        (tmp_path / "outputs.json").write_text(outputs.stdout)
        role_arn = json.loads(outputs.stdout)["drorch_role_arn"]["value"]

        runbook_path = tmp_path / "tfapply.yaml"
        made = CliRunner().invoke(app, ["runbook", "from-terraform",
                                        str(tmp_path / "outputs.json"), "--out",
                                        str(runbook_path)])
        assert made.exit_code == 0, made.output
        runbook = load_runbook(runbook_path)
        assert runbook.health is not None and runbook.health.alarm_queue_url
        _alarm_chain_exists(aws, runbook.health)

        # The runbook names AWS's own endpoints (none): boto3 takes the lab's moto from
        # AWS_ENDPOINT_URL, as any endpoint override outside the runbook would be given.
        drorch_env = {**_session_as(aws, role_arn), "AWS_ENDPOINT_URL": endpoint,
                      "XDG_STATE_HOME": str(tmp_path / "xdg")}
        drorch_env.pop("DRORCH_STATE_DIR", None)
        plan = lab.cli("plan", "-r", str(runbook_path), "--output", "json",
                       extra_env=drorch_env)
        doc = json.loads(plan.stdout)
        bad = [r for r in doc["readiness"] if r["status"] in ("warn", "fail")]
        assert plan.returncode == 0 and doc["ready"] == "ready", json.dumps(bad, indent=1)
        status = {(r["check"], r["target"]): r["status"] for r in doc["readiness"]}
        assert {c for c, _ in status} >= {"database.replica", "secret", "dns.records",
                                           "dns.health_checks", "alarms", "write_flag",
                                           "iam"}
        assert status[("iam", "arn:aws:iam::123456789012:role/drorch-tfapply")] == "pass"

        failover = lab.cli("failover", "-r", str(runbook_path), "--yes", "--actor", "ci",
                           "--reason", "runbook from terraform", extra_env=drorch_env,
                           timeout=180)
        assert failover.returncode == 0, failover.stdout[-3000:] + failover.stderr[-3000:]
        rds = aws("rds", "us-west-2")
        promoted = rds.describe_db_instances(DBInstanceIdentifier="drorch-main-b"
                                             )["DBInstances"][0]
        assert not promoted.get("ReadReplicaSourceDBInstanceIdentifier")
        with psycopg.connect(runbook.database("main").endpoints["region-b"].dsn()) as c:
            assert not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        weights = {r["SetIdentifier"]: r["Weight"] for r in aws("route53", "us-east-1")
                   .list_resource_record_sets(HostedZoneId=_zone_id(aws))
                   ["ResourceRecordSets"] if "SetIdentifier" in r}
        assert weights == {"region-a": 0, "region-b": 100}
        # the audit archive Terraform made: the runbook names it, drorch's role ships
        # the failover's audit log and report there, and verify reads them back
        assert runbook.audit.archive is not None
        assert runbook.audit.archive.url == "s3://drorch-tfapply-audit/tfapply"
        lock = aws("s3", "us-east-1").get_object_lock_configuration(
            Bucket="drorch-tfapply-audit")["ObjectLockConfiguration"]
        assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
        assert aws("dynamodb", "us-east-1").describe_table(
            TableName="drorch-tfapply-journal")["Table"]["TableStatus"] == "ACTIVE"
        shipped = lab.cli("audit", "ship", "-r", str(runbook_path), extra_env=drorch_env)
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        verified = lab.cli("audit", "verify", "s3://drorch-tfapply-audit/tfapply", "-r",
                           str(runbook_path), extra_env=drorch_env)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def _zone_id(aws: Any) -> str:
    zones = aws("route53", "us-east-1").list_hosted_zones_by_name(DNSName="tf.drorch.test.")
    return str(zones["HostedZones"][0]["Id"]).split("/")[-1]


def _alarm_chain_exists(aws: Any, health: Any) -> None:
    """The queue (its policy lets SNS send), the alarms notifying the topic, the topic
    delivering to the queue: what the runbook names is what moto has."""
    sqs = aws("sqs", "us-west-2")
    attrs = sqs.get_queue_attributes(QueueUrl=health.alarm_queue_url,
                                     AttributeNames=["Policy", "QueueArn"])["Attributes"]
    statement = json.loads(attrs["Policy"])["Statement"][0]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    cw = aws("cloudwatch", "us-west-2")
    names = sorted(health.alarm_regions)
    alarms = cw.describe_alarms(AlarmNames=names)["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == names
    topic = alarms[0]["AlarmActions"][0]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == topic
    subs = aws("sns", "us-west-2").list_subscriptions_by_topic(TopicArn=topic)
    assert [(s["Protocol"], s["Endpoint"]) for s in subs["Subscriptions"]] == [
        ("sqs", attrs["QueueArn"])]


# -- checkov (its own virtual environment) ----------------------------------------------

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
_SKIP_COMMENT = re.compile(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.+)")


@pytest.fixture(scope="module")
def checkov() -> Path:
    """checkov from ``.venv-checkov`` (``make .venv-checkov/.installed`` builds it: it pins
    old boto3 and packaging, so never in the project's venv); skipped, saying why, when
    it cannot be built here (no PyPI)."""
    if not CHECKOV.exists():
        build = subprocess.run(["make", "-C", str(ROOT), ".venv-checkov/.installed"],
                               capture_output=True, text=True, timeout=600, check=False)
        if build.returncode != 0 or not CHECKOV.exists():
            pytest.skip("checkov's virtual environment could not be built (make "
                        f".venv-checkov/.installed exited {build.returncode}: "
                        f"{(build.stderr or build.stdout).strip()[-300:]})")
    return CHECKOV


def test_checkov_passes_on_the_terraform_tree(checkov: Path, tmp_path: Path) -> None:
    """`make checkov`'s command: no failed check on terraform/ (offline: no policy
    download, no mapping call)."""
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "HOME": str(tmp_path)}
    res = subprocess.run([str(checkov), "-d", str(TF_ROOT), "--framework", "terraform",
                          "--skip-download", "--quiet", "--compact", "-o", "json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    reports = json.loads(res.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(f["check_id"], f["resource"], f["file_path"])
              for r in reports for f in r["results"]["failed_checks"]]
    assert failed == [] and res.returncode == 0, failed or res.stderr[-2000:]
    assert sum(r["summary"]["passed"] for r in reports) > 100  # it did look


def test_every_skipped_check_is_listed_with_its_reason_in_the_module_readme() -> None:
    """Each ``#checkov:skip=ID:reason`` of a module is a row of its README's "Checks
    skipped (checkov)" table, with that reason; no row without its skip."""
    for module in MODULES:
        directory = TF_ROOT / "modules" / module
        skips = {(m.group(1), m.group(2).strip()) for tf in directory.glob("*.tf")
                 for m in _SKIP_COMMENT.finditer(tf.read_text())}
        readme = (directory / "README.md").read_text()
        section = readme.split("## Checks skipped (checkov)", 1)[1] if skips else ""
        for check_id, reason in skips:
            rows = [line for line in section.splitlines() if f"`{check_id}`" in line]
            assert rows and reason in rows[0], f"{module}: {check_id} not in its README"
        listed = set(re.findall(r"^\| `(CKV2?_[A-Z]+_\d+)`", section, re.M))
        assert listed == {c for c, _ in skips}, module
    for example in (c for c in CONFIGS if c.startswith("examples/")):
        for tf in (TF_ROOT / example).glob("*.tf"):
            assert "#checkov:skip" not in tf.read_text(), f"{tf}: skip checks in modules"
