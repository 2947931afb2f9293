"""Find the processes a test run left behind, and stop them.

A run marks itself with an environment variable that every process it starts
inherits (moto, the lab's apps, DNS server, SMTP sink, flappers, CLI
subprocesses). PostgreSQL rewrites its own environment area for its process
titles, so its servers are found by what they listen on instead: any port in
this run's port blocks.
"""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from drorch.lab.ports import PortBlock

RUN_MARKER = "DRORCH_TEST_RUN"


def _mine(pid: int) -> bool:
    """This process or one of its ancestors (pytest's own controller)."""
    me = psutil.Process()
    return pid == me.pid or pid in {p.pid for p in me.parents()}


def find(run_id: str, blocks: list[PortBlock]) -> list[str]:
    """One line per leftover process: ``pid N  what  why``."""
    found: dict[int, str] = {}
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid and conn.laddr and any(conn.laddr.port in b for b in blocks):
            found.setdefault(conn.pid, f"listens on {conn.laddr.ip}:{conn.laddr.port}")
    if run_id:
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(RUN_MARKER) == run_id:
                    found.setdefault(proc.pid, "carries this run's marker")
    lines = []
    for pid, why in sorted(found.items()):
        if _mine(pid):
            continue
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            lines.append(f"pid {pid}  {' '.join(proc.cmdline())[:120]}  ({why})")
    return lines


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
