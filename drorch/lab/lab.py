"""The local two-region lab: builds what a lab runbook names, on 127.0.0.1 only.

``up`` starts a moto server (AWS), a PostgreSQL primary in the primary region
and a streaming replica in the other for every database pair, then creates the
Route 53 zone with weighted records, the connection secrets and the write
flags. It writes ``<state_dir>/lab/state.json`` so ``down`` stops exactly what
``up`` started. Nothing here is used by a real failover.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets as _random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from drorch.adapters.aws import AwsClients
from drorch.adapters.nodes import node_path
from drorch.config import Runbook
from drorch.lab import alarms as alarm_chain
from drorch.lab import audit_bucket, managed_roles, require_lab_extra, schema, services
from drorch.lab.moto_server import (
    LAB_ADDRESS_TAG,
    LAB_DATADIR_TAG,
    LAB_DSN_TAG,
    LAB_LOGFILE_TAG,
)
from drorch.lab.ports import current_block
from drorch.lab.postgres import PgNode, init_pair, make_owned_dir
from drorch.lab.rds_nodes import kept_clusters
from drorch.procs import pid_alive

REGION_ADDRESS = {0: "127.0.1.1", 1: "127.0.2.1"}
"""Each lab region's services listen on their own loopback address (DNS A records)."""


@dataclass
class LabState:
    runbook: str
    moto_pid: int | None = None
    moto_port: int | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LabState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None


def lab_dir(runbook: Runbook) -> Path:
    return Path(runbook.state_dir) / "lab"


def state_path(runbook: Runbook) -> Path:
    return lab_dir(runbook) / "state.json"


def region_address(runbook: Runbook, region: str) -> str:
    return REGION_ADDRESS[[r.name for r in runbook.regions].index(region)]


def pg_dir(runbook: Runbook) -> Path:
    """Where the lab's clusters live. As root the server runs as ``postgres``, which
    cannot enter a 0700 parent (``/root``, pytest's tmp): then a fixed place under
    the system temp dir, derived from the state dir so every command finds it."""
    base = lab_dir(runbook).resolve() / "pg"
    if os.geteuid() != 0 or all(p.stat().st_mode & stat.S_IXOTH
                                for p in base.parents if p.exists()):
        return base
    digest = hashlib.sha1(str(base).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"drorch-lab-{digest}"


def _link_pg_dir(runbook: Runbook) -> None:
    """Make ``<state_dir>/lab/pg`` name the clusters' directory (a symbolic link when
    :func:`pg_dir` had to move it under the system temp dir), so a runbook can name each
    node's data directory under its state directory (``endpoints.*.node``): drorch's node
    control follows the link."""
    logical = lab_dir(runbook) / "pg"
    real = pg_dir(runbook)
    if logical.resolve() == real.resolve():
        return
    if logical.is_symlink() or logical.exists():
        logical.unlink()
    logical.symlink_to(real, target_is_directory=True)


def check_node_paths(runbook: Runbook) -> list[str]:
    """Endpoints whose ``node.data_directory`` is not where the lab keeps that cluster:
    the failback would stop, rewind or rebuild another directory than the lab's."""
    out = []
    for db in runbook.databases:
        for region, ep in db.endpoints.items():
            if ep.node is None:
                continue
            want = node_for(runbook, db.name, region).datadir.resolve()
            named = lab_dir(runbook).resolve() / "pg" / db.name / region / "data"
            have = node_path(ep.node.data_directory, runbook.state_dir)
            if have not in (want, named):
                out.append(f"databases[{db.name}].endpoints.{region}.node.data_directory is "
                           f"{ep.node.data_directory}; the lab keeps that cluster in {want}")
    return out


def node_for(runbook: Runbook, db: str, region: str) -> PgNode:
    ep = runbook.database(db).endpoints[region]
    base = pg_dir(runbook) / db / region
    return PgNode(f"{db}-{region}", base / "data", ep.port, base)


def _moto_port(runbook: Runbook) -> int:
    url = runbook.aws.endpoint_url or ""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("a lab runbook's aws.endpoint_url must be http://127.0.0.1:PORT")
    return int(url.rsplit(":", 1)[1].split("/")[0])


def _region_endpoint_ports(runbook: Runbook) -> dict[str, int]:
    """The lab's per-AWS-region endpoints (relays in front of moto), by AWS region."""
    out = {}
    for aws_region, url in runbook.aws.region_endpoints.items():
        if not url.startswith("http://127.0.0.1:"):
            raise ValueError(f"a lab runbook's aws.region_endpoints[{aws_region}] must be "
                             "http://127.0.0.1:PORT")
        out[aws_region] = int(url.rsplit(":", 1)[1].split("/")[0])
    return out


def aws_service_name(runbook: Runbook, region: str) -> str | None:
    """The lab service (in ``LabState.services``) that is ``region``'s AWS API, if any."""
    aws_region = runbook.region(region).aws_region
    return f"aws:{aws_region}" if aws_region in runbook.aws.region_endpoints else None


REUSE_MOTO_ENV = "DRORCH_LAB_REUSE_MOTO"
"""The test suite sets it to the log file of a moto server it keeps running on the
runbook's moto port: ``up`` then wipes that server (``POST /moto-api/reset``) and uses
it instead of starting one, and ``down`` leaves it running. A moto server's start and
its first requests (each service's backend loaded on first use) cost ~2.5 s of CPU and
~3 s on the way to a running lab; a reset costs milliseconds."""


def moto_log(runbook: Runbook) -> Path:
    """The log of the moto server this lab uses (its own, or the reused one)."""
    shared = os.environ.get(REUSE_MOTO_ENV)
    return Path(shared) if shared else lab_dir(runbook) / "moto.log"


def moto_actions(runbook: Runbook) -> Counter[tuple[str, str, str]]:
    """(service, AWS region, action) -> how many times this lab's moto answered it since
    the lab came up (a reused server's log is read from its last reset on)."""
    from drorch.lab.moto_server import ACTION_LOG_PREFIX

    lines = moto_log(runbook).read_text(errors="replace").splitlines()
    resets = [i for i, line in enumerate(lines) if "/moto-api/reset" in line]
    out: Counter[tuple[str, str, str]] = Counter()
    for line in lines[resets[-1] + 1 if resets else 0:]:
        if line.startswith(ACTION_LOG_PREFIX):
            _prefix, service, region, action = line.split()[:4]
            out[(service, region, action)] += 1
    return out


def _moto_for_lab(port: int, logfile: Path) -> int | None:
    """Start the lab's moto server (its PID), or reset the reused one (None: not ours to
    stop)."""
    if os.environ.get(REUSE_MOTO_ENV):
        try:
            httpx.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10
                       ).raise_for_status()
            return None
        except httpx.HTTPError:
            pass  # not running (any more): start one of our own
    return start_moto(port, logfile)


MOTO_PORTS = 40
"""Ports carved from the starting process's block for the moto server's own use: the
clusters of RDS instances it renames (:mod:`drorch.lab.rds_nodes`) move to them."""


def start_moto(port: int, logfile: Path) -> int:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    own = current_block().carve(MOTO_PORTS)
    env = {**os.environ, "DRORCH_LAB_PORTS": f"{own.low}-{own.high}"}
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drorch.lab.moto_server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited ({proc.returncode}); see {logfile}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/moto-api/", timeout=0.5)
            return proc.pid
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"moto server did not answer on port {port} within 30s")


def stop_pid(pid: int | None) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # a hung (SIGSTOPped) service must hear SIGTERM
        services.stop_pid(pid)


def _wait_streaming(primary: PgNode, replica: PgNode, timeout_s: float = 30) -> None:
    """Until the replica streams and has replayed everything the primary wrote so far."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    with psycopg.connect(primary.dsn(), autocommit=True) as c:
        goal = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        while time.monotonic() < deadline:
            row = c.execute("SELECT count(*) FROM pg_stat_replication WHERE state='streaming' "
                            "AND replay_lsn >= %s", (goal,)).fetchone()
            if row and row[0] >= 1:
                return
            time.sleep(0.05)
    raise RuntimeError(f"{replica.name} did not start streaming from {primary.name}")


def _create_aws(runbook: Runbook, aws: AwsClients, password: str) -> None:
    calls: list[tuple[Any, ...]] = []
    if runbook.write_flag:
        calls += [(_create_flag, runbook, aws, region.aws_region) for region in runbook.regions]
    calls += [(_create_secret, runbook, aws, spec, password) for spec in runbook.secrets]
    if runbook.dns:
        calls.append((_create_zone, runbook, aws))
    elif alarm_chain.chain_for(runbook) is not None:
        calls.append((_create_alarm_chain, runbook, aws))
    if runbook.audit.archive is not None:
        calls.append((audit_bucket.create, runbook, aws))
    calls += [(_create_rds_pair, runbook, aws, db.name, password)
              for db in runbook.databases if db.kind == "rds"]
    calls += [(_create_aurora_pair, runbook, aws, db.name, password)
              for db in runbook.databases if db.kind == "aurora-global"]
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        _all(pool, calls)


def _create_rds_pair(runbook: Runbook, aws: AwsClients, db_name: str, password: str) -> None:
    """A kind-rds database in the lab: the primary's DB instance in the primary region and
    its cross-region read replica (source named by ARN, as RDS requires across regions),
    each bound to the lab's cluster in that region by tags."""
    db = runbook.database(db_name)
    primary, secondary = runbook.primary, runbook.secondary

    def tags(region: str) -> list[dict[str, str]]:
        return _lab_tags(runbook, db_name, region)

    ep_a, ep_b = db.endpoints[primary.name], db.endpoints[secondary.name]
    made = aws("rds", primary.aws_region).create_db_instance(
        DBInstanceIdentifier=ep_a.instance_id, Engine="postgres", EngineVersion="15.8",
        DBInstanceClass="db.t3.micro", AllocatedStorage=20, MasterUsername="postgres",
        MasterUserPassword=password, Port=ep_a.port, BackupRetentionPeriod=1,
        Tags=tags(primary.name))
    aws("rds", secondary.aws_region).create_db_instance_read_replica(
        DBInstanceIdentifier=ep_b.instance_id,
        SourceDBInstanceIdentifier=made["DBInstance"]["DBInstanceArn"],
        DBInstanceClass="db.t3.micro", Port=ep_b.port, Tags=tags(secondary.name))


def _lab_tags(runbook: Runbook, db_name: str, region: str) -> list[dict[str, str]]:
    """Tags that bind a moto RDS resource to the lab's cluster in ``region``."""
    ep = runbook.database(db_name).endpoints[region]
    node = node_for(runbook, db_name, region)
    return [{"Key": LAB_ADDRESS_TAG, "Value": ep.host},
            {"Key": LAB_DSN_TAG, "Value": node.dsn()},
            {"Key": LAB_DATADIR_TAG, "Value": str(node.datadir)},
            {"Key": LAB_LOGFILE_TAG, "Value": str(node.logfile)},
            {"Key": "drorch:database", "Value": db_name}]


def _create_aurora_pair(runbook: Runbook, aws: AwsClients, db_name: str,
                        password: str) -> None:
    """A kind-aurora-global database in the lab: the global cluster, its primary regional
    cluster in the primary region and a secondary in the other, each bound to the lab's
    cluster there by tags (the writer endpoint answers with it, becoming the writer
    promotes it)."""
    db = runbook.database(db_name)
    primary, secondary = runbook.primary, runbook.secondary
    engine = {"Engine": "aurora-postgresql", "EngineVersion": "15.4"}
    east = aws("rds", primary.aws_region)
    east.create_global_cluster(GlobalClusterIdentifier=db.global_cluster_id, **engine)
    east.create_db_cluster(
        DBClusterIdentifier=db.endpoints[primary.name].cluster_id,
        GlobalClusterIdentifier=db.global_cluster_id, MasterUsername="postgres",
        MasterUserPassword=password, Port=db.endpoints[primary.name].port,
        Tags=_lab_tags(runbook, db_name, primary.name), **engine)
    aws("rds", secondary.aws_region).create_db_cluster(
        DBClusterIdentifier=db.endpoints[secondary.name].cluster_id,
        GlobalClusterIdentifier=db.global_cluster_id,
        Port=db.endpoints[secondary.name].port,
        Tags=_lab_tags(runbook, db_name, secondary.name), **engine)


def _create_flag(runbook: Runbook, aws: AwsClients, aws_region: str) -> None:
    assert runbook.write_flag is not None
    aws("ssm", aws_region).put_parameter(Name=runbook.write_flag.parameter, Value="false",
                                         Type="String", Overwrite=True)


def _create_secret(runbook: Runbook, aws: AwsClients, spec: Any, password: str) -> None:
    primary = runbook.primary.name
    db = runbook.database(spec.database)
    ep = db.endpoints[primary]
    value = {"engine": "postgres", spec.host_key: ep.host, spec.port_key: ep.port,
             "dbname": ep.dbname, "username": schema.APP_ROLE, "password": password}
    client = aws("secretsmanager", runbook.region(spec.region).aws_region)
    try:
        client.create_secret(Name=spec.secret_id, SecretString=json.dumps(value))
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=spec.secret_id, SecretString=json.dumps(value))


def _create_alarm_chain(runbook: Runbook, aws: AwsClients) -> dict[str, str]:
    """Route 53 health checks -> CloudWatch alarms -> SNS -> SQS (``drorch.lab.alarms``);
    region -> health check id."""
    return alarm_chain.create(runbook, aws, {r.name: region_address(runbook, r.name)
                                             for r in runbook.regions})


def _create_zone(runbook: Runbook, aws: AwsClients) -> None:
    """The zone and its weighted records, each tied to its region's health check when
    the runbook wires an alarm chain (as ``terraform/modules/route53-failover`` does)."""
    assert runbook.dns is not None
    checks = _create_alarm_chain(runbook, aws)
    primary = runbook.primary.name
    r53 = aws("route53", "us-east-1")
    zone = r53.create_hosted_zone(Name=runbook.dns.zone,
                                  CallerReference=f"drorch-lab-{time.time()}")
    zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    changes = []
    for rec in runbook.dns.records:
        for region in runbook.regions:
            changes.append({"Action": "UPSERT", "ResourceRecordSet": {
                "Name": rec.name, "Type": rec.type, "TTL": 5,
                "SetIdentifier": rec.set_identifiers[region.name],
                "Weight": runbook.dns.active_weight if region.name == primary else 0,
                **({"HealthCheckId": checks[region.name]} if region.name in checks else {}),
                "ResourceRecords": [{"Value": region_address(runbook, region.name)}]}})
    r53.change_resource_record_sets(HostedZoneId=zone_id,
                                    ChangeBatch={"Comment": "lab", "Changes": changes})


def up(runbook: Runbook) -> LabState:
    """Start the lab. Refuses when a lab from this state directory is still running.

    Independent parts start side by side (moto while the clusters initialise, one
    thread per database pair, the services together): most of the time is spent
    waiting for other processes, so threads cut ``up`` to about the slowest part.
    """
    require_lab_extra()
    path = state_path(runbook)
    existing = LabState.load(path)
    if existing is not None:
        raise RuntimeError(f"a lab is already up ({path}); run `drorch lab down` first")
    wrong = check_node_paths(runbook)
    if wrong:
        raise RuntimeError("the runbook's node control does not name the lab's clusters: "
                           + "; ".join(wrong))
    base = lab_dir(runbook)
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    state = _Recorder(LabState(runbook=runbook.name, started_at=time.time()), path)
    state.state.moto_port = _moto_port(runbook)
    password = _random.token_urlsafe(18)
    pool = ThreadPoolExecutor(max_workers=max(4, len(runbook.databases) + 2))
    moto = pool.submit(_moto_for_lab, state.state.moto_port, moto_log(runbook))
    try:
        make_owned_dir(pg_dir(runbook), 0o755)
        _link_pg_dir(runbook)
        def aws_when_moto_answers() -> None:
            state.update(lambda s: setattr(s, "moto_pid", moto.result()))
            _create_aws(runbook, AwsClients(runbook.aws.endpoint_url), password)

        _all(pool, [(aws_when_moto_answers,),
                    *((_up_pair, runbook, db.name, password, state)
                      for db in runbook.databases)])
        if runbook.lab is not None:
            _start_services(runbook, state, pool)
    except BaseException:
        with contextlib.suppress(Exception):
            state.update(lambda s: setattr(s, "moto_pid", moto.result()))
        down(runbook)
        raise
    finally:
        pool.shutdown(wait=True)
    return state.state


class _Recorder:
    """The lab state, saved after every change so ``down`` finds whatever has started,
    whichever thread started it."""

    def __init__(self, state: LabState, path: Path) -> None:
        self.state, self.path, self._lock = state, path, threading.Lock()
        state.save(path)

    def update(self, change: Callable[[LabState], object]) -> None:
        with self._lock:
            change(self.state)
            self.state.save(self.path)


def _all(pool: ThreadPoolExecutor, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Run the calls side by side; wait for all of them, then raise the first failure."""
    futures = [pool.submit(*call) for call in calls]
    wait(futures)
    return [f.result() for f in futures]


def _up_pair(runbook: Runbook, db_name: str, password: str, state: _Recorder) -> None:
    import psycopg

    primary, secondary = runbook.primary.name, runbook.secondary.name
    node_a = node_for(runbook, db_name, primary)
    node_b = node_for(runbook, db_name, secondary)
    make_owned_dir(node_a.rundir.parent, 0o755)
    cloned = init_pair(node_a, node_b)  # region-b cloned before region-a first starts
    node_a.start()
    state.update(lambda s: s.nodes.append({"db": db_name, "region": primary,
                                           **_node_dict(node_a)}))
    if cloned:  # streams region-a's schema as it is made
        node_b.start()
        state.update(lambda s: s.nodes.append({"db": db_name, "region": secondary,
                                               **_node_dict(node_b)}))
    ep = runbook.database(db_name).endpoints[primary]
    schema.create_database_and_schema(node_a.dsn(), password, dbname=ep.dbname)
    with psycopg.connect(node_a.dsn(ep.dbname), autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    if runbook.database(db_name).kind in ("rds", "aurora-global"):  # RDS's master user
        managed_roles.emulate_master_user(node_a.dsn(), ep.dbname, ep.user)
    if cloned:
        _wait_streaming(node_a, node_b)
        return
    node_b.init_replica_of(node_a)
    node_b.start()
    state.update(lambda s: s.nodes.append({"db": db_name, "region": secondary,
                                           **_node_dict(node_b)}))
    _wait_streaming(node_a, node_b)


def mail_dir(runbook: Runbook) -> Path:
    return lab_dir(runbook) / "mail"


def app_config(runbook: Runbook, region: str) -> dict[str, Any]:
    assert runbook.lab is not None and runbook.aws.endpoint_url
    secret = next(s for s in runbook.secrets if s.region == region)
    return {
        "region": region, "aws_region": runbook.region(region).aws_region,
        "endpoint_url": runbook.aws.region_endpoints.get(runbook.region(region).aws_region,
                                                          runbook.aws.endpoint_url),
        "secret_id": secret.secret_id,
        "flag_parameter": runbook.write_flag.parameter if runbook.write_flag else
        "/drorch/lab/writes-frozen",
        "smtp_host": "127.0.0.1", "smtp_port": runbook.lab.smtp_port,
        "listen_host": region_address(runbook, region), "listen_port": runbook.lab.app_port,
    }


def start_app(runbook: Runbook, region: str) -> int:
    """Start (or restart) one region's sample app and record its PID in the lab state."""
    path = state_path(runbook)
    state = LabState.load(path)
    if state is None:
        raise RuntimeError("the lab is not up")
    stop_pid(state.services.get(f"app:{region}"))
    pid = services.start_app(app_config(runbook, region), lab_dir(runbook) / f"app-{region}.log")
    state.services[f"app:{region}"] = pid
    state.save(path)
    return pid


def _start_services(runbook: Runbook, state: _Recorder, pool: ThreadPoolExecutor) -> None:
    assert runbook.lab is not None and runbook.aws.endpoint_url
    base, lab = lab_dir(runbook), runbook.lab
    starts: dict[str, Callable[[], int]] = {"smtp": partial(
        services.start_smtp_sink, "127.0.0.1", lab.smtp_port, store=mail_dir(runbook),
        log_path=base / "smtp.log")}
    if runbook.dns:
        starts["dns"] = partial(
            services.start_dns, "127.0.0.1", lab.dns_port, endpoint_url=runbook.aws.endpoint_url,
            zone=runbook.dns.zone, log_path=base / "dns.log")
    for aws_region, port in _region_endpoint_ports(runbook).items():
        starts[f"aws:{aws_region}"] = partial(
            services.start_aws_proxy, port, _moto_port(runbook),
            log_path=base / f"aws-{aws_region}.log")
    for region in runbook.regions:
        starts[f"app:{region.name}"] = partial(
            services.start_app, app_config(runbook, region.name), base / f"app-{region.name}.log")

    def start(name: str) -> None:
        pid = starts[name]()
        state.update(lambda s: s.services.__setitem__(name, pid))

    _all(pool, [(start, name) for name in starts])


def _pid_file_port(datadir: Path) -> int:
    """The port in a data directory's ``postmaster.pid`` (its fourth line), 0 without one."""
    try:
        return int((datadir / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return 0


def _stop_node(node: PgNode) -> None:
    if node.is_running():
        node.signal_all(signal.SIGCONT)
        node.stop("immediate")
        if node.is_running():
            node.kill()


def _node_dict(node: PgNode) -> dict[str, Any]:
    return {"name": node.name, "datadir": str(node.datadir), "port": node.port,
            "rundir": str(node.rundir)}


class LabDownIncomplete(RuntimeError):
    """Something the lab started could not be stopped; its state file is kept so
    ``drorch lab down`` can be run again."""


def down(runbook: Runbook) -> list[str]:
    """Stop exactly what ``up`` recorded and remove the lab's files. Safe to run twice.

    Every part is stopped even when another part fails to stop (a half-stopped lab
    leaves servers running after the caller is gone); the failures are raised
    together at the end, as ``LabDownIncomplete``, and the state file stays.
    """
    path = state_path(runbook)
    state = LabState.load(path)
    stopped: list[str] = []
    if state is None:
        return stopped
    from drorch.lab import faults

    errors: list[str] = []

    def attempt(what: str, action: Callable[..., Any], *args: Any) -> Any:
        try:
            return action(*args)
        except Exception as exc:  # noqa: BLE001 (collected, raised after the rest is stopped)
            errors.append(f"{what}: {exc}")
            return None

    stopped += attempt("releasing faults", faults.release_all, runbook) or []
    nodes = [PgNode(n["name"], Path(n["datadir"]), n["port"], Path(n["rundir"]))
             for n in state.nodes]
    # clusters of RDS instances a failback renamed and kept (drorch.lab.rds_nodes)
    nodes += [PgNode(kept.name, kept, _pid_file_port(kept), Path(n["rundir"]))
              for n in state.nodes for kept in kept_clusters(Path(n["datadir"]))]
    pids: dict[str, int | None] = {**state.services, "moto": state.moto_pid}
    with ThreadPoolExecutor(max_workers=8) as pool:  # each stop mostly waits
        list(pool.map(lambda item: attempt(item[0], stop_pid, item[1]), pids.items()))
        list(pool.map(lambda n: attempt(f"postgres {n.name}", _stop_node, n), nodes))
    still = [name for name, pid in pids.items() if pid and pid_alive(pid)]
    still += [f"postgres {n.name}" for n in nodes if n.is_running()]
    if still or errors:
        raise LabDownIncomplete(
            f"lab down left {', '.join(still) or 'nothing'} running"
            + (f" ({'; '.join(errors)})" if errors else "")
            + f"; {path} is kept: run `drorch lab down` again")
    stopped += [*state.services, *(f"postgres {n.name}" for n in nodes), "moto"]
    shutil.rmtree(pg_dir(runbook), ignore_errors=True)
    shutil.rmtree(lab_dir(runbook), ignore_errors=True)
    return stopped
