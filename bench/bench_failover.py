"""Failover RTO on the lab, broken down by step: median of several runs.

Each run builds a fresh lab (1 or N database pairs), runs a manual failover
(decision -> all flows validated) and reads the journal. It prints, per step,
the median duration and the median unavoidable wait (promotion, INSYNC, DNS),
then RTO, waits and what drorch itself adds (RTO - waits). Prints numbers;
asserts nothing about time.

    .venv/bin/python bench/bench_failover.py --runs 5 --pairs 1 8
    .venv/bin/python bench/bench_failover.py --runs 3 --drill   # the whole lab drill:
                        # first failing observation -> flows validated, window included
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drorch import logs  # noqa: E402
from drorch.adapters.aws import AwsClients  # noqa: E402
from drorch.audit import AuditLog  # noqa: E402
from drorch.config import Runbook, _expand_env  # noqa: E402
from drorch.engine import Engine  # noqa: E402
from drorch.incident import incident_record  # noqa: E402
from drorch.lab import lab  # noqa: E402
from drorch.lab.ports import free_port  # noqa: E402
from drorch.metrics import summarize  # noqa: E402
from drorch.store.sqlite import SqliteStore  # noqa: E402


def make_runbook(state_dir: Path, pairs: int) -> Runbook:
    ports = iter(sorted({free_port() for _ in range(4 + 2 * pairs + 8)}))
    env = {"DRORCH_STATE_DIR": str(state_dir), "DRORCH_LAB_MOTO_PORT": str(next(ports)),
           "DRORCH_LAB_APP_PORT": str(next(ports)), "DRORCH_LAB_DNS_PORT": str(next(ports)),
           "DRORCH_LAB_SMTP_PORT": str(next(ports)), "DRORCH_LAB_AWS_A_PORT": str(next(ports)),
           "DRORCH_LAB_AWS_B_PORT": str(next(ports))}
    os.environ.update(env)
    raw: dict[str, Any] = yaml.safe_load(_expand_env((ROOT / "runbooks/lab.yaml").read_text()))
    template = raw["databases"][0]
    raw["databases"], raw["secrets"] = [], []
    for i in range(pairs):
        name = "main" if i == 0 else f"db{i}"
        db = {**template, "name": name, "endpoints": {
            region: {**ep, "port": next(ports),
                     "node": {"data_directory": f"lab/pg/{name}/{region}/data"}}
            for region, ep in template["endpoints"].items()}}
        raw["databases"].append(db)
        for region in ("region-a", "region-b"):
            raw["secrets"].append({"secret_id": f"lab/{name}/db", "region": region,
                                   "database": name})
    raw["health"] = None
    return Runbook.model_validate(raw)


def one_run(pairs: int, settle_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="drorch-bench-") as tmp:
        os.chmod(tmp, 0o755)
        rb = make_runbook(Path(tmp) / "state", pairs)
        lab.up(rb)
        try:
            # A region fails a steady system, not one still finishing its start-up
            # (first checkpoints, moto loading its backends, the apps' first reads).
            time.sleep(settle_s)
            state = Path(rb.state_dir)
            store = SqliteStore(state / "journal.db")
            engine = Engine(rb, store, AuditLog(state / "audit.jsonl", redactor=logs.REDACTOR),
                            AwsClients.for_runbook(rb))
            engine.warm_up()
            incident = engine.start_failover(actor="bench", reason="bench",
                                             trigger={"kind": "manual", "detail": "bench"})
            engine.run(incident)
            record = incident_record(store, rb, incident)
            return {"record": record, "summary": summarize(record)}
        finally:
            lab.down(rb)


def one_drill() -> dict[str, Any]:
    from drorch.config import load_runbook
    from drorch.lab.drill import run_drill

    with tempfile.TemporaryDirectory(prefix="drorch-bench-") as tmp:
        os.chmod(tmp, 0o755)
        make_runbook(Path(tmp) / "state", 1)  # puts free ports and the state dir in the env
        rb = load_runbook(ROOT / "runbooks/lab.yaml")  # the lab runbook, health included
        result = run_drill(rb, keep=False, say=lambda _text: None)
        assert result.record is not None, "the drill did not fail over"
        return {"record": result.record, "summary": summarize(result.record)}


def report(pairs: int, runs: list[dict[str, Any]]) -> float:
    steps: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        for phase in run["summary"]["phases"]:
            if phase["duration_s"] is not None:
                steps.setdefault(phase["name"], []).append((phase["duration_s"], phase["wait_s"]))
    print(f"\n== {pairs} database pair(s), {len(runs)} runs (medians, seconds)")
    print(f"{'phase':34} {'duration':>9} {'wait':>7}")
    for name, values in steps.items():
        print(f"{name:34} {statistics.median(v[0] for v in values):9.3f} "
              f"{statistics.median(v[1] for v in values):7.3f}")
    rto = statistics.median(r["summary"]["rto"]["value"] for r in runs)
    waits = statistics.median(r["summary"]["waits_s"] for r in runs)
    overhead = statistics.median(r["summary"]["overhead_s"] for r in runs)
    print(f"RTO decision -> flows validated: {rto:.3f}  (waits {waits:.3f}, "
          f"drorch overhead {overhead:.3f})   all runs: "
          + ", ".join(f"{r['summary']['rto']['value']:.3f}" for r in runs))
    return rto


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the lab idles after start-up before the failover")
    parser.add_argument("--drill", action="store_true",
                        help="run the lab drill (automatic, window included) instead")
    args = parser.parse_args()
    logs.configure(json_logs=True, level=40)
    if args.drill:
        runs = [one_drill() for _ in range(args.runs)]
        report(1, runs)
        detect = statistics.median(r["summary"]["detect_s"] for r in runs)
        print(f"of which detection (the runbook's window + probe rounds): {detect:.3f}")
        return
    medians = {}
    for pairs in args.pairs:
        started = time.monotonic()
        runs = [one_run(pairs, args.settle) for _ in range(args.runs)]
        medians[pairs] = report(pairs, runs)
        print(f"(wall time for {args.runs} labs with {pairs} pair(s): "
              f"{time.monotonic() - started:.0f} s)")
    if len(medians) > 1:
        base = medians[min(medians)]
        for pairs, value in medians.items():
            print(f"RTO {pairs} pairs / {min(medians)} pair: {value / base:.2f}x")


if __name__ == "__main__":
    main()
