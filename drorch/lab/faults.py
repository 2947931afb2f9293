"""Fault injection in the lab: make a region fail the way real regions do, then heal it.

Modes (``fail``):
- ``stop``: every PostgreSQL node of the region is killed like a crash (SIGKILL of the
  postmaster and its children) and its app is stopped: probes are *refused*.
- ``hang``: the same processes are frozen with SIGSTOP: connections open (the kernel
  still accepts them) but nothing answers, so probes *time out*, the hard case.
- ``flap``: a detached ``python -m drorch.lab.faults flap`` process freezes the
  region for half of each period and thaws it for the other half. Freezing rather
  than restarting keeps the period exact (a restart takes about a second).
- ``aws-down``: the region's AWS API (its relay in front of moto,
  ``drorch.lab.aws_proxy``) is frozen with SIGSTOP: calls to that region's SSM,
  Secrets Manager and SQS hang until the caller's deadline, while its databases
  are untouched. It combines with a database fault on the same region (``stop``
  + ``aws-down`` is a whole region gone); Route 53 is global and keeps answering.

The lab's alarm chain (``drorch.lab.alarms``, when the runbook wires one): ``stop`` and
``hang`` also fire the region's CloudWatch alarm, as its Route 53 health check would
after the alarm's evaluation periods, and publish CloudWatch's notification to the
alarm's SNS topic (``alarm=False`` leaves the alarm alone: an outage drorch's probes see
before CloudWatch does). ``flap`` and ``aws-down`` do not: a health check of the app sees
no outage when only the AWS API is gone, and a flap shorter than the evaluation periods
never fires the alarm. ``heal`` sets it back to OK (notified likewise).

``heal`` undoes any of them: stops the flapper, SIGCONTs everything, starts the
PostgreSQL nodes that are down and the app if it is gone. It is safe to run twice
and on a region that has no fault. Every injection and heal is audited like any
other action (``lab.fault.injected``, ``lab.fault.healed``). What is in force is
kept in ``<lab_dir>/faults.json``; the flapper exits on its own once its entry is
gone from it (after ``heal``, or ``lab down`` removing the lab directory).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from drorch.audit import AuditLog
from drorch.config import Runbook
from drorch.lab import lab, services
from drorch.lab.postgres import PgNode

Mode = Literal["stop", "hang", "flap", "aws-down"]
MODES: tuple[str, ...] = ("stop", "hang", "flap", "aws-down")
AWS_DOWN = "aws-down"


def _fault_key(region: str, mode: str) -> str:
    """Where a fault is kept in faults.json: the AWS API's apart from the databases'."""
    return f"{region}:aws" if mode == AWS_DOWN else region


class FaultError(RuntimeError):
    """The fault cannot be injected (no lab, unknown region, a fault already in force)."""


def faults_path(runbook: Runbook) -> Path:
    return lab.lab_dir(runbook) / "faults.json"


def active_faults(runbook: Runbook) -> dict[str, dict[str, Any]]:
    """Faults in force, by region: ``{"mode", "since", "period_s"?, "pid"?}``."""
    try:
        return dict(json.loads(faults_path(runbook).read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _write_faults(runbook: Runbook, faults: dict[str, dict[str, Any]]) -> None:
    path = faults_path(runbook)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults, indent=1))
    tmp.replace(path)


def _nodes(runbook: Runbook, region: str) -> list[PgNode]:
    return [lab.node_for(runbook, db.name, region) for db in runbook.databases]


def _app_pid(state_file: Path, region: str) -> int | None:
    state = lab.LabState.load(state_file)
    return state.services.get(f"app:{region}") if state else None


def _signal_pid(pid: int | None, sig: signal.Signals) -> None:
    """Signal a lab service and, when it leads its own process group, the whole group."""
    if pid is None or not services.pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _signal_node(node: PgNode, sig: signal.Signals) -> None:
    """Postmaster first, then its children as they are *after* that (a stopped postmaster
    forks no new backend, so none escapes a SIGSTOP)."""
    pid = node.pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    for child in node.child_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)


def _freeze_region(nodes: list[PgNode], app_pid: int | None, sig: signal.Signals) -> None:
    for node in nodes:
        _signal_node(node, sig)
    _signal_pid(app_pid, sig)


def _region_checked(runbook: Runbook, region: str) -> lab.LabState:
    if region not in [r.name for r in runbook.regions]:
        raise FaultError(f"unknown region {region!r} (the runbook has "
                         f"{[r.name for r in runbook.regions]})")
    state = lab.LabState.load(lab.state_path(runbook))
    if state is None:
        raise FaultError("the lab is not up: run `drorch lab up` first")
    return state


def fail(runbook: Runbook, region: str, mode: Mode, *, period_s: float = 2.0,
         audit: AuditLog | None = None, actor: str = "lab", alarm: bool = True) -> str:
    """Inject ``mode`` into ``region``; returns what was done, in one sentence.

    ``alarm``: with ``stop`` or ``hang``, also fire the region's lab alarms (see the
    module docstring); without an alarm chain in the runbook there is none to fire.

    Not idempotent: a region that already has a fault raises ``FaultError`` (heal it
    first), so two faults never overlap and ``heal`` always knows what to undo.
    """
    state = _region_checked(runbook, region)
    if mode not in MODES:
        raise FaultError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if period_s <= 0:
        raise FaultError("the flap period must be positive")
    faults = active_faults(runbook)
    key = _fault_key(region, mode)
    if key in faults:
        raise FaultError(f"{region} already has a {faults[key]['mode']} fault: "
                         f"run `drorch lab heal {region}` first")
    if mode == AWS_DOWN:
        return _aws_down(runbook, state, region, faults, audit, actor)
    nodes = _nodes(runbook, region)
    app_pid = state.services.get(f"app:{region}")
    entry: dict[str, Any] = {"mode": mode, "since": time.time()}
    names = ", ".join(n.name for n in nodes)
    if mode == "stop":
        for node in nodes:
            node.signal_all(signal.SIGCONT)  # a frozen node must be able to die
            node.kill()
        if app_pid is not None:
            lab.stop_pid(app_pid)
        sentence = f"{region} stopped: PostgreSQL {names} killed, app stopped"
    elif mode == "hang":
        _freeze_region(nodes, app_pid, signal.SIGSTOP)
        sentence = f"{region} hung: PostgreSQL {names} and app frozen (SIGSTOP)"
    else:
        # Recorded before the flapper starts: it exits as soon as its entry is missing.
        faults[region] = {**entry, "period_s": period_s, "pid": None}
        _write_faults(runbook, faults)
        entry.update(period_s=period_s, pid=_start_flapper(runbook, region, period_s))
        sentence = (f"{region} flapping: PostgreSQL {names} and app frozen for "
                    f"{period_s / 2:g}s of every {period_s:g}s (flapper pid {entry['pid']})")
    faults[region] = entry
    _write_faults(runbook, faults)
    fired = _set_alarms(runbook, region, "ALARM") if alarm and mode != "flap" else []
    if fired:
        sentence += "; " + ", ".join(fired) + " (notified through SNS)"
    if audit is not None:
        audit.record("lab.fault.injected", actor=actor, reason=sentence,
                     inputs={"region": region, "mode": mode, "alarm": alarm,
                             **({"period_s": period_s} if mode == "flap" else {})},
                     detail={"nodes": [n.name for n in nodes], "app_pid": app_pid,
                             "alarms": fired})
    return sentence


def _set_alarms(runbook: Runbook, region: str, state: str) -> list[str]:
    """Fire or clear ``region``'s lab alarms through the lab's moto (never a region
    relay: the lab plays CloudWatch, whose own API is not the one a fault takes away)."""
    from drorch.adapters.aws import AwsClients
    from drorch.lab import alarms

    if not alarms.alarms_of(runbook, region):
        return []
    return alarms.notify(runbook, AwsClients(runbook.aws.endpoint_url), region, state)


def set_alarm(runbook: Runbook, region: str, state: str, *, audit: AuditLog | None = None,
              actor: str = "lab") -> str:
    """Fire (``ALARM``) or clear (``OK``) ``region``'s lab alarms without any fault: a
    false alarm, to see what the watcher makes of an alarm its probes do not confirm.
    Audited as ``lab.alarm.set``; returns one sentence."""
    _region_checked(runbook, region)
    from drorch.lab import alarms

    if not alarms.alarms_of(runbook, region):
        raise FaultError(f"the runbook wires no alarm for {region} (health.alarm_queue_url "
                         "and health.alarm_regions)")
    changed = _set_alarms(runbook, region, state)
    sentence = (f"{region}: " + ", ".join(changed) + " (notified through SNS)" if changed
                else f"{region}: its alarms are already {state} (nothing sent)")
    if audit is not None:
        audit.record("lab.alarm.set", actor=actor, reason=sentence,
                     inputs={"region": region, "state": state}, detail={"changed": changed})
    return sentence


def _aws_down(runbook: Runbook, state: lab.LabState, region: str,
              faults: dict[str, dict[str, Any]], audit: AuditLog | None, actor: str) -> str:
    name = lab.aws_service_name(runbook, region)
    pid = state.services.get(name) if name else None
    if pid is None or not services.pid_alive(pid):
        raise FaultError(f"{region} has no AWS endpoint of its own in this lab (the runbook's "
                         "aws.region_endpoints names none for its AWS region, or its relay "
                         "is not running)")
    _signal_pid(pid, signal.SIGSTOP)
    faults[_fault_key(region, AWS_DOWN)] = {"mode": AWS_DOWN, "since": time.time(), "pid": None}
    _write_faults(runbook, faults)
    sentence = (f"{region}'s AWS API ({runbook.region(region).aws_region}: SSM, Secrets "
                "Manager, SQS) hung: its endpoint is frozen (SIGSTOP); databases untouched")
    if audit is not None:
        audit.record("lab.fault.injected", actor=actor, reason=sentence,
                     inputs={"region": region, "mode": AWS_DOWN}, detail={"endpoint_pid": pid})
    return sentence


def _thaw_aws(runbook: Runbook, region: str) -> bool:
    """SIGCONT the region's AWS endpoint; True when there is one."""
    state = lab.LabState.load(lab.state_path(runbook))
    name = lab.aws_service_name(runbook, region)
    pid = state.services.get(name) if state and name else None
    _signal_pid(pid, signal.SIGCONT)
    return pid is not None


def heal(runbook: Runbook, region: str, *, audit: AuditLog | None = None,
         actor: str = "lab") -> str:
    """Bring ``region`` back: stop the flapper, resume frozen processes, start what is
    down, thaw its AWS API. Idempotent; returns what was done, in one sentence."""
    _region_checked(runbook, region)
    faults = active_faults(runbook)
    entry = faults.pop(region, None)
    aws_entry = faults.pop(_fault_key(region, AWS_DOWN), None)
    _write_faults(runbook, faults)  # first: a flapper that outlives its stop sees this
    done: list[str] = []
    if _thaw_aws(runbook, region) and aws_entry:
        done.append("AWS API answering")
    if entry and entry.get("pid"):
        services.stop_pid(int(entry["pid"]))
        done.append("flapper stopped")
    nodes = _nodes(runbook, region)
    app_pid = _app_pid(lab.state_path(runbook), region)
    _freeze_region(nodes, app_pid, signal.SIGCONT)
    for node in nodes:
        if not node.is_running():
            node.start()
            done.append(f"PostgreSQL {node.name} started")
    done += _rejoin_aurora_secondaries(runbook, region)
    if runbook.lab is not None and (app_pid is None or not services.pid_alive(app_pid)):
        lab.start_app(runbook, region)
        done.append("app started")
    done += _set_alarms(runbook, region, "OK")
    sentence = f"{region} healed" + (f": {', '.join(done)}" if done else " (resumed)")
    if audit is not None:
        audit.record("lab.fault.healed", actor=actor, reason=sentence,
                     inputs={"region": region, "mode": entry["mode"] if entry else None,
                             "aws_down": aws_entry is not None},
                     detail={"done": done})
    return sentence


def _rejoin_aurora_secondaries(runbook: Runbook, region: str) -> list[str]:
    """What Aurora does when the old writer's region is back after an unplanned global
    failover: its cluster, a secondary now, follows the new writer again, its
    unreplicated writes gone from it (the failover's snapshot keeps them:
    :mod:`drorch.lab.aurora_images`). Only where the global cluster names another
    cluster its writer while the region's real cluster still writes."""
    from drorch.adapters import postgres as pg
    from drorch.adapters.aws import AwsClients
    from drorch.lab.aurora_images import rejoin_as_secondary

    done = []
    for db in runbook.databases:
        if db.kind != "aurora-global":
            continue
        mine = db.endpoints[region].cluster_id
        client = AwsClients.for_runbook(runbook)("rds", runbook.primary.aws_region)
        members = client.describe_global_clusters(GlobalClusterIdentifier=str(
            db.global_cluster_id))["GlobalClusters"][0]["GlobalClusterMembers"]
        writer = next((m["DBClusterArn"] for m in members if m.get("IsWriter")), "")
        ours = [m for m in members if m["DBClusterArn"].endswith(f":cluster:{mine}")]
        node = lab.node_for(runbook, db.name, region)
        if not ours or ours[0].get("IsWriter") or not writer or pg.in_recovery(node.dsn()):
            continue
        other = next(r.name for r in runbook.regions if r.name != region)
        how = rejoin_as_secondary(node, lab.node_for(runbook, db.name, other).dsn())
        done.append(f"{node.name} rejoined as an Aurora secondary ({how})")
    return done


def release_all(runbook: Runbook) -> list[str]:
    """For ``lab down``: stop every flapper and thaw every frozen process, start nothing.
    Call it before stopping the servers (a server frozen again mid-stop stalls it)."""
    done = []
    for region, entry in active_faults(runbook).items():
        if entry.get("pid"):
            services.stop_pid(int(entry["pid"]))
            done.append(f"flapper {region}")
    if faults_path(runbook).exists():
        _write_faults(runbook, {})
    state_file = lab.state_path(runbook)
    for region in runbook.regions:
        _freeze_region(_nodes(runbook, region.name), _app_pid(state_file, region.name),
                       signal.SIGCONT)
        _thaw_aws(runbook, region.name)
    return done


# -- the flapper: a detached process ---------------------------------------------------
def _start_flapper(runbook: Runbook, region: str, period_s: float) -> int:
    base = lab.lab_dir(runbook)
    spec = {
        "region": region, "period_s": period_s,
        "faults": str(faults_path(runbook).resolve()),
        "lab_state": str(lab.state_path(runbook).resolve()),
        "nodes": [{"name": n.name, "datadir": str(n.datadir), "port": n.port,
                   "rundir": str(n.rundir)} for n in _nodes(runbook, region)],
    }
    spec_file = base / f"flap-{region}.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    with open(base / f"flap-{region}.log", "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "drorch.lab.faults", "flap", "--spec", str(spec_file)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    return proc.pid


def _still_wanted(spec: dict[str, Any]) -> bool:
    """The flapper's own entry is still in faults.json (heal or lab down removes it)."""
    try:
        entry = json.loads(Path(spec["faults"]).read_text()).get(spec["region"], {})
    except (FileNotFoundError, ValueError):
        return False
    return entry.get("mode") == "flap" and entry.get("pid") in (None, os.getpid())


def flap(spec: dict[str, Any], stop: threading.Event) -> None:
    """Freeze the region for half of each period, thaw it for the other half, until
    ``stop`` is set or the fault is no longer recorded; always leaves it thawed."""
    nodes = [PgNode(n["name"], Path(n["datadir"]), n["port"], Path(n["rundir"]))
             for n in spec["nodes"]]
    state_file, region = Path(spec["lab_state"]), spec["region"]
    half = float(spec["period_s"]) / 2
    frozen = False
    try:
        while not stop.is_set() and _still_wanted(spec):
            frozen = not frozen
            sig = signal.SIGSTOP if frozen else signal.SIGCONT
            _freeze_region(nodes, _app_pid(state_file, region), sig)
            print(json.dumps({"at": time.time(), "event": "flap", "frozen": frozen}),
                  flush=True)
            stop.wait(half)
    finally:
        _freeze_region(nodes, _app_pid(state_file, region), signal.SIGCONT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m drorch.lab.faults")
    sub = parser.add_subparsers(dest="command", required=True)
    flap_cmd = sub.add_parser("flap", help="run the flapper (started by `drorch lab fail`)")
    flap_cmd.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    flap(json.loads(args.spec.read_text()), stop)


if __name__ == "__main__":
    main()
