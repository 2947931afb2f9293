"""Find the processes a test run left behind, and stop them.

A run marks itself with an environment variable that every process it starts
inherits (PostgreSQL servers started through ``runuser`` included, moto, the
lab's apps, DNS server, SMTP sink, flappers, CLI subprocesses): those are the
run's, and are killed. A process that listens on a port of this run's blocks
and started after the run began, but carries no marker, is reported (it fails
the run) and left alone: it may belong to someone else. Anything that started
before the run is never this run's.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass

import psutil

from drorch.lab.ports import PortBlock

RUN_MARKER = "DRORCH_TEST_RUN"
RUN_STARTED = "DRORCH_TEST_RUN_STARTED"


@dataclass(frozen=True)
class Leftover:
    pid: int
    marked: bool
    line: str


def _mine(proc: psutil.Process) -> bool:
    """This process, one of its ancestors (pytest's own controller), or Python's own
    multiprocessing resource tracker, which ends when this process does."""
    me = psutil.Process()
    if proc.pid == me.pid or proc.pid in {p.pid for p in me.parents()}:
        return True
    return proc.ppid() == me.pid and "multiprocessing.resource_tracker" in " ".join(
        proc.cmdline())


def find(run_id: str, started_at: float, blocks: list[PortBlock]) -> list[Leftover]:
    """Processes this run left running (zombies and this process's ancestors aside)."""
    why: dict[int, str] = {}
    marked: set[int] = set()
    if run_id:
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(RUN_MARKER) == run_id:
                    marked.add(proc.pid)
                    why[proc.pid] = "carries this run's marker"
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid and conn.laddr and any(conn.laddr.port in b for b in blocks):
            why.setdefault(conn.pid, f"listens on {conn.laddr.ip}:{conn.laddr.port}")
    found = []
    for pid, reason in sorted(why.items()):
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if _mine(proc) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if pid not in marked and proc.create_time() < started_at:
                continue  # there before the run: not ours
            found.append(Leftover(pid, pid in marked,
                                  f"pid {pid}  {' '.join(proc.cmdline())[:120]}  ({reason})"))
    return found


def kill(pids: list[int]) -> None:
    """SIGCONT (a frozen process cannot die otherwise), then SIGKILL, children too."""
    procs: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            procs += [proc, *proc.children(recursive=True)]
    for proc in procs:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                os.kill(proc.pid, sig)
    psutil.wait_procs(procs, timeout=5)
