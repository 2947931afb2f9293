"""Ports for lab parts: handed out from a block one process owns, never twice.

Probing a random port for "free" is a race between processes: a stopped
PostgreSQL server's port looks free, another lab takes it, and the first
server cannot come back ("could not bind … Address already in use"). So each
process that starts lab parts owns a block of ports no other process is
handed (a test worker derives its block from its pytest-xdist worker id), and
within the block ports go out in order and are never handed out again, even
after whatever used them has stopped.

Every block lies below the kernel's ephemeral range (``ip_local_port_range``,
32768–60999 on Linux by default: the kernel hands those to outgoing
connections) and outside the lab runbook's default ports (25000–25499).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field

EPHEMERAL_LOW = 32768
"""Linux's default ``net.ipv4.ip_local_port_range`` starts here
(https://www.kernel.org/doc/Documentation/networking/ip-sysctl.txt)."""
LAB_DEFAULTS = range(25000, 25500)
"""Where ``runbooks/lab.yaml`` puts its parts when no environment variable moves them."""
WORKER_BASE = 10000
WORKER_BLOCK = 1000
DEFAULT_BLOCK = (20000, 25000)
"""For processes outside the test suite (benchmarks): below the lab's defaults."""


class PortsExhausted(RuntimeError):
    """Every port of the block has been handed out (or is taken by someone else)."""


@dataclass
class PortBlock:
    """Ports ``low`` (inclusive) to ``high`` (exclusive), handed out in order.

    ``take`` skips a port something else already listens on, and never returns a
    port twice in this process. Thread-safe.
    """

    low: int
    high: int
    _next: int = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not 1024 <= self.low < self.high <= EPHEMERAL_LOW:
            raise ValueError(f"port block {self.low}-{self.high} must lie within 1024-"
                             f"{EPHEMERAL_LOW} (below the kernel's ephemeral range)")
        if self.low < LAB_DEFAULTS.stop and LAB_DEFAULTS.start < self.high:
            raise ValueError(f"port block {self.low}-{self.high} overlaps the lab's default "
                             f"ports {LAB_DEFAULTS.start}-{LAB_DEFAULTS.stop - 1}")
        self._next = self.low

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.low <= port < self.high

    def carve(self, count: int) -> PortBlock:
        """The next ``count`` ports as a block of their own (for code that must hand
        out ports by itself, e.g. a test of ``PortBlock``); this block skips them."""
        with self._lock:
            low = self._next
            if low + count > self.high:
                raise PortsExhausted(f"no {count} ports left in {self.low}-{self.high - 1}")
            self._next = low + count
        return PortBlock(low, low + count)

    def take(self) -> int:
        with self._lock:
            while self._next < self.high:
                port, self._next = self._next, self._next + 1
                if _bindable(port):
                    return port
        raise PortsExhausted(f"no port left in {self.low}-{self.high - 1}")


def _bindable(port: int) -> bool:
    """Nobody has ``port`` on any local address (the lab's apps listen on 127.0.1.1 and
    127.0.2.1), over TCP or UDP (the lab's DNS server). SO_REUSEADDR only for TCP, so
    a socket in TIME_WAIT does not count; on UDP it would let the bind succeed over a
    live server."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError:
                return False
    return True


def worker_index(worker_id: str | None) -> int:
    """``gw3`` -> 3; no pytest-xdist worker (a plain ``pytest`` run) -> 0."""
    if not worker_id or worker_id == "master":
        return 0
    if not worker_id.startswith("gw") or not worker_id[2:].isdigit():
        raise ValueError(f"unexpected pytest-xdist worker id {worker_id!r}")
    return int(worker_id[2:])


def spare_index(base: int = WORKER_BASE, size: int = WORKER_BLOCK) -> int:
    """The highest block index below the lab's defaults for ``base``: no worker gets it
    (a run needs fewer workers), so a test can start "another worker's" lab there."""
    limit = LAB_DEFAULTS.start if base < LAB_DEFAULTS.start else EPHEMERAL_LOW
    return (limit - base) // size - 1


def worker_block(index: int, base: int = WORKER_BASE, size: int = WORKER_BLOCK) -> PortBlock:
    """The block test worker ``index`` owns: ``base + index*size`` onwards.

    Raises ValueError when the block would reach the lab's defaults or the
    ephemeral range (too many workers for the base): failing loudly beats sharing.
    """
    low = base + index * size
    return PortBlock(low, low + size)


_block: PortBlock | None = None
_block_lock = threading.Lock()


def use_block(block: PortBlock) -> None:
    """Make ``block`` the one ``free_port`` hands out from in this process."""
    global _block
    with _block_lock:
        _block = block


def current_block() -> PortBlock:
    """The process's block: set by ``use_block``, else ``DRORCH_LAB_PORTS=LOW-HIGH``,
    else ``DEFAULT_BLOCK``."""
    global _block
    with _block_lock:
        if _block is None:
            spec = os.environ.get("DRORCH_LAB_PORTS")
            low, high = (int(p) for p in spec.split("-", 1)) if spec else DEFAULT_BLOCK
            _block = PortBlock(low, high)
        return _block


def free_port() -> int:
    """A port nobody listens on, from this process's block, never handed out before."""
    return current_block().take()
