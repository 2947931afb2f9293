"""WAL kept for an exact reconcile: after an unplanned failover the old primary's WAL
back to the split is the exact record of its divergent commits
(:mod:`drorch.reconcile.retention` says what is needed and why), and a failed-over
primary keeps its own WAL from the split with a slot until the failback reads it.

``wal_retention_warnings`` and ``split_pin_warnings`` are also ``drorch plan``'s (and
``--dry-run``'s) warnings; :func:`check` gives the same facts as readiness verdicts. A
missing piece is a warning: the failover itself works, the failback falls back to a
full comparison or hands rows to a human.
"""

from __future__ import annotations

from drorch.config import Runbook
from drorch.readiness.context import Context
from drorch.readiness.result import CheckResult, passed, warned

CHECK = "wal"


def check(ctx: Context) -> list[CheckResult]:
    from drorch.reconcile.retention import wal_retention_warning

    out: list[CheckResult] = []
    for db in ctx.runbook.databases:
        target = f"{db.name} in {ctx.serving}"
        if db.kind in ("rds", "aurora-global"):
            out.append(_managed(db.kind, db.endpoints[ctx.serving].dsn(), target))
            continue
        try:
            problem = wal_retention_warning(db.endpoints[ctx.serving].dsn())
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            out.append(warned(CHECK, target, "could not check "
                              f"({str(exc).strip().splitlines()[0]})", f"check that "
                              f"{db.name} in {ctx.serving} answers"))
            continue
        if problem:
            out.append(warned(CHECK, target, f"divergent writes could not be found exactly "
                              f"after an unplanned failover: {problem}", "see the README's "
                              "\"PostgreSQL settings and grants\""))
            continue
        out.append(passed(CHECK, target, "keeps the WAL, settings and pg_walinspect an "
                          "exact reconcile needs"))
    if ctx.serving != ctx.runbook.primary.name:
        said, _ = split_pin_warnings(ctx.runbook, ctx.serving)
        out += [warned(CHECK, f"split pin in {ctx.serving}", s, "the failback reads the "
                       "WAL from the split: keep it pinned until then") for s in said]
    return out


def _managed(kind: str, dsn: str, target: str) -> CheckResult:
    """RDS and Aurora: the master user may not read the WAL, so a failback compares in
    full; which side changed a row that existed at the split is then told by commit time
    (``track_commit_timestamp``, a parameter group setting), else by a human."""
    from drorch.adapters import postgres as pg

    try:
        with pg.connect(dsn, 3000) as c:
            kept = c.execute("SELECT current_setting('track_commit_timestamp')"
                             ).fetchone() == ("on",)
    except pg.Error as exc:
        return warned(CHECK, target, f"could not check ({str(exc).strip().splitlines()[0]})",
                      "check that it answers")
    if not kept:
        return warned(CHECK, target, f"kind {kind}: a failback compares in full (the master "
                      "user may not read the WAL) and track_commit_timestamp is off: a row "
                      "that existed at the split and changed on one side will go to a human",
                      "turn track_commit_timestamp on in the parameter group (both regions)")
    return passed(CHECK, target, f"kind {kind}: a failback compares in full (the master "
                  "user may not read the WAL); commit times are kept (track_commit_timestamp)")


def split_pin_warnings(rb: Runbook, region: str) -> tuple[list[str], list[str]]:
    """(warnings, notes): a failed-over primary should keep its WAL from the split until
    the failback reads it (a slot drorch made at promotion): without it, rows only it
    changed cannot be told apart and go to a human. A pin that holds is a note (how
    much WAL it holds, and its bound)."""
    from drorch.adapters import postgres as pg

    said: list[str] = []
    notes: list[str] = []
    for db in rb.databases:
        if db.kind in ("rds", "aurora-global"):
            # no slot there (see steps.promote.MANAGED_NO_SLOT): their failback compares
            # in full
            continue
        slot = pg.split_slot_name(db.name)
        try:
            pinned = pg.wal_pinned(db.endpoints[region].dsn(), slot)
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            said.append(f"{db.name} in {region}: could not check the split's WAL pin "
                        f"({str(exc).strip().splitlines()[0]})")
            continue
        if not pinned:
            said.append(f"{db.name} in {region}: its WAL from the split is not pinned (no "
                        f"slot {slot}); a failback may not tell which side changed a row, "
                        "and such rows go to a human")
            continue
        held = pg.slot_retained_bytes(db.endpoints[region].dsn(), slot) or 0
        cap = pg.slot_wal_cap_mb(db.endpoints[region].dsn())
        bound = (f"at most {cap:,} MB (max_slot_wal_keep_size)" if cap >= 0 else
                 "no limit: the disk fills if the failback waits; set the database's "
                 "split_wal_max_mb")
        notes.append(f"{db.name} in {region}: the split's WAL pin holds "
                     f"{held / 2**20:,.0f} MB, {bound}")
    return said, notes


def wal_retention_warnings(rb: Runbook, region: str) -> list[str]:
    """Exact reconciliation after an unplanned failover needs the old primary's WAL
    back to the split: say now, not at failback, when a database would not keep it."""
    from drorch.reconcile.retention import wal_retention_warning

    said: list[str] = []
    for db in rb.databases:
        try:
            warning = wal_retention_warning(db.endpoints[region].dsn())
        except Exception as exc:  # noqa: BLE001 (a plan must still print)
            warning = f"could not check ({str(exc).strip().splitlines()[0]})"
        if warning:
            said.append(f"{db.name} in {region}: divergent writes could not be found "
                        f"exactly after an unplanned failover: {warning}")
    return said
