"""The Terraform under ``terraform/``: formatted, valid, and (a subset) applied to moto.

- ``terraform fmt -check -recursive`` on the whole tree;
- ``terraform init -plugin-dir`` + ``terraform validate`` of every module and of
  ``examples/two-region``, each in a copy under ``tmp_path`` (nothing is written into
  the repository). A module that takes an aliased provider (``configuration_aliases``)
  cannot be validated alone without a configuration for the alias, so its copy gets
  an empty ``provider "aws" { alias = ... }`` block: the module itself is unchanged;
- slow: an apply against the lab's moto server of the write flags (both regions), the
  connection secret and the alarm chain, whose ``terraform output -json`` (shaped as
  the example's) goes through ``drorch runbook from-terraform`` and loads.

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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from drorch.cli import app
from drorch.config import load_runbook
from tests.conftest import REQUIRE_REAL_PARTS, ROOT

TF_ROOT = ROOT / "terraform"
MODULES = sorted(p.name for p in (TF_ROOT / "modules").iterdir() if p.is_dir())
CONFIGS = ["examples/two-region"]
"""Validated configurations. The example calls every module, so validating it checks
each module's code with real inputs; validating each module alone as well cost ~4 s of
CPU per module (the provider's schema loaded again) for little more."""
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

_POLICY_SERVICES = ("ssm", "secretsmanager", "route53", "sqs", "rds", "cloudwatch", "sns",
                    "iam", "sts")
# IAM authorises a batch call as its single-message action
# (https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-api-permissions-reference.html)
_AUTHORISED_AS = {"sqs:DeleteMessageBatch": "sqs:DeleteMessage"}
_NO_PERMISSION = {"sts:GetCallerIdentity"}
"""Calls IAM always allows ("No permissions are required to perform this operation",
STS API Reference, GetCallerIdentity)."""
_WAITERS = {"db_instance_available": "rds:DescribeDBInstances"}


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
                assert len(actions) <= 1, f"{name} in {path} is ambiguous: {actions}"
                for action in actions - _NO_PERMISSION:
                    action = _AUTHORISED_AS.get(action, action)
                    found.setdefault(action, set()).add(str(path.relative_to(ROOT)))
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


# -- apply against moto (slow) ----------------------------------------------------------

_SERVICES = ("cloudwatch", "iam", "secretsmanager", "sns", "sqs", "ssm", "sts")

APPLY_ALARMS = os.environ.get("DRORCH_TEST_TF_APPLY_ALARMS") == "1"
"""The alarm chain's SQS queue and queue policy take ~25 s each to apply even against
moto (the provider waits for their attributes to settle), which would put this test
far over its time budget: they are applied only when this is set; otherwise
``terraform validate`` covers them and the ``alarms`` output carries fixed values."""


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

  endpoints {{
{endpoints}
  }}
}}
"""


def _alarms_hcl(modules: Path) -> str:
    """The alarm chain's module call and ``alarms`` output, or fixed values shaped as
    the module's outputs."""
    if APPLY_ALARMS:
        return f"""
module "alarms" {{
  source           = "{modules}/alarms"
  providers        = {{ aws = aws.us_east_1 }}
  name_prefix      = "drorch-tfapply"
  health_check_ids = {{ "region-a" = "hc-region-a", "region-b" = "hc-region-b" }}
}}

output "alarms" {{
  value = {{
    queue_url   = module.alarms.queue_url
    aws_region  = module.alarms.aws_region
    alarm_names = module.alarms.alarm_names
  }}
}}
"""
    return """
output "alarms" {
  value = {
    queue_url  = "https://sqs.us-east-1.amazonaws.com/123456789012/drorch-tfapply-alarms"
    aws_region = "us-east-1"
    alarm_names = {
      "region-a" = "drorch-tfapply-region-a-unhealthy"
      "region-b" = "drorch-tfapply-region-b-unhealthy"
    }
  }
}
"""


def _subset_root(modules: Path, endpoint: str) -> str:
    """A root applying the write flags and the secret in both regions (and the alarm
    chain with ``DRORCH_TEST_TF_APPLY_ALARMS=1``), with outputs shaped as
    ``examples/two-region``'s; what it does not create (DNS records, the database) it
    outputs as fixed values, as the example would."""
    providers = "\n".join(_provider(a, r, endpoint) for a, r in
                          (("primary", "us-east-1"), ("secondary", "us-west-2"),
                           ("us_east_1", "us-east-1")))
    return providers + _alarms_hcl(modules) + f"""
terraform {{
  required_providers {{
    aws = {{
      source  = "hashicorp/aws"
      version = "= 5.100.0"
    }}
  }}
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
  initial_value           = {{ host = "db-a.example.test", port = "5432" }}
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
    name              = "main"
    kind              = "rds"
    global_cluster_id = null
    dbname            = "app"
    user              = "postgres"
    endpoints = {{
      "region-a" = {{
        host = "db-a.example.test", port = 5432, instance_id = "tfapply-main-a", cluster_id = null
      }}
      "region-b" = {{
        host = "db-b.example.test", port = 5432, instance_id = "tfapply-main-b", cluster_id = null
      }}
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
    zone             = "example.test."
    record_name      = "app.example.test."
    record_type      = "A"
    ttl              = 60
    set_identifiers  = {{ "region-a" = "region-a", "region-b" = "region-b" }}
    health_check_ids = {{ "region-a" = "hc-region-a", "region-b" = "hc-region-b" }}
  }}
}}

output "write_flag" {{
  value = {{ parameter = module.write_flag_primary.parameter_name }}
}}
"""


@pytest.fixture
def moto_server(tmp_path: Path) -> Iterator[int]:
    from drorch.lab.lab import start_moto, stop_pid
    from drorch.lab.ports import free_port

    port = free_port()
    pid = start_moto(port, tmp_path / "moto.log")
    try:
        yield port
    finally:
        stop_pid(pid)


def _alarm_chain_exists(session: Any, endpoint: str, health: Any) -> None:
    """The queue (its policy lets SNS send), the alarms notifying the topic, the topic
    delivering to the queue: what the runbook names is what moto has."""
    sqs = session.client("sqs", region_name="us-east-1", endpoint_url=endpoint)
    attrs = sqs.get_queue_attributes(QueueUrl=health.alarm_queue_url,
                                     AttributeNames=["Policy", "QueueArn"])["Attributes"]
    statement = json.loads(attrs["Policy"])["Statement"][0]
    assert statement["Principal"] == {"Service": "sns.amazonaws.com"}
    cw = session.client("cloudwatch", region_name="us-east-1", endpoint_url=endpoint)
    names = sorted(health.alarm_regions)
    alarms = cw.describe_alarms(AlarmNames=names)["MetricAlarms"]
    assert sorted(a["AlarmName"] for a in alarms) == names
    topic = alarms[0]["AlarmActions"][0]
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == topic
    sns = session.client("sns", region_name="us-east-1", endpoint_url=endpoint)
    subs = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subs] == [("sqs", attrs["QueueArn"])]


@pytest.mark.usefixtures("needs_terraform")
def test_slow_apply_subset_to_moto_then_runbook_loads(tmp_path: Path, moto_server: int) -> None:
    """Slow (~15-25 s; about a minute more with DRORCH_TEST_TF_APPLY_ALARMS=1): the
    write flags and the secret (and the alarm chain) applied to moto; their outputs make
    a runbook that loads and names exactly what was created."""
    import boto3

    root = tmp_path / "root"
    root.mkdir()
    endpoint = f"http://127.0.0.1:{moto_server}"
    (root / "main.tf").write_text(_subset_root(TF_ROOT / "modules", endpoint))
    env = _env(tmp_path)
    _init(root, env)
    res = _tf(["apply", "-auto-approve", "-input=false", "-parallelism=20"], root, env,
              timeout=240)
    assert res.returncode == 0, f"terraform apply:\n{res.stdout[-4000:]}{res.stderr}"
    outputs = _tf(["output", "-json"], root, env)
    assert outputs.returncode == 0, outputs.stderr
    (tmp_path / "outputs.json").write_text(outputs.stdout)

    out = tmp_path / "runbook.yaml"
    cli = CliRunner().invoke(app, ["runbook", "from-terraform", str(tmp_path / "outputs.json"),
                                   "--out", str(out)])
    assert cli.exit_code == 0, cli.output
    runbook = load_runbook(out)

    session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test")
    assert runbook.health is not None and runbook.health.alarm_queue_url
    if APPLY_ALARMS:
        _alarm_chain_exists(session, endpoint, runbook.health)
    assert runbook.write_flag is not None
    assert sorted(s.region for s in runbook.secrets) == ["region-a", "region-b"]
    for region in ("us-east-1", "us-west-2"):
        ssm = session.client("ssm", region_name=region, endpoint_url=endpoint)
        flag = ssm.get_parameter(Name=runbook.write_flag.parameter)["Parameter"]
        assert flag["Value"] == "false"
        sm = session.client("secretsmanager", region_name=region, endpoint_url=endpoint)
        value = json.loads(sm.get_secret_value(SecretId=runbook.secrets[0].secret_id)
                           ["SecretString"])
        assert value == {"host": "db-a.example.test", "port": "5432"}


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
    for example in CONFIGS:
        for tf in (TF_ROOT / example).glob("*.tf"):
            assert "#checkov:skip" not in tf.read_text(), f"{tf}: skip checks in modules"
