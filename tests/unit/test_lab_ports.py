"""Port blocks: disjoint per test worker, below the ephemeral range, never handed out twice."""

from __future__ import annotations

import socket

import pytest

from drorch.lab import ports
from drorch.lab.ports import PortBlock, PortsExhausted, worker_block, worker_index


def test_worker_blocks_are_disjoint_and_clear_of_lab_defaults_and_ephemeral_range() -> None:
    """Every worker a 2..15-process run can have gets a block of its own, and none
    reaches the lab's default ports or the kernel's ephemeral range."""
    blocks = [worker_block(i) for i in range(15)]
    for i, a in enumerate(blocks):
        assert a.high <= ports.EPHEMERAL_LOW
        assert a.high <= ports.LAB_DEFAULTS.start or a.low >= ports.LAB_DEFAULTS.stop
        for b in blocks[i + 1:]:
            assert a.high <= b.low
    with pytest.raises(ValueError, match="default ports"):
        worker_block(15)
    assert ports.spare_index() == 14


def test_carved_ports_are_never_handed_out_by_the_block() -> None:
    """A carved sub-block's ports are skipped by the block it came from."""
    block = PortBlock(worker_block(0).low, worker_block(0).low + 10)
    part = block.carve(4)
    assert (part.low, part.high) == (block.low, block.low + 4)
    assert block.take() >= part.high
    with pytest.raises(PortsExhausted):
        block.carve(10)


def test_worker_index_from_xdist_ids() -> None:
    """gwN is worker N; a run without xdist is worker 0; anything else is refused."""
    assert [worker_index(w) for w in ("gw0", "gw7", None, "master")] == [0, 7, 0, 0]
    with pytest.raises(ValueError):
        worker_index("node-1")


def test_a_port_is_never_handed_out_twice_even_once_free_again() -> None:
    """A port whose server stopped looks free to a probe; the block still never
    gives it out again (that was the race between two labs)."""
    block = ports.current_block().carve(20)
    first = block.take()
    with socket.socket() as s:  # nothing listens on it now: a probe would call it free
        # (SO_REUSEADDR: a server an earlier run left on this port may leave TIME_WAITs)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", first))
    taken = []  # another test's server may hold some of the 19 others: they are skipped
    with pytest.raises(PortsExhausted):
        for _ in range(20):
            taken.append(block.take())
    assert taken and first not in taken and len(taken) == len(set(taken)) <= 19


def test_a_port_someone_listens_on_is_skipped() -> None:
    """A port already taken on any local address, over TCP or UDP, is skipped."""
    low = ports.current_block().carve(3).low
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        udp.bind(("127.0.0.1", low))
        tcp.bind(("127.0.2.1", low + 1))
        tcp.listen()
        assert PortBlock(low, low + 3).take() == low + 2
