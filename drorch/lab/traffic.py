"""A small load generator for drills: logins and checkouts against the lab's DNS name.

Every request resolves the name through the lab's authoritative DNS server
first (as a client with TTL 0 would), so traffic follows the flip. It keeps
every checkout whose success it saw acknowledged: when, which region answered,
the order id it was given and the amount it sent. After the drill those orders
are looked up in the new primary, by all of that (an id alone can name another
order there), to count real losses. Bounded: it stops when told, or after
``max_seconds``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

from drorch.adapters import dns as dnsq


class Checkout(NamedTuple):
    """One checkout the client was told succeeded: the order as the client knows it."""

    at: float
    """Unix time the success answer arrived."""
    region: str
    """The region whose app answered (and wrote the order)."""
    order_id: int
    amount_cents: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


@dataclass
class TrafficStats:
    ok: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    acknowledged: list[Checkout] = field(default_factory=list)
    """Every checkout answered 200, in the order the answers arrived."""
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": dict(self.ok), "errors": dict(self.errors),
                "acknowledged_checkouts": len(self.acknowledged), "last_error": self.last_error}


class Traffic:
    def __init__(self, host: str, port: int, nameserver: str, *, user: str, password: str,
                 workers: int = 2, pause_s: float = 0.02, max_seconds: float = 120,
                 amount_cents: int = 1999) -> None:
        self.host, self.port, self.nameserver = host, port, nameserver
        self.amount_cents = amount_cents
        self.user, self.password = user, password
        self.workers, self.pause_s, self.max_seconds = workers, pause_s, max_seconds
        self.stats = TrafficStats()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, name=f"traffic-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> TrafficStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        return self.stats

    def successes(self, region: str | None = None) -> int:
        with self._lock:
            if region is None:
                return sum(self.stats.ok.values())
            return self.stats.ok.get(region, 0)

    def _count(self, bucket: dict[str, int], region: str) -> None:
        with self._lock:
            bucket[region] = bucket.get(region, 0) + 1

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        token: str | None = None
        address: str | None = None
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                answers, _ = dnsq.answers(self.nameserver, self.host)
                if not answers:
                    self._count(self.stats.errors, "dns")
                    time.sleep(self.pause_s)
                    continue
                if sorted(answers)[0] != address:
                    address, token = sorted(answers)[0], None  # new region: log in again
                base = f"http://{address}:{self.port}"
                headers = {"Host": self.host.rstrip(".")}
                try:
                    if token is None:
                        r = client.post(f"{base}/login", headers=headers,
                                        json={"email": self.user, "password": self.password})
                        r.raise_for_status()
                        token = r.json()["token"]
                    r = client.post(f"{base}/checkout", json={"amount_cents": self.amount_cents},
                                    headers={**headers, "Authorization": f"Bearer {token}"})
                    if r.status_code == 401:
                        token = None
                    r.raise_for_status()
                    body = r.json()
                    with self._lock:
                        self.stats.acknowledged.append(Checkout(
                            time.time(), str(body["region"]), int(body["order_id"]),
                            self.amount_cents))
                    self._count(self.stats.ok, body["region"])
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    self._count(self.stats.errors, address or "?")
                    with self._lock:
                        self.stats.last_error = f"{type(exc).__name__}: {exc}"[:200]
                time.sleep(self.pause_s)
