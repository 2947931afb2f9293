"""The lab's moto server answers PromoteReadReplica as the Amazon RDS API Reference
documents it, for RDS for PostgreSQL instances with a cross-region read replica, and
promotes the real PostgreSQL standby an instance is bound to (tag ``drorch:lab-dsn``)
before it answers; ``drorch:lab-address`` makes ``Endpoint.Address`` the real address.

The server is the one the lab starts (``drorch.lab.lab.start_moto``), spoken to over
HTTP with boto3; the clusters are real PostgreSQL 15 (``drorch.lab.postgres.PgNode``).

References: https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_PromoteReadReplica.html,
API_CreateDBInstanceReadReplica.html, and ``awscli/examples/rds/promote-read-replica.rst``
(the response shows ``DBInstanceStatus: modifying`` with the source still set).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from drorch.lab.moto_server import LAB_ADDRESS_TAG, LAB_DSN_TAG, PROMOTE_SECONDS_ENV
from drorch.lab.ports import free_port
from drorch.lab.postgres import PgNode, pg_available
from tests.conftest import moto_server

PRIMARY_REGION = "us-east-1"
REPLICA_REGION = "us-west-2"
SLOW_PROMOTE_S = 3.0

@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from moto_server(tmp_path_factory.mktemp("moto"), "moto")


@pytest.fixture(scope="module")
def slow_moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from moto_server(tmp_path_factory.mktemp("moto-slow"), "moto-slow",
                           {PROMOTE_SECONDS_ENV: str(SLOW_PROMOTE_S)})


@pytest.fixture(scope="module")
def pgdir() -> Iterator[Path]:
    """Not pytest's tmp_path: the postgres user must be able to enter it."""
    root = Path(tempfile.mkdtemp(prefix="drorch-motords-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _node(root: Path, name: str) -> PgNode:
    return PgNode(name, root / name / "data", free_port(), root / name)


@pytest.fixture(scope="module")
def primary(pgdir: Path) -> Iterator[PgNode]:
    """A real primary; never promoted (it stays on timeline 1)."""
    if not pg_available():
        pytest.skip("PostgreSQL 15 server binaries not installed")
    node = _node(pgdir, "primary")
    node.init_primary()
    node.start()
    try:
        yield node
    finally:
        node.destroy()


@pytest.fixture
def standby(pgdir: Path, primary: PgNode) -> Iterator[PgNode]:
    """A fresh streaming standby of ``primary`` (a test may promote it)."""
    node = _node(pgdir, f"standby-{secrets.token_hex(3)}")
    node.init_replica_of(primary)
    node.start()
    try:
        yield node
    finally:
        node.destroy()


def rds(url: str, region: str) -> Any:
    return boto3.client("rds", endpoint_url=url, region_name=region,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"max_attempts": 1}))


def lab_tags(node: PgNode | None, dsn: str | None = None) -> list[dict[str, str]]:
    if node is None and dsn is None:
        return []
    return [{"Key": LAB_ADDRESS_TAG, "Value": "127.0.0.1"},
            {"Key": LAB_DSN_TAG, "Value": dsn or node.dsn()}]  # type: ignore[union-attr]


@dataclass
class Pair:
    """A primary instance in us-east-1 and its cross-region read replica in us-west-2."""

    url: str
    primary_id: str
    primary_arn: str
    replica_id: str
    replica_arn: str

    def east(self) -> Any:
        return rds(self.url, PRIMARY_REGION)

    def west(self) -> Any:
        return rds(self.url, REPLICA_REGION)

    def primary(self) -> dict[str, Any]:
        return self.east().describe_db_instances(
            DBInstanceIdentifier=self.primary_id)["DBInstances"][0]

    def replica(self) -> dict[str, Any]:
        return self.west().describe_db_instances(
            DBInstanceIdentifier=self.replica_id)["DBInstances"][0]

    def promote(self) -> dict[str, Any]:
        return self.west().promote_read_replica(DBInstanceIdentifier=self.replica_id
                                                )["DBInstance"]


def make_pair(url: str, primary: PgNode | None = None, standby: PgNode | None = None, *,
              replica_dsn: str | None = None, primary_port: int = 5432,
              replica_port: int | None = None) -> Pair:
    """CreateDBInstance (postgres) in us-east-1, then CreateDBInstanceReadReplica in
    us-west-2 with the source's ARN, as for a cross-region replica; each tagged with
    its real cluster's address and DSN when given one."""
    name = f"db-{secrets.token_hex(4)}"
    created = rds(url, PRIMARY_REGION).create_db_instance(
        DBInstanceIdentifier=name, Engine="postgres", EngineVersion="15.7",
        DBInstanceClass="db.t3.micro", AllocatedStorage=20, MasterUsername="postgres",
        MasterUserPassword="lab-password-1",
        Port=primary.port if primary else primary_port,
        Tags=lab_tags(primary))["DBInstance"]
    replica_kwargs: dict[str, Any] = {}
    tags = lab_tags(standby, replica_dsn)
    if tags:
        replica_kwargs["Tags"] = tags
    port = standby.port if standby else replica_port
    if port:
        replica_kwargs["Port"] = port
    replica = rds(url, REPLICA_REGION).create_db_instance_read_replica(
        DBInstanceIdentifier=f"{name}-replica", SourceDBInstanceIdentifier=created["DBInstanceArn"],
        DBInstanceClass="db.t3.micro", **replica_kwargs)["DBInstance"]
    return Pair(url, name, created["DBInstanceArn"], f"{name}-replica",
                replica["DBInstanceArn"])


def error_of(call: Callable[[], Any]) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
            response["Error"]["Message"])


def in_recovery(endpoint: dict[str, Any]) -> bool:
    """Asked of the cluster at an instance's ``Endpoint``, as an application would."""
    with psycopg.connect(host=endpoint["Address"], port=endpoint["Port"], user="postgres",
                         dbname="postgres", connect_timeout=5) as conn:
        return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]


def assert_unpromoted(pair: Pair) -> None:
    """moto still shows the replica as a replica of its source, on both sides."""
    replica = pair.replica()
    assert replica["DBInstanceStatus"] == "available"
    assert replica["ReadReplicaSourceDBInstanceIdentifier"] == pair.primary_arn
    assert pair.primary()["ReadReplicaDBInstanceIdentifiers"] == [pair.replica_arn]


# --- describe: the lab binding and the cross-region links ----------------------------

def test_lab_instances_answer_the_real_address_and_ports_and_link_across_regions(
        moto_url: str, primary: PgNode, standby: PgNode) -> None:
    pair = make_pair(moto_url, primary, standby)
    source, replica = pair.primary(), pair.replica()

    assert source["Endpoint"] == {"Address": "127.0.0.1", "Port": primary.port}
    assert replica["Endpoint"] == {"Address": "127.0.0.1", "Port": standby.port}
    # The endpoints reach the real clusters.
    assert not in_recovery(source["Endpoint"])
    assert in_recovery(replica["Endpoint"])
    # Cross-region: each side names the other by ARN, in its own region.
    assert replica["ReadReplicaSourceDBInstanceIdentifier"] == pair.primary_arn
    assert source["ReadReplicaDBInstanceIdentifiers"] == [pair.replica_arn]
    assert replica["DBInstanceArn"].split(":")[3] == REPLICA_REGION
    assert replica["AvailabilityZone"].startswith(REPLICA_REGION)
    assert [i["DBInstanceIdentifier"] for i in pair.west().describe_db_instances(
        DBInstanceIdentifier=pair.replica_id)["DBInstances"]] == [pair.replica_id]
    assert error_of(lambda: pair.east().describe_db_instances(
        DBInstanceIdentifier=pair.replica_id))[0] == "DBInstanceNotFound"


# --- promotion -----------------------------------------------------------------------

def test_promote_promotes_the_real_standby_then_the_instance(
        moto_url: str, primary: PgNode, standby: PgNode) -> None:
    pair = make_pair(moto_url, primary, standby)

    answer = pair.promote()
    # The answer shows the promotion as it starts (the CLI example: modifying, source set)...
    assert answer["DBInstanceStatus"] == "modifying"
    assert answer["ReadReplicaSourceDBInstanceIdentifier"] == pair.primary_arn
    # ...but the real cluster was promoted before the call answered.
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False  # type: ignore[index]
        conn.execute("CREATE TABLE written_after_promotion (id int)")

    replica = pair.replica()
    assert replica["DBInstanceStatus"] == "available"
    assert "ReadReplicaSourceDBInstanceIdentifier" not in replica
    assert pair.primary().get("ReadReplicaDBInstanceIdentifiers", []) == []
    assert not in_recovery(replica["Endpoint"])
    assert replica["Endpoint"] == {"Address": "127.0.0.1", "Port": standby.port}

    code, status, message = error_of(pair.promote)
    assert (code, status) == ("InvalidDBInstanceState", 400)
    assert "not a read replica" in message


def test_promoting_an_instance_that_is_not_a_replica_is_refused(moto_url: str) -> None:
    pair = make_pair(moto_url)
    code, status, message = error_of(lambda: pair.east().promote_read_replica(
        DBInstanceIdentifier=pair.primary_id))
    assert (code, status) == ("InvalidDBInstanceState", 400)
    assert message == "DB Instance is not a read replica."
    assert_unpromoted(pair)


def test_promoting_an_unknown_instance_is_db_instance_not_found(moto_url: str) -> None:
    code, status, _ = error_of(lambda: rds(moto_url, REPLICA_REGION).promote_read_replica(
        DBInstanceIdentifier="no-such-instance"))
    assert (code, status) == ("DBInstanceNotFound", 404)


def test_promote_refused_when_the_real_cluster_is_unreachable_and_moto_is_unchanged(
        moto_url: str, primary: PgNode) -> None:
    closed = free_port()  # nothing listens there
    pair = make_pair(moto_url, primary, replica_dsn=(
        f"host=127.0.0.1 port={closed} user=postgres dbname=postgres connect_timeout=2"))

    code, status, message = error_of(pair.promote)
    assert (code, status) == ("InvalidDBInstanceState", 400)
    assert "could not be promoted" in message
    assert_unpromoted(pair)


def test_promote_refused_when_the_real_cluster_is_not_a_standby(
        moto_url: str, primary: PgNode) -> None:
    """A replica bound by mistake to a primary that was never promoted (timeline 1)."""
    pair = make_pair(moto_url, primary, replica_dsn=primary.dsn())

    code, _, message = error_of(pair.promote)
    assert code == "InvalidDBInstanceState"
    assert "not a standby" in message
    assert_unpromoted(pair)
    with psycopg.connect(primary.dsn()) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False  # type: ignore[index]


def test_promote_accepts_a_real_cluster_already_promoted(
        moto_url: str, primary: PgNode, standby: PgNode) -> None:
    """A resumed failover may find the standby already promoted: the call goes on."""
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_promote(true, 60)").fetchone()[0] is True  # type: ignore[index]
    pair = make_pair(moto_url, primary, standby)

    assert pair.promote()["DBInstanceStatus"] == "modifying"
    assert pair.replica()["DBInstanceStatus"] == "available"
    assert "ReadReplicaSourceDBInstanceIdentifier" not in pair.replica()


def test_promote_when_the_source_is_gone(moto_url: str) -> None:
    """Promotion is for when the source's region is lost: a source moto no longer has
    does not stop it."""
    pair = make_pair(moto_url)
    pair.east().delete_db_instance(DBInstanceIdentifier=pair.primary_id,
                                   SkipFinalSnapshot=True)
    pair.promote()
    replica = pair.replica()
    assert replica["DBInstanceStatus"] == "available"
    assert "ReadReplicaSourceDBInstanceIdentifier" not in replica


def test_promotion_stays_in_progress_for_the_configured_seconds(slow_moto_url: str) -> None:
    pair = make_pair(slow_moto_url)
    started = time.monotonic()
    pair.promote()

    replica = pair.replica()
    assert time.monotonic() - started < SLOW_PROMOTE_S, "too slow to see the promotion run"
    assert replica["DBInstanceStatus"] == "modifying"
    assert replica["ReadReplicaSourceDBInstanceIdentifier"] == pair.primary_arn
    code, _, message = error_of(pair.promote)
    assert code == "InvalidDBInstanceState" and "being promoted" in message

    deadline = time.monotonic() + SLOW_PROMOTE_S + 5
    while pair.replica()["DBInstanceStatus"] != "available":
        assert time.monotonic() < deadline, "the promotion never completed"
        time.sleep(0.2)
    assert "ReadReplicaSourceDBInstanceIdentifier" not in pair.replica()
    assert pair.primary().get("ReadReplicaDBInstanceIdentifiers", []) == []


# --- instances without lab tags, and what drorch does to the old primary --------------

def test_instances_without_lab_tags_behave_as_moto_does(moto_url: str,
                                                        primary: PgNode) -> None:
    pair = make_pair(moto_url, replica_port=6543)
    source, replica = pair.primary(), pair.replica()
    assert source["Endpoint"] == {
        "Address": f"{pair.primary_id}.aaaaaaaaaa.{PRIMARY_REGION}.rds.amazonaws.com",
        "Port": 5432}
    assert replica["Endpoint"]["Address"].endswith(f".{REPLICA_REGION}.rds.amazonaws.com")
    assert replica["Endpoint"]["Port"] == 6543
    assert pair.promote()["DBInstanceStatus"] == "modifying"
    assert "ReadReplicaSourceDBInstanceIdentifier" not in pair.replica()

    # A replica created without tags does not take its source's lab binding.
    tagged = make_pair(moto_url, primary)
    west = tagged.west()
    bare = west.create_db_instance_read_replica(
        DBInstanceIdentifier=f"{tagged.primary_id}-bare",
        SourceDBInstanceIdentifier=tagged.primary_arn)["DBInstance"]
    assert bare["Endpoint"]["Address"].endswith(".rds.amazonaws.com")
    keys = [t["Key"] for t in west.list_tags_for_resource(
        ResourceName=bare["DBInstanceArn"])["TagList"]]
    assert LAB_ADDRESS_TAG not in keys and LAB_DSN_TAG not in keys


def test_snapshot_tags_and_deleting_a_cross_region_replica(moto_url: str) -> None:
    """What drorch does to the old primary after failback: an evidence snapshot and a
    "kept by drorch" tag; and a cross-region replica can be deleted."""
    pair = make_pair(moto_url)
    east = pair.east()
    snap = east.create_db_snapshot(
        DBSnapshotIdentifier=f"{pair.primary_id}-evidence",
        DBInstanceIdentifier=pair.primary_id,
        Tags=[{"Key": "drorch:evidence", "Value": "failback"}])["DBSnapshot"]
    assert snap["DBInstanceIdentifier"] == pair.primary_id
    assert snap["Status"] == "available"
    found = east.describe_db_snapshots(DBInstanceIdentifier=pair.primary_id,
                                       SnapshotType="manual")["DBSnapshots"]
    assert [s["DBSnapshotIdentifier"] for s in found] == [f"{pair.primary_id}-evidence"]

    east.add_tags_to_resource(ResourceName=pair.primary_arn,
                              Tags=[{"Key": "drorch:kept", "Value": "kept by drorch"}])
    assert {"Key": "drorch:kept", "Value": "kept by drorch"} in east.list_tags_for_resource(
        ResourceName=pair.primary_arn)["TagList"]
    assert pair.west().list_tags_for_resource(ResourceName=pair.replica_arn)["TagList"] == []

    pair.west().delete_db_instance(DBInstanceIdentifier=pair.replica_id,
                                   SkipFinalSnapshot=True)
    assert pair.primary().get("ReadReplicaDBInstanceIdentifiers", []) == []


# --- rename and a replica under the vacated identifier (drorch's RDS failback) --------

def test_rename_moves_the_real_cluster_and_a_replica_takes_the_vacated_identifier(
        moto_url: str, pgdir: Path, primary: PgNode) -> None:
    """On RDS the endpoint follows the identifier: renamed, an instance answers at its new
    name; a new instance under the old name answers where it did. In the lab: the
    renamed instance's cluster moves to another port (still a writable primary, its rows
    kept), and a read replica created under the vacated identifier is a real streaming
    standby of its source, on the vacated port. Renaming onto a taken identifier is
    ``DBInstanceAlreadyExists`` (moto overwrote the other instance)."""
    from drorch.lab.moto_server import LAB_DATADIR_TAG, LAB_LOGFILE_TAG

    old = _node(pgdir, f"old-{secrets.token_hex(3)}")
    old.init_primary()
    old.start()
    name = f"db-{secrets.token_hex(4)}"
    east, west = rds(moto_url, PRIMARY_REGION), rds(moto_url, REPLICA_REGION)
    moved_dir = old.datadir.with_name(f"{old.datadir.name}.{name}-old-1")
    try:
        with psycopg.connect(old.dsn(), autocommit=True) as c:
            c.execute("CREATE TABLE kept (id int PRIMARY KEY)")
            c.execute("INSERT INTO kept VALUES (1), (2)")
        east.create_db_instance(
            DBInstanceIdentifier=name, Engine="postgres", DBInstanceClass="db.t3.micro",
            AllocatedStorage=20, MasterUsername="postgres", MasterUserPassword="lab-pass-1",
            Port=old.port, Tags=[*lab_tags(old),
                                 {"Key": LAB_DATADIR_TAG, "Value": str(old.datadir)},
                                 {"Key": LAB_LOGFILE_TAG, "Value": str(old.logfile)}])
        source = west.create_db_instance(
            DBInstanceIdentifier=f"{name}-src", Engine="postgres",
            DBInstanceClass="db.t3.micro", AllocatedStorage=20, MasterUsername="postgres",
            MasterUserPassword="lab-pass-1", Port=primary.port,
            Tags=lab_tags(primary))["DBInstance"]
        east.create_db_instance(
            DBInstanceIdentifier=f"{name}-taken", Engine="postgres",
            DBInstanceClass="db.t3.micro", AllocatedStorage=20, MasterUsername="postgres",
            MasterUserPassword="lab-pass-1")
        code, _status, _msg = error_of(lambda: east.modify_db_instance(
            DBInstanceIdentifier=name, NewDBInstanceIdentifier=f"{name}-taken",
            ApplyImmediately=True))
        assert code == "DBInstanceAlreadyExists"

        renamed = east.modify_db_instance(DBInstanceIdentifier=name,
                                          NewDBInstanceIdentifier=f"{name}-old-1",
                                          ApplyImmediately=True)["DBInstance"]
        port = renamed["Endpoint"]["Port"]
        assert port != old.port
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres",
                             dbname="postgres") as c:
            assert c.execute("SELECT pg_is_in_recovery(), (SELECT count(*) FROM kept)"
                             ).fetchone() == (False, 2)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(old.dsn(), connect_timeout=2).close()

        replica = east.create_db_instance_read_replica(
            DBInstanceIdentifier=name, SourceDBInstanceIdentifier=source["DBInstanceArn"],
            DBInstanceClass="db.t3.micro", Port=old.port)["DBInstance"]
        assert replica["Endpoint"]["Port"] == old.port
        assert replica["ReadReplicaSourceDBInstanceIdentifier"] == source["DBInstanceArn"]
        assert in_recovery(replica["Endpoint"])
        with psycopg.connect(old.dsn()) as c:
            assert c.execute("SELECT status FROM pg_stat_wal_receiver").fetchone() \
                == ("streaming",)
            assert c.execute("SELECT to_regclass('kept')").fetchone() == (None,)
        tags = {t["Key"] for t in east.list_tags_for_resource(
            ResourceName=renamed["DBInstanceArn"])["TagList"]}
        assert "drorch:lab-vacated" not in tags  # the slot was taken
    finally:
        PgNode(moved_dir.name, moved_dir, 0, old.rundir).destroy()
        old.destroy()
