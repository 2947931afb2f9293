"""The lab's authoritative DNS server: answers one zone from the Route 53 records in moto.

Each query reads the zone's record sets from the Route 53 API (``endpoint_url``, cached at
most ``max_age`` seconds, 20 ms by default) so a weighted-record UPSERT is visible almost
at once. Answers follow Route 53's rules for what the lab uses:

- simple records: returned as recorded;
- weighted records of one name and type: one record set picked at random in proportion to
  its weight among those with weight > 0; a weight-0 set is never picked while another is
  positive; when all are 0, each is equally likely (as AWS does);
- failover records: the PRIMARY (moto never reports a health check unhealthy);
- TTL as recorded; a CNAME at the name answers any other type (not chased);
- NXDOMAIN (with the zone's SOA) for an unknown name in the zone, NODATA for a known name
  without that type, REFUSED outside the zone, SERVFAIL when the API cannot be read.

Alias records and wildcards are not served. ``select_records`` is the pure decision; the
resolver does the I/O. Run: ``python -m drorch.lab.dns_server --listen 127.0.0.1:PORT
--endpoint-url URL --zone lab.drorch.test. [--region us-east-1]``.
"""

from __future__ import annotations

import argparse
import random
import re
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import BaseResolver, DNSServer

log = structlog.get_logger("drorch.lab.dns_server")

RecordSet = dict[str, Any]
_MOTO_SOA = re.compile(r"^\{'Value': '(.*)'\}$")  # moto 5.2 wraps the zone's SOA value so


def normalize(name: str) -> str:
    """Lower-case, absolute, Route 53 octal escapes (``\\052``) decoded."""
    name = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), name).lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class Selection:
    """What to answer: a response code, the answer record sets and the authority ones."""

    rcode: str  # "NOERROR" | "NXDOMAIN" | "REFUSED"
    answer: list[RecordSet] = field(default_factory=list)
    authority: list[RecordSet] = field(default_factory=list)


def choose_among(group: Sequence[RecordSet], rng: random.Random) -> list[RecordSet]:
    """Route 53's pick among the record sets of one name and type (see module docstring)."""
    simple = [r for r in group if "SetIdentifier" not in r]
    if simple:
        return simple
    weighted = [r for r in group if "Weight" in r]
    if weighted:
        positive = [r for r in weighted if int(r["Weight"]) > 0]
        if positive:
            return rng.choices(positive, weights=[int(r["Weight"]) for r in positive])
        return [rng.choice(weighted)]
    primary = [r for r in group if r.get("Failover") == "PRIMARY"]
    return primary[:1] or list(group[:1])


def select_records(
    rrsets: Sequence[RecordSet], zone: str, qname: str, qtype: str, rng: random.Random
) -> Selection:
    """Decide the answer to ``qname``/``qtype`` from the zone's record sets (pure)."""
    zone, qname = normalize(zone), normalize(qname)
    if qname != zone and not qname.endswith("." + zone):
        return Selection("REFUSED")
    usable = [r for r in rrsets if "ResourceRecords" in r]  # alias records are not served
    soa = [r for r in usable if r["Type"] == "SOA" and normalize(r["Name"]) == zone]
    at_name = [r for r in usable if normalize(r["Name"]) == qname]
    if not at_name:
        below = any(normalize(r["Name"]).endswith("." + qname) for r in usable)
        return Selection("NOERROR" if below else "NXDOMAIN", authority=soa)
    of_type = [r for r in at_name if r["Type"] == qtype]
    if of_type:
        return Selection("NOERROR", answer=choose_among(of_type, rng))
    cname = [r for r in at_name if r["Type"] == "CNAME"]
    if cname:
        return Selection("NOERROR", answer=choose_among(cname, rng))
    return Selection("NOERROR", authority=soa)


def to_rrs(owner: str, rrset: RecordSet) -> list[RR]:
    """dnslib resource records for one Route 53 record set, owned by ``owner``."""
    out: list[RR] = []
    for item in rrset.get("ResourceRecords", []):
        value = str(item["Value"])
        match = _MOTO_SOA.match(value)
        if match:
            value = match.group(1)
        out.extend(RR.fromZone(f"{owner} {int(rrset.get('TTL', 300))} IN {rrset['Type']} {value}"))
    return out


class RecordSource:
    """Reads one hosted zone's record sets from the Route 53 API, cached ``max_age`` seconds.

    Thread-safe. Raises ``LookupError`` when the zone does not exist and botocore errors
    when the API cannot be reached; the zone id is looked up again after such an error.
    """

    def __init__(self, zone: str, endpoint_url: str | None, region: str = "us-east-1",
                 max_age: float = 0.02) -> None:
        self.zone = normalize(zone)
        self.max_age = max_age
        self._client = boto3.client(
            "route53", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2),
        )
        self._lock = threading.Lock()
        self._zone_id: str | None = None
        self._cached: list[RecordSet] = []
        self._fetched_at = float("-inf")

    def _find_zone_id(self) -> str:
        resp = self._client.list_hosted_zones_by_name(DNSName=self.zone)
        for hz in resp.get("HostedZones", []):
            if normalize(hz["Name"]) == self.zone:
                return str(hz["Id"])
        raise LookupError(f"no hosted zone named {self.zone}")

    def records(self) -> list[RecordSet]:
        with self._lock:
            if time.monotonic() - self._fetched_at <= self.max_age:
                return self._cached
            try:
                if self._zone_id is None:
                    self._zone_id = self._find_zone_id()
                pages = self._client.get_paginator("list_resource_record_sets").paginate(
                    HostedZoneId=self._zone_id
                )
                found = [rr for page in pages for rr in page["ResourceRecordSets"]]
            except (ClientError, BotoCoreError, LookupError):
                self._zone_id = None
                raise
            self._cached, self._fetched_at = found, time.monotonic()
            return found


class Route53Resolver(BaseResolver):  # type: ignore[misc]
    """dnslib resolver answering authoritatively from a ``RecordSource``."""

    def __init__(self, source: RecordSource, rng: random.Random | None = None) -> None:
        self.source = source
        self.rng = rng or random.Random()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply(ra=0, aa=1)
        qname = str(request.q.qname)
        qtype = QTYPE.get(request.q.qtype, str(request.q.qtype))
        try:
            selection = select_records(self.source.records(), self.source.zone, qname,
                                       str(qtype), self.rng)
            for rrset in selection.answer:
                for rr in to_rrs(qname, rrset):
                    reply.add_answer(rr)
            for rrset in selection.authority:
                for rr in to_rrs(rrset["Name"], rrset):
                    reply.add_auth(rr)
        except Exception as exc:  # any failure must still answer: SERVFAIL
            log.warning("dns.servfail", qname=qname, qtype=str(qtype), error=str(exc))
            reply = request.reply(ra=0, aa=0)
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        reply.header.rcode = getattr(RCODE, selection.rcode)
        if selection.rcode == "REFUSED":
            reply.header.aa = 0
        return reply


class _QuietLogger:
    """dnslib logger that records only errors (dnslib prints every packet by default)."""

    def log_recv(self, *_: Any) -> None: ...
    def log_send(self, *_: Any) -> None: ...
    def log_request(self, *_: Any) -> None: ...
    def log_reply(self, *_: Any) -> None: ...
    def log_truncated(self, *_: Any) -> None: ...
    def log_data(self, *_: Any) -> None: ...

    def log_error(self, handler: Any, error: Any) -> None:
        log.warning("dns.packet_error", error=str(error))


@dataclass
class RunningDns:
    """UDP and TCP servers answering on one address; ``stop()`` shuts both."""

    servers: list[DNSServer]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
            server.server.server_close()


def serve(host: str, port: int, *, endpoint_url: str | None, zone: str,
          region: str = "us-east-1", max_age: float = 0.02) -> RunningDns:
    """Start UDP and TCP DNS servers on ``host:port`` in background threads."""
    resolver = Route53Resolver(RecordSource(zone, endpoint_url, region, max_age))
    servers = [
        DNSServer(resolver, address=host, port=port, tcp=tcp, logger=_QuietLogger())
        for tcp in (False, True)
    ]
    for server in servers:
        server.start_thread()
    return RunningDns(servers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="drorch lab DNS server (Route 53 in moto)")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--zone", required=True)
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--max-age", type=float, default=0.02, help="record cache seconds")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = serve(host or "127.0.0.1", int(port), endpoint_url=args.endpoint_url,
                    zone=args.zone, region=args.region, max_age=args.max_age)
    log.info("dns.listening", host=host, port=int(port), zone=normalize(args.zone))
    try:
        stop.wait()
    finally:
        running.stop()


if __name__ == "__main__":
    main()
