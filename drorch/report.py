"""The incident report: one stable JSON document, rendered as Markdown or HTML.

``build_report(incident)`` turns the incident record (``drorch.incident``) into
the report JSON documented in ``docs/report-json.md`` (``schema_version`` 1:
keys are only ever added, never renamed or removed, within a version).
``render_markdown`` and ``render_html`` read only that JSON, so every format
says the same thing. The HTML is self-contained: inline CSS and an inline SVG
Gantt chart of the phases and steps on a time axis; RTO/RPO misses are red.

Secrets: the whole report passes through ``drorch.redact.redact`` before it is
returned, and the renderers escape everything they print.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drorch import metrics
from drorch.redact import redact
from drorch.report_detection import detection

SCHEMA_VERSION = 1
FORMATS = ("json", "md", "html")


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _outcome(incident: Mapping[str, Any], flows: list[Mapping[str, Any]]) -> str:
    if incident.get("state") == "halted":
        return "halted"
    if any(not f.get("ok") for f in flows) or any(
        s.get("status") == "failed" for s in incident.get("steps") or []
    ):
        return "failed"
    return "completed" if incident.get("completed_at") is not None else "in_progress"


def _timeline(incident: Mapping[str, Any], origin: float | None) -> list[dict[str, Any]]:
    events: list[tuple[float, str, str]] = []
    if incident.get("first_failure_at") is not None:
        trigger = incident.get("trigger") or {}
        events.append((incident["first_failure_at"], "first_failure",
                       str(trigger.get("detail") or "first failing observation")))
    if incident.get("decided_at") is not None:
        events.append((incident["decided_at"], "decided",
                       f"{incident.get('kind', 'incident')} decided by "
                       f"{incident.get('actor') or 'unknown'}"
                       + (f": {incident['reason']}" if incident.get("reason") else "")))
    for tr in incident.get("transitions") or []:
        if tr.get("at") is not None:
            events.append((tr["at"], "transition", f"{tr.get('trigger')} -> {tr.get('state')}"))
    for step in incident.get("steps") or []:
        if step.get("started_at") is not None:
            events.append((step["started_at"], "step_started", str(step.get("id"))))
        if step.get("ended_at") is not None:
            events.append((step["ended_at"], f"step_{step.get('status')}", str(step.get("id"))))
    for flow in incident.get("flows") or []:
        if flow.get("ended_at") is not None:
            verdict = "flow_passed" if flow.get("ok") else "flow_failed"
            events.append((flow["ended_at"], verdict,
                           f"{flow.get('name')} after {flow.get('attempts')} attempt(s)"
                           + (f": {flow['error']}" if flow.get("error") else "")))
    if incident.get("completed_at") is not None:
        events.append((incident["completed_at"], "completed", str(incident.get("state"))))
    events.sort(key=lambda e: e[0])
    return [
        {"at": at, "at_iso": _iso(at),
         "offset_s": None if origin is None else round(at - origin, 3),
         "event": name, "detail": detail}
        for at, name, detail in events
    ]


def _summary(report: Mapping[str, Any]) -> str:
    def fmt(block: Mapping[str, Any], unit: str = "s") -> str:
        value = block.get("value")
        text = "unknown" if value is None else f"{value:.1f} {unit}"
        if block.get("target") is not None:
            verdict = "not measured yet" if block.get("unknown") else \
                "met" if block["met"] else "MISSED"
            text += f" (target {block['target']:g} {unit}, {verdict})"
        return text

    flows = report["flows"]
    passed = sum(1 for f in flows if f.get("ok"))
    rpo = report["rpo"]
    rpo_text = fmt(rpo["seconds"])
    if rpo.get("bytes") is not None:
        rpo_text += f", {rpo['bytes']} bytes"
    if rpo.get("rows") is not None:
        rpo_text += f", {rpo['rows']} rows in {rpo.get('transactions')} transactions"
    if rpo.get("caveats"):
        rpo_text += " (" + "; ".join(rpo["caveats"]) + ")"
    after = rpo.get("after_failover") or {}
    if after.get("rows"):
        rpo_text += (f"; {after['rows']} more rows were written to the old primary after the "
                     f"failover ({after.get('first')} to {after.get('last')}), not counted")
    who = report["decided_by"]
    not_done = report.get("not_done") or []
    deferred = ""
    prepared = [f"{p['gid']} ({s['id'].split(':', 1)[1]})" for s in report["steps"]
                if s["stage"] == "promote" and s["status"] == "done"
                for p in (s.get("detail") or {}).get("prepared_transactions") or []]
    if prepared:
        deferred += (" Prepared transactions on the new primary need a human (they hold "
                     "their row locks until COMMIT PREPARED or ROLLBACK PREPARED there): "
                     + ", ".join(prepared) + ".")
    limits = [f"{s['id']}: {n}" for s in report["steps"] if s["status"] == "done"
              for n in (s.get("detail") or {}).get("not_possible") or []]
    if limits:  # what the role drorch connects as may not do there (RDS's master user)
        deferred += " Not possible for the role drorch connects as: " + "; ".join(limits) + "."
    if not_done:
        deferred += (" Not done (the region's AWS API did not answer; retried later): "
                     + "; ".join(f"{d['step']} in {d['region']}" for d in not_done) + ".")
    return (
        f"{report['kind'].capitalize()} {report['incident_id']} ({report['runbook']}, "
        f"{report.get('from_region') or '?'} -> {report.get('to_region') or '?'}) "
        f"decided by {who['actor']} on a {who['trigger'].get('kind', 'manual')} trigger: "
        f"{report['outcome']}; {passed}/{len(flows)} flows passed; "
        f"RTO {fmt(report['rto'])}; RPO {rpo_text}.{deferred}"
    )


def build_report(incident: Mapping[str, Any]) -> dict[str, Any]:
    """The report JSON for one incident record (pure; secrets redacted)."""
    flows = [dict(f) for f in incident.get("flows") or []]
    numbers = metrics.summarize(incident)
    trigger = dict(incident.get("trigger") or {"kind": "manual", "detail": ""})
    phase_by_name = {p["name"]: p for p in numbers["phases"] if p["kind"] == "step"}
    steps = []
    for step in incident.get("steps") or []:
        phase = phase_by_name.get(step.get("id"), {})
        steps.append({
            "id": step.get("id"), "stage": step.get("stage"), "status": step.get("status"),
            "started_at": step.get("started_at"), "ended_at": step.get("ended_at"),
            "duration_s": phase.get("duration_s"), "wait_s": phase.get("wait_s", 0.0),
            "detail": step.get("detail") or {},
        })
    missed = [name for name, met in (("rto", numbers["rto"]["met"]),
                                     ("rpo", numbers["rpo"]["seconds"]["met"])) if met is False]
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "incident_id": incident.get("incident_id"),
        "kind": incident.get("kind") or "failover",
        "runbook": incident.get("runbook"),
        "from_region": incident.get("from_region"),
        "to_region": incident.get("to_region"),
        "state": incident.get("state"),
        "outcome": _outcome(incident, flows),
        "summary": "",
        "decided_by": {
            "actor": incident.get("actor") or "unknown",
            "automatic": trigger.get("kind") != "manual",
            "trigger": trigger,
            "reason": incident.get("reason"),
        },
        # which alarm raised it and which probes confirmed it (drorch.report_detection)
        "detection": detection(trigger),
        "times": {
            key: {"at": incident.get(key), "iso": _iso(incident.get(key))}
            for key in ("first_failure_at", "decided_at", "completed_at")
        },
        "rto": numbers["rto"],
        "rpo": numbers["rpo"],
        "targets_missed": missed,
        "detect_s": numbers["detect_s"],
        "waits_s": numbers["waits_s"],
        "overhead_s": numbers["overhead_s"],
        "phases": numbers["phases"],
        "steps": steps,
        # steps aimed at the failed region that could not be done (its API did not
        # answer): best effort, deferred, retried while the failover is in force
        "not_done": [{"step": s["id"], "region": s["detail"].get("region"),
                      "api": s["detail"].get("api"), "error": s["detail"].get("error")}
                     for s in steps if s["status"] == "deferred"],
        "flows": flows,
        "timeline": _timeline(incident, numbers["rto"]["start"]),
        "audit": incident.get("audit"),
    }
    if incident.get("reconcile"):
        report["reconcile"] = incident["reconcile"]
    if incident.get("old_region"):
        report["old_region"] = incident["old_region"]
    report["summary"] = _summary(report)
    # JSON round trip: the report is exactly what its JSON form says, nothing richer.
    return json.loads(json.dumps(redact(report), default=str))


def render(report: Mapping[str, Any], fmt: str) -> str:
    """The report in ``fmt`` (``json``, ``md`` or ``html``); ValueError on anything else."""
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    if fmt == "md":
        return render_markdown(report)
    if fmt == "html":
        return render_html(report)
    raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")


def write_reports(incident: Mapping[str, Any], directory: Path,
                  formats: tuple[str, ...] = FORMATS) -> dict[str, str]:
    """Write ``<directory>/<incident id>.<fmt>`` for each format (the place the README
    promises: ``<state_dir>/reports/``); returns each format's path."""
    report = build_report(incident)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for fmt in formats:
        path = directory / f"{report['incident_id']}.{fmt}"
        path.write_text(render(report, fmt))
        paths[fmt] = str(path)
    return paths


def _num(value: Any, unit: str = "s") -> str:
    if value is None:
        return "–"
    return (f"{value:.3f} {unit}" if isinstance(value, float) else f"{value} {unit}").strip()


def _verdict(block: Mapping[str, Any]) -> str:
    if block.get("unknown"):
        return "unknown until failback reads the old primary's WAL"
    if block.get("met") is None:
        return "no target"
    return "met" if block["met"] else "MISSED"


def _target_rows(report: Mapping[str, Any]) -> list[tuple[str, str, str, str, bool]]:
    """(metric, value, target, verdict, missed) for the RTO/RPO table."""
    rto, rpo_s = report["rto"], report["rpo"]["seconds"]
    rows = [
        ("RTO", _num(rto.get("value")), _num(rto.get("target")), _verdict(rto),
         rto.get("met") is False),
        ("RPO (time)", _num(rpo_s.get("value")), _num(rpo_s.get("target")), _verdict(rpo_s),
         rpo_s.get("met") is False),
        ("RPO (bytes)", _num(report["rpo"].get("bytes"), "B"), "–", "", False),
    ]
    for key in ("transactions", "rows"):
        if report["rpo"].get(key) is not None:
            rows.append((f"RPO ({key})", str(report["rpo"][key]), "–", "", False))
    if rpo_s.get("value") is None and report["rpo"].get("replica_behind_s") is not None:
        rows.append(("Replica's newest commit, before the RTO start",
                     _num(report["rpo"]["replica_behind_s"]), "–", "a fact, not a bound",
                     False))
    return rows


def _old_region_markdown(old: Mapping[str, Any] | None) -> list[str]:
    """What was known about the region a failover left, while and after it was gone."""
    if not old:
        return []
    out = ["", f"## What was known about {_md(old.get('region'))}", ""]
    for db, seen in (old.get("databases") or {}).items():
        reach = seen.get("reachable_at_freeze")
        fenced = seen.get("fenced_on_return") or {}
        out.append(f"- {_md(db)}: "
                   + ("answered the freeze" if reach else "did not answer the freeze"
                      if reach is False else "freeze not recorded")
                   + (f"; came back and was fenced ({_md(fenced.get('state'))}) by "
                      f"{_md(fenced.get('by'))} at {_md(_iso(fenced.get('at')))}"
                      if fenced else "; not seen back since"))
    flag = old.get("write_flag_on_return")
    if flag:
        out.append(f"- write flag on return: {_md(flag.get('state'))} at "
                   f"{_md(_iso(flag.get('at')))}")
    return out


def _md(text: Any) -> str:
    return str(text if text is not None else "–").replace("|", "\\|").replace("\n", " ")


def _reconcile_lines(db: str, r: Mapping[str, Any]) -> list[str]:
    """The reconcile section's sentences (shared by Markdown and HTML)."""
    lost = r.get("acknowledged_rows_lost")
    txns = r.get("old_transactions")
    lines = [f"{db}: found by {r.get('method')} ({r.get('method_reason')}); "
             + (f"{txns} old-side transactions." if txns is not None else
                "old-side transactions not counted (only the WAL tells them apart)."),
             f"Acknowledged rows lost: {'unknown' if lost is None else lost}."]
    if r.get("unlisted_tables"):
        lines.append(f"Tables not listed in the runbook, reconciled with policy "
                     f"{r.get('default_policy')}: {', '.join(r['unlisted_tables'])}.")
    lines += list(r.get("notes") or [])
    if r.get("blocked"):
        lines.append("Not compared (failback halted before any rewind): "
                     + "; ".join(r["blocked"]))
    if r.get("conflict_file"):
        lines.append(f"Conflict file: {r['conflict_file']}")
    if r.get("applied_as_set"):
        lines.append(f"Applied as sets (region-a's plain inserts, and its updates and deletes "
                     f"of rows region-b never touched, copied server to server; each set's "
                     f"keys and digest in drorch_reconcile.bulk_sets): {r['applied_as_set']} "
                     "rows (counted in Applied).")
    if r.get("rekeyed"):
        sample = ", ".join(f"{m['table']}.{m['column']} {m['old']} → {m['new']}"
                           for m in r.get("rekeyed_sample", [])[:5])
        lines.append(f"Key collisions re-keyed (both rows kept, region-a's under a new key): "
                     f"{r['rekeyed']}; mapping old → new key: {r.get('key_mapping_file')}"
                     + (f" (first: {sample})" if sample else ""))
    lines.append(f"Evidence (what the old primary held before it was rewound or "
                 f"replaced): {r.get('evidence') or 'none kept'}")
    return lines


_RECONCILE_COLUMNS = ("table", "found", "applied", "rekeyed", "kept", "pending",
                      "unaccounted")


def _reconcile_markdown(section: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for db, r in section.items():
        out += ["", f"## Reconcile: {_md(db)}", ""]
        out += [f"- {_md(line)}" for line in _reconcile_lines(db, r)]
        out += ["", "| Table | Found | Applied | Re-keyed | Kept | Pending (conflict file) "
                "| Unaccounted | By kind |", "|---|---|---|---|---|---|---|---|"]
        for t in r.get("tables", []):
            kinds = ", ".join(f"{k} {v}" for k, v in (t.get("by_kind") or {}).items())
            out.append("| " + " | ".join(_md(t.get(c)) for c in _RECONCILE_COLUMNS)
                       + f" | {_md(kinds)} |")
    return out


def render_markdown(report: Mapping[str, Any]) -> str:
    """A Markdown report: summary, decision, targets, steps, flows, timeline."""
    who = report["decided_by"]
    out = [f"# {report['kind'].capitalize()} report {report['incident_id']}", "",
           report["summary"], "",
           f"- **Outcome:** {report['outcome']} (state `{report['state']}`)",
           f"- **Decided by:** {_md(who['actor'])} "
           f"({'automatic' if who['automatic'] else 'manual'}, trigger "
           f"{_md(who['trigger'].get('kind'))}: {_md(who['trigger'].get('detail'))})",
           f"- **Reason:** {_md(who.get('reason'))}",
           f"- **Detection:** {_md(report['detection']['sentence'])}",
           f"- **drorch overhead:** {_num(report.get('overhead_s'))} "
           f"(waits {_num(report.get('waits_s'))}, detection {_num(report.get('detect_s'))})",
           "", "## RPO and RTO", "", "| Metric | Value | Target | Verdict |", "|---|---|---|---|"]
    for name, value, target, verdict, missed in _target_rows(report):
        out.append(f"| {name} | {value} | {target} | {'**MISSED**' if missed else verdict} |")
    notes = {s["id"]: (s.get("detail") or {}).get("note") for s in report["steps"]}
    out += ["", "## Phases and steps", "", "| Phase | Status | Duration | Wait | Note |",
            "|---|---|---|---|---|"]
    for p in report["phases"]:
        out.append(f"| {_md(p['name'])} | {_md(p.get('status', p['kind']))} | "
                   f"{_num(p['duration_s'])} | {_num(p['wait_s'] or None)} | "
                   f"{_md(notes.get(p['name']))} |")
    out += ["", "## Validation flows", "", "| Flow | Result | Attempts | Duration | Error |",
            "|---|---|---|---|---|"]
    for f in report["flows"]:
        out.append(f"| {_md(f.get('name'))} | {'passed' if f.get('ok') else '**FAILED**'} | "
                   f"{f.get('attempts')} | {_num(f.get('duration_s'))} | {_md(f.get('error'))} |")
    if report.get("not_done"):
        out += ["", "## Not done in the failed region", "", "| Step | Region | API | Error |",
                "|---|---|---|---|"]
        out += [f"| {_md(d['step'])} | {_md(d['region'])} | {_md(d['api'])} | "
                f"{_md(d['error'])} |" for d in report["not_done"]]
    out += _old_region_markdown(report.get("old_region"))
    out += _reconcile_markdown(report.get("reconcile") or {})
    out += ["", "## Timeline", "", "| +s | Event | Detail |", "|---|---|---|"]
    for ev in report["timeline"]:
        out.append(f"| {_num(ev['offset_s'], '')} | {ev['event']} | {_md(ev['detail'])} |")
    if report.get("audit"):
        out += ["", f"Audit log: `{report['audit'].get('path')}` "
                    f"(head `{report['audit'].get('head')}`)"]
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}.miss{color:#c00;font-weight:bold}
.ok{color:#070}.fail{color:#c00;font-weight:bold}pre{background:#f7f7f7;padding:8px;
overflow-x:auto;font-size:12px}svg text{font-size:11px;font-family:monospace}"""

_BAR_COLOURS = {"done": "#4a9", "failed": "#d33", "rolled_back": "#e90", "skipped": "#bbb",
                "deferred": "#c9a", "pending": "#ddd", "detect": "#89c", "decide": "#a8c",
                "validate": "#48c"}


def gantt_svg(report: Mapping[str, Any], width: int = 900) -> str:
    """An inline SVG Gantt chart: one row per phase, one ``rect.bar`` per timed phase.

    Step bars carry ``data-step="<id>"``; unavoidable waits are drawn as a
    lighter band (``rect.wait``) at the end of their step's bar. Detection
    (often minutes of failing window against seconds of steps) is kept off the
    axis: its row shows a short stub and its length in words.
    """
    rows = report["phases"]
    times = [t for p in rows if p["kind"] != "detect"
             for t in (p["started_at"], p["ended_at"]) if t is not None]
    label_w, row_h, top = 190, 22, 24
    height = top + row_h * len(rows) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="timeline of the incident">']
    if not times:
        return "".join(parts) + '<text x="4" y="16">no timed steps</text></svg>'
    t0, t1 = min(times), max(times)
    span = max(t1 - t0, 1e-3)
    scale = (width - label_w - 20) / span
    tick = next(t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
                            7200, 86400) if span / t <= 10)
    k = 0
    while k * tick <= span + 1e-9:
        x = label_w + k * tick * scale
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 10}" '
                     f'stroke="#eee"/><text x="{x:.1f}" y="{top - 10}">+{k * tick:g}s</text>')
        k += 1
    for i, p in enumerate(rows):
        y = top + i * row_h
        name = html.escape(str(p["name"]))
        parts.append(f'<text x="4" y="{y + 15}">{name}</text>')
        if p["started_at"] is None:
            parts.append(f'<text x="{label_w}" y="{y + 15}" fill="#999">not started</text>')
            continue
        end = p["ended_at"] if p["ended_at"] is not None else p["started_at"]
        x = label_w + (p["started_at"] - t0) * scale
        w = max(2.0, (end - p["started_at"]) * scale)
        if p["kind"] == "detect":
            x, w = float(label_w), 16.0
            parts.append(f'<text x="{label_w + 22}" y="{y + 15}" fill="#555">'
                         f'{_num(p["duration_s"])} before the decision (not to scale)</text>')
        key = p.get("status") if p["kind"] == "step" else p["kind"]
        colour = _BAR_COLOURS.get(str(key), "#999")
        attrs = f' data-step="{name}"' if p["kind"] == "step" else f' data-phase="{name}"'
        parts.append(f'<rect class="bar {p["kind"]}"{attrs} x="{x:.1f}" y="{y + 3}" '
                     f'width="{w:.1f}" height="{row_h - 6}" fill="{colour}"><title>{name}: '
                     f'{_num(p["duration_s"])}</title></rect>')
        if p.get("wait_s"):
            ww = min(w, p["wait_s"] * scale)
            parts.append(f'<rect class="wait" x="{x + w - ww:.1f}" y="{y + 3}" '
                         f'width="{ww:.1f}" height="{row_h - 6}" fill="#fff" '
                         f'fill-opacity="0.45"><title>wait {_num(p["wait_s"])}</title></rect>')
    return "".join(parts) + "</svg>"


def render_html(report: Mapping[str, Any]) -> str:
    """A self-contained HTML page (inline CSS and SVG, no scripts, nothing fetched)."""
    e = html.escape
    who = report["decided_by"]
    outcome_cls = "ok" if report["outcome"] == "completed" else "fail"
    body = [f"<h1>{e(report['kind'].capitalize())} report {e(str(report['incident_id']))}</h1>",
            f"<p>{e(report['summary'])}</p>",
            f"<p><b>Outcome:</b> <span class=\"{outcome_cls}\">{e(report['outcome'])}</span> "
            f"&middot; <b>Decided by:</b> {e(who['actor'])} "
            f"({'automatic' if who['automatic'] else 'manual'}; "
            f"{e(str(who['trigger'].get('kind')))}: {e(str(who['trigger'].get('detail') or ''))})"
            f" &middot; <b>Reason:</b> {e(str(who.get('reason') or '–'))}"
            f" &middot; <b>Detection:</b> {e(str(report['detection']['sentence']))}</p>",
            "<h2>RPO and RTO</h2><table><tr><th>Metric</th><th>Value</th><th>Target</th>"
            "<th>Verdict</th></tr>"]
    for name, value, target, verdict, missed in _target_rows(report):
        cls = ' class="miss"' if missed else ""
        body.append(f"<tr{cls}><td>{name}</td><td>{e(value)}</td><td>{e(target)}</td>"
                    f"<td>{'MISSED' if missed else e(verdict)}</td></tr>")
    body.append(f"</table><p>drorch overhead {e(_num(report.get('overhead_s')))} (waits "
                f"{e(_num(report.get('waits_s')))}, detection {e(_num(report.get('detect_s')))})"
                f"</p><h2>Timeline</h2>{gantt_svg(report)}")
    body.append("<h2>Steps</h2><table><tr><th>Step</th><th>Stage</th><th>Status</th>"
                "<th>Duration</th><th>Wait</th><th>Detail</th></tr>")
    for s in report["steps"]:
        cls = ' class="fail"' if s["status"] == "failed" else ""
        body.append(f"<tr><td>{e(str(s['id']))}</td><td>{e(str(s['stage']))}</td>"
                    f"<td{cls}>{e(str(s['status']))}</td><td>{e(_num(s['duration_s']))}</td>"
                    f"<td>{e(_num(s['wait_s'] or None))}</td>"
                    f"<td><pre>{e(json.dumps(s['detail'], indent=1))}</pre></td></tr>")
    body.append("</table><h2>Validation flows</h2><table><tr><th>Flow</th><th>Result</th>"
                "<th>Attempts</th><th>Duration</th><th>Error</th><th>Evidence</th></tr>")
    for f in report["flows"]:
        result = '<span class="ok">passed</span>' if f.get("ok") else \
            '<span class="fail">FAILED</span>'
        evidence = json.dumps({"steps": f.get("steps"), "checks": f.get("checks")}, indent=1)
        body.append(f"<tr><td>{e(str(f.get('name')))}</td><td>{result}</td>"
                    f"<td>{e(str(f.get('attempts')))}</td><td>{e(_num(f.get('duration_s')))}</td>"
                    f"<td>{e(str(f.get('error') or ''))}</td><td><details><summary>requests"
                    f"</summary><pre>{e(evidence)}</pre></details></td></tr>")
    for db, r in (report.get("reconcile") or {}).items():
        body.append(f"</table><h2>Reconcile: {e(db)}</h2>"
                    + "".join(f"<p>{e(line)}</p>" for line in _reconcile_lines(db, r))
                    + "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in _RECONCILE_COLUMNS)
                    + "<th>by kind</th></tr>")
        for t in r.get("tables", []):
            kinds = ", ".join(f"{k} {v}" for k, v in (t.get("by_kind") or {}).items())
            body.append("<tr>" + "".join(f"<td>{e(str(t.get(c)))}</td>"
                                         for c in _RECONCILE_COLUMNS)
                        + f"<td>{e(kinds)}</td></tr>")
    body.append("</table><h2>Events</h2><table><tr><th>+s</th><th>Time (UTC)</th>"
                "<th>Event</th><th>Detail</th></tr>")
    for ev in report["timeline"]:
        body.append(f"<tr><td>{e(_num(ev['offset_s'], ''))}</td><td>{e(str(ev['at_iso']))}</td>"
                    f"<td>{e(ev['event'])}</td><td>{e(str(ev['detail']))}</td></tr>")
    body.append("</table>")
    if report.get("audit"):
        body.append(f"<p>Audit log <code>{e(str(report['audit'].get('path')))}</code>, head "
                    f"<code>{e(str(report['audit'].get('head')))}</code></p>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>drorch "
            f"report {e(str(report['incident_id']))}</title><style>{_CSS}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
