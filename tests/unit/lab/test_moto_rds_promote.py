"""The read replica promotion additions to the lab's moto server, without a server or
PostgreSQL: settings, the lab tags, and promotion completing when the source's region
cannot be reached (the server-level behaviour is in
tests/integration/test_moto_rds_instances.py)."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from drorch.lab import moto_rds
from drorch.lab.moto_rds import Promotion
from drorch.lab.moto_server import (
    LAB_ADDRESS_TAG,
    LAB_DSN_TAG,
    PROMOTE_SECONDS_ENV,
    promote_seconds,
)


def test_promote_seconds_default_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROMOTE_SECONDS_ENV, raising=False)
    assert promote_seconds() == 0.0
    monkeypatch.setenv(PROMOTE_SECONDS_ENV, "2.5")
    assert promote_seconds() == 2.5
    monkeypatch.setenv(PROMOTE_SECONDS_ENV, "-3")
    assert promote_seconds() == 0.0
    monkeypatch.setenv(PROMOTE_SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match=PROMOTE_SECONDS_ENV):
        promote_seconds()


def test_the_dsn_gets_a_connect_timeout_unless_it_names_one() -> None:
    assert moto_rds._conninfo("host=127.0.0.1 port=1")["connect_timeout"] == (
        moto_rds.PG_CONNECT_TIMEOUT_S)
    assert moto_rds._conninfo("host=127.0.0.1 connect_timeout=2")["connect_timeout"] == "2"


def test_an_unreachable_real_cluster_is_a_reason_not_a_crash() -> None:
    with pytest.raises(RuntimeError, match="could not be promoted"):
        moto_rds.promote_real_cluster("host=127.0.0.1 port=1 user=postgres connect_timeout=2")


def _client(region: str) -> object:
    return boto3.client("rds", region_name=region, aws_access_key_id="test",
                        aws_secret_access_key="test")


@mock_aws
def test_lab_address_tag_and_promotion_with_its_source_out_of_reach() -> None:
    from moto.rds.models import rds_backends

    east, west = _client("us-east-1"), _client("us-west-2")
    source = east.create_db_instance(  # type: ignore[attr-defined]
        DBInstanceIdentifier="src", Engine="postgres", DBInstanceClass="db.t3.micro",
        AllocatedStorage=20, MasterUsername="postgres", MasterUserPassword="lab-password-1",
        Port=6001, Tags=[{"Key": LAB_ADDRESS_TAG, "Value": "127.0.0.1"}])["DBInstance"]
    assert source["Endpoint"] == {"Address": "127.0.0.1", "Port": 6001}
    west.create_db_instance_read_replica(  # type: ignore[attr-defined]
        DBInstanceIdentifier="rep", SourceDBInstanceIdentifier=source["DBInstanceArn"])
    replica = rds_backends["123456789012"]["us-west-2"].databases["rep"]
    assert moto_rds.lab_tag(replica, LAB_ADDRESS_TAG) is None  # not inherited
    assert moto_rds.lab_tag(replica, LAB_DSN_TAG) is None

    # The replica's record of its source names a region moto has no backend for.
    replica.source_db_instance_identifier = "arn:aws:rds:xx-nowhere-1:123456789012:db:src"
    moto_rds._complete_promotion(Promotion(replica, replica.source_db_instance_identifier,
                                           done_at=0.0))
    assert replica.status == "available"
    assert replica.source_db_instance_identifier is None
    assert not replica.is_replica
