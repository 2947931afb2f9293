"""The lab's moto server answers SwitchoverGlobalCluster and FailoverGlobalCluster as the
Amazon RDS API Reference documents them: request and response shapes, state changes,
and refusals of invalid states with the documented error codes.

The server is the one the lab starts (``drorch.lab.lab.start_moto``, a real process
on this worker's ports), spoken to over HTTP with boto3, so botocore parses every
answer against the real RDS service model.

References: https://docs.aws.amazon.com/AmazonRDS/latest/APIReference/API_SwitchoverGlobalCluster.html
and API_FailoverGlobalCluster.html, API_FailoverState.html, and the AWS CLI examples
``awscli/examples/rds/{switchover,failover}-global-cluster.rst``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from drorch.lab.moto_server import SWITCH_SECONDS_ENV
from tests.conftest import moto_server

PRIMARY_REGION = "us-east-1"
SECONDARY_REGION = "us-west-2"
ENGINE = "aurora-postgresql"
SLOW_SWITCH_S = 3.0


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Operations complete by the next read (the default)."""
    yield from moto_server(tmp_path_factory.mktemp("moto"), "moto")


@pytest.fixture(scope="module")
def slow_moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Operations stay in progress for SLOW_SWITCH_S seconds."""
    yield from moto_server(tmp_path_factory.mktemp("moto-slow"), "moto-slow",
                           {SWITCH_SECONDS_ENV: str(SLOW_SWITCH_S)})


def rds(url: str, region: str) -> Any:
    return boto3.client("rds", endpoint_url=url, region_name=region,
                        aws_access_key_id="test", aws_secret_access_key="test",
                        config=Config(retries={"max_attempts": 1}))


@dataclass
class GlobalDb:
    """An Aurora PostgreSQL global database: a primary cluster and a secondary one."""

    url: str
    name: str
    primary_arn: str
    secondary_arn: str

    def client(self, region: str = PRIMARY_REGION) -> Any:
        return rds(self.url, region)

    def describe(self) -> dict[str, Any]:
        found = self.client().describe_global_clusters(GlobalClusterIdentifier=self.name)
        assert len(found["GlobalClusters"]) == 1
        return found["GlobalClusters"][0]

    def writers(self, gc: dict[str, Any] | None = None) -> list[str]:
        gc = gc if gc is not None else self.describe()
        return [m["DBClusterArn"] for m in gc["GlobalClusterMembers"] if m["IsWriter"]]


def make_global_db(url: str) -> GlobalDb:
    """Two regional clusters in a new global cluster, the way the docs build one:
    CreateGlobalCluster, then CreateDBCluster with GlobalClusterIdentifier per region."""
    name = f"gdb-{secrets.token_hex(4)}"
    east, west = rds(url, PRIMARY_REGION), rds(url, SECONDARY_REGION)
    east.create_global_cluster(GlobalClusterIdentifier=name, Engine=ENGINE)
    primary = east.create_db_cluster(
        DBClusterIdentifier=f"{name}-east", Engine=ENGINE, GlobalClusterIdentifier=name,
        MasterUsername="postgres", MasterUserPassword="lab-password-1")["DBCluster"]
    secondary = west.create_db_cluster(
        DBClusterIdentifier=f"{name}-west", Engine=ENGINE,
        GlobalClusterIdentifier=name)["DBCluster"]
    return GlobalDb(url, name, primary["DBClusterArn"], secondary["DBClusterArn"])


@pytest.fixture
def gdb(moto_url: str) -> GlobalDb:
    return make_global_db(moto_url)


def error_of(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call()
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def failover_snapshots(gdb: GlobalDb) -> list[str]:
    """The rds:unplanned-global-failover-… snapshots of the primary cluster."""
    snaps = gdb.client().describe_db_cluster_snapshots(
        DBClusterIdentifier=f"{gdb.name}-east", SnapshotType="automated")
    prefix = f"rds:unplanned-global-failover-{gdb.name}-east-"
    return [s["DBClusterSnapshotIdentifier"] for s in snaps["DBClusterSnapshots"]
            if s["DBClusterSnapshotIdentifier"].startswith(prefix)]


# -- the starting point -----------------------------------------------------------------

def test_a_new_global_database_has_one_writer_and_a_connected_secondary(gdb: GlobalDb) -> None:
    gc = gdb.describe()
    assert gc["Status"] == "available"
    assert "FailoverState" not in gc
    assert gdb.writers(gc) == [gdb.primary_arn]
    by_arn = {m["DBClusterArn"]: m for m in gc["GlobalClusterMembers"]}
    assert by_arn[gdb.primary_arn]["Readers"] == [gdb.secondary_arn]
    assert by_arn[gdb.secondary_arn]["GlobalWriteForwardingStatus"] == "disabled"
    assert {m["SynchronizationStatus"] for m in by_arn.values()} == {"connected"}


# -- switchover -------------------------------------------------------------------------

def test_switchover_answers_pending_then_the_target_is_the_writer(gdb: GlobalDb) -> None:
    """The answer is the operation starting (CLI example): Status switching-over,
    FailoverState pending from the primary to the target, roles not yet changed.
    Afterwards the target writes, the old primary is a secondary, FailoverState is gone."""
    answer = gdb.client().switchover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=gdb.secondary_arn)
    gc = answer["GlobalCluster"]
    assert gc["GlobalClusterIdentifier"] == gdb.name
    assert gc["Status"] == "switching-over"
    assert gc["FailoverState"] == {"Status": "pending", "FromDbClusterArn": gdb.primary_arn,
                                   "ToDbClusterArn": gdb.secondary_arn,
                                   "IsDataLossAllowed": False}
    assert gdb.writers(gc) == [gdb.primary_arn]

    done = gdb.describe()
    assert done["Status"] == "available"
    assert "FailoverState" not in done
    assert gdb.writers(done) == [gdb.secondary_arn]
    by_arn = {m["DBClusterArn"]: m for m in done["GlobalClusterMembers"]}
    assert by_arn[gdb.secondary_arn]["Readers"] == [gdb.primary_arn]
    assert by_arn[gdb.primary_arn]["GlobalWriteForwardingStatus"] == "disabled"
    assert failover_snapshots(gdb) == []


def test_switchover_and_back_by_identifier_in_the_targets_region(gdb: GlobalDb) -> None:
    """A plain identifier names the cluster in the region the request is sent to."""
    gdb.client(SECONDARY_REGION).switchover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=f"{gdb.name}-west")
    assert gdb.writers() == [gdb.secondary_arn]
    gdb.client(PRIMARY_REGION).switchover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=f"{gdb.name}-east")
    assert gdb.writers() == [gdb.primary_arn]


# -- failover ---------------------------------------------------------------------------

def test_failover_with_data_loss_promotes_the_target_and_keeps_the_old_volume(
        gdb: GlobalDb) -> None:
    """AllowDataLoss: failing-over, IsDataLossAllowed; the old primary ends a secondary
    and its volume is kept as an rds:unplanned-global-failover-… snapshot."""
    gc = gdb.client(SECONDARY_REGION).failover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=gdb.secondary_arn,
        AllowDataLoss=True)["GlobalCluster"]
    assert gc["Status"] == "failing-over"
    assert gc["FailoverState"] == {"Status": "pending", "FromDbClusterArn": gdb.primary_arn,
                                   "ToDbClusterArn": gdb.secondary_arn,
                                   "IsDataLossAllowed": True}
    done = gdb.describe()
    assert gdb.writers(done) == [gdb.secondary_arn]
    assert "FailoverState" not in done and done["Status"] == "available"
    assert len(failover_snapshots(gdb)) == 1


@pytest.mark.parametrize("switchover", [True, None], ids=["Switchover", "neither-parameter"])
def test_failover_without_allow_data_loss_is_a_switchover(gdb: GlobalDb,
                                                          switchover: bool | None) -> None:
    """"Switching over - Specify the Switchover parameter or omit it"."""
    extra = {"Switchover": True} if switchover else {}
    gc = gdb.client().failover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=gdb.secondary_arn,
        **extra)["GlobalCluster"]
    assert gc["Status"] == "switching-over"
    assert gc["FailoverState"]["IsDataLossAllowed"] is False
    assert gdb.writers() == [gdb.secondary_arn]
    assert failover_snapshots(gdb) == []


def test_failover_is_allowed_when_the_primary_is_down_but_switchover_is_not(
        gdb: GlobalDb) -> None:
    """Switchover synchronizes from a healthy primary; failover is for when it is not."""
    gdb.client().stop_db_cluster(DBClusterIdentifier=f"{gdb.name}-east")
    assert error_of(lambda: gdb.client().switchover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=gdb.secondary_arn)
    ) == ("InvalidDBClusterStateFault", 400)
    assert gdb.writers() == [gdb.primary_arn]
    gdb.client(SECONDARY_REGION).failover_global_cluster(
        GlobalClusterIdentifier=gdb.name, TargetDbClusterIdentifier=gdb.secondary_arn,
        AllowDataLoss=True)
    assert gdb.writers() == [gdb.secondary_arn]


# -- refusals ---------------------------------------------------------------------------

def _switchover(gdb: GlobalDb, **kw: Any) -> Callable[[], Any]:
    args = {"GlobalClusterIdentifier": gdb.name, "TargetDbClusterIdentifier": gdb.secondary_arn,
            **kw}
    return lambda: gdb.client().switchover_global_cluster(**args)


def _failover(gdb: GlobalDb, **kw: Any) -> Callable[[], Any]:
    args = {"GlobalClusterIdentifier": gdb.name, "TargetDbClusterIdentifier": gdb.secondary_arn,
            "AllowDataLoss": True, **kw}
    return lambda: gdb.client().failover_global_cluster(**args)


@pytest.mark.parametrize("call", [_switchover, _failover], ids=["switchover", "failover"])
def test_unknown_global_cluster_is_global_cluster_not_found(
        gdb: GlobalDb, call: Callable[..., Callable[[], Any]]) -> None:
    assert error_of(call(gdb, GlobalClusterIdentifier="no-such-global")) == (
        "GlobalClusterNotFoundFault", 404)


@pytest.mark.parametrize("call", [_switchover, _failover], ids=["switchover", "failover"])
def test_unknown_target_cluster_is_db_cluster_not_found(
        gdb: GlobalDb, call: Callable[..., Callable[[], Any]]) -> None:
    missing = gdb.secondary_arn.replace(f"{gdb.name}-west", "no-such-cluster")
    assert error_of(call(gdb, TargetDbClusterIdentifier=missing)) == (
        "DBClusterNotFoundFault", 404)


@pytest.mark.parametrize("call", [_switchover, _failover], ids=["switchover", "failover"])
def test_target_that_is_the_primary_is_refused(
        gdb: GlobalDb, call: Callable[..., Callable[[], Any]]) -> None:
    """The target must be a secondary: the writer itself is not."""
    assert error_of(call(gdb, TargetDbClusterIdentifier=gdb.primary_arn)) == (
        "InvalidDBClusterStateFault", 400)
    assert gdb.writers() == [gdb.primary_arn]


@pytest.mark.parametrize("call", [_switchover, _failover], ids=["switchover", "failover"])
def test_target_outside_the_global_cluster_is_refused(
        gdb: GlobalDb, call: Callable[..., Callable[[], Any]]) -> None:
    other = make_global_db(gdb.url)  # a real cluster, a secondary, but of another one
    assert error_of(call(gdb, TargetDbClusterIdentifier=other.secondary_arn)) == (
        "InvalidDBClusterStateFault", 400)
    assert gdb.writers() == [gdb.primary_arn] and other.writers() == [other.primary_arn]


def test_stopped_target_is_refused(gdb: GlobalDb) -> None:
    gdb.client(SECONDARY_REGION).stop_db_cluster(DBClusterIdentifier=f"{gdb.name}-west")
    assert error_of(_failover(gdb)) == ("InvalidDBClusterStateFault", 400)
    assert gdb.writers() == [gdb.primary_arn]


def test_allow_data_loss_with_switchover_is_an_invalid_combination(gdb: GlobalDb) -> None:
    """"Can't be specified together with the Switchover parameter"."""
    assert error_of(_failover(gdb, Switchover=True)) == ("InvalidParameterCombination", 400)
    assert gdb.writers() == [gdb.primary_arn]


def test_describe_unknown_global_cluster_is_not_found(moto_url: str) -> None:
    assert error_of(lambda: rds(moto_url, PRIMARY_REGION).describe_global_clusters(
        GlobalClusterIdentifier="no-such-global")) == ("GlobalClusterNotFoundFault", 404)


# -- in progress ------------------------------------------------------------------------

def test_an_operation_in_progress_shows_and_refuses_a_second_one(slow_moto_url: str) -> None:
    """While FailoverState is set, describe shows it and the old roles, and a second
    operation is InvalidGlobalClusterStateFault; then it completes by itself."""
    gdb = make_global_db(slow_moto_url)
    started = time.monotonic()
    gdb.client().switchover_global_cluster(GlobalClusterIdentifier=gdb.name,
                                           TargetDbClusterIdentifier=gdb.secondary_arn)
    during = gdb.describe()
    assert time.monotonic() - started < SLOW_SWITCH_S, "too slow to see the operation run"
    assert during["Status"] == "switching-over"
    assert during["FailoverState"]["ToDbClusterArn"] == gdb.secondary_arn
    assert gdb.writers(during) == [gdb.primary_arn]
    assert error_of(_failover(gdb)) == ("InvalidGlobalClusterStateFault", 400)

    deadline = started + SLOW_SWITCH_S + 10
    while gdb.writers() != [gdb.secondary_arn]:
        assert time.monotonic() < deadline, "switchover never completed"
        time.sleep(0.1)
    done = gdb.describe()
    assert "FailoverState" not in done and done["Status"] == "available"


# -- a global database made from an existing cluster ------------------------------------

def test_global_cluster_from_an_existing_cluster_outside_us_east_1(moto_url: str) -> None:
    """CreateGlobalCluster with SourceDBClusterIdentifier: the source (here in us-west-2)
    becomes the primary, and a switchover to a secondary added later works."""
    name = f"gdb-{secrets.token_hex(4)}"
    west, east = rds(moto_url, SECONDARY_REGION), rds(moto_url, PRIMARY_REGION)
    source = west.create_db_cluster(
        DBClusterIdentifier=f"{name}-west", Engine=ENGINE, MasterUsername="postgres",
        MasterUserPassword="lab-password-1")["DBCluster"]
    east.create_global_cluster(GlobalClusterIdentifier=name,
                               SourceDBClusterIdentifier=source["DBClusterArn"])
    secondary = east.create_db_cluster(DBClusterIdentifier=f"{name}-east", Engine=ENGINE,
                                       GlobalClusterIdentifier=name)["DBCluster"]
    gdb = GlobalDb(moto_url, name, source["DBClusterArn"], secondary["DBClusterArn"])
    assert gdb.writers() == [source["DBClusterArn"]]
    gdb.client().switchover_global_cluster(GlobalClusterIdentifier=name,
                                           TargetDbClusterIdentifier=secondary["DBClusterArn"])
    assert gdb.writers() == [secondary["DBClusterArn"]]


# -- detach and promote -----------------------------------------------------------------

def test_remove_from_global_cluster_in_the_secondarys_region_detaches_it(gdb: GlobalDb) -> None:
    """The older unplanned path: RemoveFromGlobalCluster sent to the secondary's region
    leaves it standalone, and the global cluster with the primary alone."""
    west = gdb.client(SECONDARY_REGION)
    gc = west.remove_from_global_cluster(GlobalClusterIdentifier=gdb.name,
                                         DbClusterIdentifier=gdb.secondary_arn)["GlobalCluster"]
    assert [m["DBClusterArn"] for m in gc["GlobalClusterMembers"]] == [gdb.primary_arn]
    assert gdb.writers() == [gdb.primary_arn]
    cluster = west.describe_db_clusters(DBClusterIdentifier=f"{gdb.name}-west")["DBClusters"][0]
    assert "GlobalClusterIdentifier" not in cluster
    # Detached twice, or a switchover to it, is refused: it is no member any more.
    assert error_of(lambda: west.remove_from_global_cluster(
        GlobalClusterIdentifier=gdb.name, DbClusterIdentifier=gdb.secondary_arn)
    ) == ("InvalidDBClusterStateFault", 400)
    assert error_of(_switchover(gdb)) == ("InvalidDBClusterStateFault", 400)
