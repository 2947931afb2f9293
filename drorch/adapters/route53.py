"""Route 53 weighted records: read weights, flip them in one change batch, wait INSYNC.

moto accepts weights above 255 and answers INSYNC at once; AWS does neither,
so weights are validated here and the wait is real code with a deadline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

MAX_WEIGHT = 255


@dataclass(frozen=True)
class WeightedRecord:
    name: str
    type: str
    set_identifier: str
    weight: int
    raw: dict[str, Any]


def zone_id(client: Any, zone_name: str) -> str:
    zone_name = zone_name if zone_name.endswith(".") else zone_name + "."
    resp = client.list_hosted_zones_by_name(DNSName=zone_name, MaxItems="1")
    for zone in resp["HostedZones"]:
        if zone["Name"] == zone_name:
            return str(zone["Id"]).split("/")[-1]
    raise LookupError(f"hosted zone {zone_name} not found")


def weighted_records(client: Any, zone: str, name: str, rtype: str) -> list[WeightedRecord]:
    name = name if name.endswith(".") else name + "."
    out: list[WeightedRecord] = []
    paginator = client.get_paginator("list_resource_record_sets")
    for page in paginator.paginate(HostedZoneId=zone):
        for rrset in page["ResourceRecordSets"]:
            if rrset["Name"] == name and rrset["Type"] == rtype and "SetIdentifier" in rrset:
                out.append(WeightedRecord(name, rtype, rrset["SetIdentifier"],
                                          int(rrset.get("Weight", 0)), rrset))
    return out


def change_weights(client: Any, zone: str, records: list[WeightedRecord],
                   weights: dict[tuple[str, str], int], comment: str) -> str:
    """UPSERT every record whose (name, set identifier) is in ``weights``, in one batch.
    Returns the change id."""
    changes = []
    for rec in records:
        key = (rec.name, rec.set_identifier)
        if key not in weights:
            continue
        weight = weights[key]
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight {weight} for {rec.name}/{rec.set_identifier} is outside "
                             f"0..{MAX_WEIGHT}")
        rrset = dict(rec.raw)
        rrset["Weight"] = weight
        changes.append({"Action": "UPSERT", "ResourceRecordSet": rrset})
    if not changes:
        raise ValueError("no record to change")
    resp = client.change_resource_record_sets(
        HostedZoneId=zone, ChangeBatch={"Comment": comment, "Changes": changes})
    return str(resp["ChangeInfo"]["Id"])


def wait_insync(client: Any, change_id: str, timeout_s: float, poll_s: float = 0.5) -> float:
    """Wait until the change is INSYNC; returns seconds waited; TimeoutError past the deadline."""
    start = time.monotonic()
    while True:
        status = client.get_change(Id=change_id)["ChangeInfo"]["Status"]
        if status == "INSYNC":
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"change {change_id} not INSYNC after {timeout_s:.0f}s")
        time.sleep(poll_s)
