"""The lab DNS server answers from Route 53 records in moto, honouring weights."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import pytest

from drorch.lab import services
from drorch.lab.dns_server import select_records
from drorch.lab.ports import free_port

from .conftest import aws, wait_for

ZONE = "lab.drorch.test."
APP = "app.lab.drorch.test."
A_ADDR, B_ADDR = "127.0.1.1", "127.0.2.1"


def weighted(ident: str, address: str, weight: int, ttl: int = 30) -> dict[str, Any]:
    return {"Name": APP, "Type": "A", "SetIdentifier": ident, "Weight": weight, "TTL": ttl,
            "ResourceRecords": [{"Value": address}]}


def set_weights(r53: Any, zone_id: str, weight_a: int, weight_b: int) -> None:
    r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": weighted("region-a", A_ADDR, weight_a)},
        {"Action": "UPSERT", "ResourceRecordSet": weighted("region-b", B_ADDR, weight_b)},
    ]})


@pytest.fixture(scope="module")
def zone(moto_url: str) -> tuple[Any, str]:
    r53 = aws(moto_url, "route53")
    zone_id = r53.create_hosted_zone(Name=ZONE, CallerReference="lab-dns-test")["HostedZone"]["Id"]
    set_weights(r53, zone_id, 100, 0)
    r53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [
        {"Action": "UPSERT", "ResourceRecordSet": {
            "Name": f"mail.{ZONE}", "Type": "A", "TTL": 120,
            "ResourceRecords": [{"Value": "127.0.3.1"}]}},
    ]})
    return r53, zone_id


@pytest.fixture(scope="module")
def dns_port(zone: tuple[Any, str], moto_url: str, workdir: Path) -> Iterator[int]:
    """The DNS server as a subprocess (as ``drorch lab up`` runs it)."""
    port = free_port()
    pid = services.start_dns("127.0.0.1", port, endpoint_url=moto_url, zone=ZONE,
                             log_path=workdir / "dns.log")
    try:
        yield port
    finally:
        assert services.stop_pid(pid)


def resolver(port: int) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers, res.port, res.lifetime = ["127.0.0.1"], port, 5
    res.cache = None
    return res


def addresses(port: int, name: str = APP) -> list[str]:
    return [r.address for r in resolver(port).resolve(name, "A")]


def test_weight_100_0_answers_region_a_and_never_the_zero_weight(dns_port: int) -> None:
    """With weights 100/0 every answer is region-a's address, with the record's TTL."""
    answer = resolver(dns_port).resolve(APP, "A")
    assert answer.rrset is not None and answer.rrset.ttl == 30
    seen = Counter(addr for _ in range(150) for addr in addresses(dns_port))
    assert set(seen) == {A_ADDR}


def test_upsert_flips_answers_to_region_b(dns_port: int, zone: tuple[Any, str]) -> None:
    """After an UPSERT to 0/100 the server answers region-b's address and never region-a's."""
    r53, zone_id = zone
    try:
        set_weights(r53, zone_id, 0, 100)
        wait_for(lambda: addresses(dns_port) == [B_ADDR], timeout=5, what="the DNS flip")
        seen = Counter(addr for _ in range(150) for addr in addresses(dns_port))
        assert set(seen) == {B_ADDR}
    finally:
        set_weights(r53, zone_id, 100, 0)


def test_unknown_name_is_nxdomain_and_foreign_zone_refused(dns_port: int) -> None:
    """An unknown name in the zone is NXDOMAIN with the SOA; a name outside it is REFUSED."""
    reply = dns.query.udp(dns.message.make_query(f"nope.{ZONE}", "A"), "127.0.0.1",
                          port=dns_port, timeout=5)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(dns_port).resolve(f"nope.{ZONE}", "A")
    foreign = dns.query.udp(dns.message.make_query("example.com.", "A"), "127.0.0.1",
                            port=dns_port, timeout=5)
    assert foreign.rcode() == dns.rcode.REFUSED


def test_simple_record_over_tcp(dns_port: int) -> None:
    """A simple record is answered as recorded, over TCP too, with the authoritative flag."""
    reply = dns.query.tcp(dns.message.make_query(f"mail.{ZONE}", "A"), "127.0.0.1",
                          port=dns_port, timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    (rrset,) = reply.answer
    assert [r.address for r in rrset] == ["127.0.3.1"] and rrset.ttl == 120


def test_selection_all_zero_weights_returns_each() -> None:
    """When every weight is 0, each record set is returned (equal chance), one at a time."""
    rrsets = [weighted("region-a", A_ADDR, 0), weighted("region-b", B_ADDR, 0)]
    rng = random.Random(7)
    picks = Counter(
        select_records(rrsets, ZONE, APP, "A", rng).answer[0]["SetIdentifier"] for _ in range(400)
    )
    assert set(picks) == {"region-a", "region-b"}
    assert min(picks.values()) > 100


def test_selection_follows_weights_and_skips_zero() -> None:
    """Weights 30/70/0 pick in proportion among the positive ones and never the zero one."""
    rrsets = [weighted("a", A_ADDR, 30), weighted("b", B_ADDR, 70),
              weighted("c", "127.0.9.9", 0)]
    rng = random.Random(11)
    picks = Counter(
        select_records(rrsets, ZONE, APP, "A", rng).answer[0]["SetIdentifier"] for _ in range(2000)
    )
    assert "c" not in picks
    assert picks["b"] > picks["a"] > 300


def test_selection_nodata_cname_and_empty_non_terminal() -> None:
    """A known name without the type is NODATA, a CNAME answers any type, parents of names exist."""
    rrsets = [weighted("a", A_ADDR, 1),
              {"Name": f"www.{ZONE}", "Type": "CNAME", "TTL": 60,
               "ResourceRecords": [{"Value": APP}]},
              {"Name": f"x.deep.{ZONE}", "Type": "TXT", "TTL": 60,
               "ResourceRecords": [{"Value": '"hi"'}]}]
    rng = random.Random(1)
    nodata = select_records(rrsets, ZONE, APP, "AAAA", rng)
    assert (nodata.rcode, nodata.answer) == ("NOERROR", [])
    assert select_records(rrsets, ZONE, f"WWW.{ZONE}", "A", rng).answer[0]["Type"] == "CNAME"
    assert select_records(rrsets, ZONE, f"deep.{ZONE}", "A", rng).rcode == "NOERROR"
    assert select_records(rrsets, ZONE, f"other.{ZONE}", "A", rng).rcode == "NXDOMAIN"
