"""Freeze writes in the region we leave: the write flag, then each database.

A database that cannot be reached is recorded as such (the region is down: it
takes no writes either); it will be fenced before any failback.
"""

from __future__ import annotations

from typing import Any

from drorch.adapters import flags
from drorch.adapters import postgres as pg
from drorch.faultpoints import fault_point
from drorch.steps.base import Step, StepContext, StepFailed


class RaiseWriteFlag(Step):
    stage = "freeze"
    api = "SSM"

    @property
    def id(self) -> str:
        return f"{self.stage}:write-flag@{self.target}"

    def describe(self, ctx: StepContext) -> str:
        wf = ctx.runbook.write_flag
        return (f"set write flag {wf.parameter} in {self.target} to frozen" if wf
                else "no write flag configured")

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("ssm", ctx.aws_region(self.target))

    def api_region(self, ctx: StepContext) -> str | None:
        return self.target

    def check(self, ctx: StepContext) -> bool:
        wf = ctx.runbook.write_flag
        return wf is None or flags.is_frozen(self._client(ctx), wf.parameter)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        wf = ctx.runbook.write_flag
        assert wf is not None
        flags.set_frozen(self._client(ctx), wf.parameter, True)
        return {"parameter": wf.parameter, "region": self.target, "value": "true"}

    def undo(self, ctx: StepContext) -> dict[str, Any] | None:
        wf = ctx.runbook.write_flag
        if wf is None:
            return None
        flags.set_frozen(self._client(ctx), wf.parameter, False)
        return {"parameter": wf.parameter, "value": "false"}


def freeze_fact_key(database: str) -> str:
    return f"freeze:{database}"


def recorded_baseline(fact: dict[str, Any] | None) -> pg.FreezeRecord | None:
    """What was there before a freeze, as journaled in ``freeze:<database>``; None when
    nothing was recorded (no freeze yet, or the node never answered).

    The fact's shapes (JSON): ``{"phase": "intent"|"done", "roles_locked": [...],
    "auto_conf_read_only": "on"|"off"|null, "sessions_ended": n}`` (``intent``:
    written before the first change, so a kill at any later line leaves the undo
    exact; ``done``: the freeze finished), possibly with ``"unreachable": true``
    when the connection was lost after the intent; ``{"phase": "unreachable",
    "unreachable": true, ...}``: the node did not answer, nothing was changed or
    read. Records from before phases existed (``read_only_was``) count as done,
    or as unreachable when they say so."""
    if fact is None or _phase(fact) == "unreachable":
        return None
    return pg.FreezeRecord.from_dict(fact)


def _phase(fact: dict[str, Any]) -> str:
    return str(fact.get("phase") or ("unreachable" if fact.get("unreachable") else "done"))


def freeze_journaled(ctx: StepContext, database: str, target: pg.Target,
                     step_id: str) -> pg.FreezeRecord:
    """Freeze ``database``'s node in ``ctx.from_region`` with the intent journaled first.

    An action is irreversible from the moment it is requested, and this process
    may be killed at any line: before the first ``ALTER ROLE`` the fact
    ``freeze:<database>`` says what is about to change (phase ``intent``); after
    the freeze, the full record (phase ``done``). A second run merges with the
    recorded intent instead of reading "what was there before" from a node the
    first run may have half frozen. ``<step_id>:roles_locked`` is a kill point
    between locking the roles and the rest."""
    key = freeze_fact_key(database)
    previous = recorded_baseline(ctx.facts.get(key))

    def journal_intent(intent: pg.FreezeRecord) -> None:
        ctx.facts.set(key, {"phase": "intent", **intent.to_dict()})

    db = ctx.runbook.database(database)
    record = pg.freeze(target, db.app_roles, previous, on_intent=journal_intent,
                       on_roles_locked=lambda: fault_point(f"{step_id}:roles_locked"),
                       others_wait_s=db.freeze_others_wait_s)
    ctx.facts.set(key, {"phase": "done", **record.to_dict()})
    return record


class FreezeDatabase(Step):
    """``target`` is the database pair's name; the node is in ``ctx.from_region``."""

    stage = "freeze"

    def _dsn(self, ctx: StepContext) -> str:
        return ctx.runbook.database(self.target).endpoints[ctx.from_region].dsn()

    def describe(self, ctx: StepContext) -> str:
        db = ctx.runbook.database(self.target)
        return (f"freeze {self.target} in {ctx.from_region}: lock out {db.app_roles}, "
                "read-only default, end their sessions (replication untouched)")

    def check(self, ctx: StepContext) -> bool:
        fact = ctx.facts.get(freeze_fact_key(self.target))
        if fact is None or _phase(fact) == "intent":
            return False  # never finished: apply again, merging with the intent
        try:
            return pg.is_frozen(self._dsn(ctx), ctx.runbook.database(self.target).app_roles)
        except pg.Unreachable:
            return True  # recorded frozen before, unreachable now: nothing can write there

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        key = freeze_fact_key(self.target)
        try:
            record = freeze_journaled(ctx, self.target, self._dsn(ctx), self.id)
        except pg.Unreachable as exc:
            return self._unreachable(ctx, exc)
        except (pg.Error, pg.FreezeIncomplete) as exc:
            # A failed step is not the engine's to undo (it undoes only steps journaled
            # done): undo here what the recorded intent says may have changed, or keep
            # the intent journaled and say so.
            intent = recorded_baseline(ctx.facts.get(key))
            if intent is None:
                raise
            try:
                pg.unfreeze(self._dsn(ctx), intent)
            except pg.Error as undo_exc:
                raise StepFailed(
                    f"freeze of {self.target} failed ({exc}) and undoing it failed too "
                    f"({undo_exc}): restore {intent.to_dict()} on {ctx.from_region} by hand",
                    {"intent": intent.to_dict(), "undo_error": str(undo_exc)}) from exc
            ctx.facts.set(key, None)
            raise StepFailed(f"freeze of {self.target} failed ({exc}); what it changed "
                             "was undone", {"undone": intent.to_dict()}) from exc
        return {"reachable": True, **record.to_dict(),
                "other_sessions_ended": record.others_ended,
                "prepared_transactions": record.prepared}

    def _unreachable(self, ctx: StepContext, exc: Exception) -> dict[str, Any]:
        key = freeze_fact_key(self.target)
        error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fact = ctx.facts.get(key)
        intent = recorded_baseline(fact)
        if intent is not None:
            # An intent was journaled (here or by a killed run): the node may be half
            # frozen. Keep what it was before, so a rollback or a later freeze is exact.
            ctx.facts.set(key, {**fact, "unreachable": True})
            return {"reachable": False, "error": error, "intent": intent.to_dict(),
                    "note": f"{ctx.from_region} stopped answering during the freeze: what "
                            "it may have changed is recorded; failback fences it before it "
                            "may serve again"}
        ctx.facts.set(key, {"phase": "unreachable", "unreachable": True,
                            "roles_locked": [], "sessions_ended": 0})
        return {"reachable": False, "error": error,
                "note": f"{ctx.from_region} unreachable: nothing to freeze (no client "
                        "can write there either); failback fences it before it may "
                        "serve again"}

    def undo(self, ctx: StepContext) -> dict[str, Any] | None:
        record = recorded_baseline(ctx.facts.get(freeze_fact_key(self.target)))
        if record is None:
            return None
        pg.unfreeze(self._dsn(ctx), record)
        return {"restored": record.to_dict()}


class LowerWriteFlag(Step):
    """The region we move to takes writes: its flag must say so."""

    stage = "open"
    api = "SSM"

    @property
    def id(self) -> str:
        return f"{self.stage}:write-flag@{self.target}"

    def describe(self, ctx: StepContext) -> str:
        return f"clear the write flag in {self.target}"

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("ssm", ctx.aws_region(self.target))

    def api_region(self, ctx: StepContext) -> str | None:
        return self.target

    def check(self, ctx: StepContext) -> bool:
        wf = ctx.runbook.write_flag
        return wf is None or not flags.is_frozen(self._client(ctx), wf.parameter)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        wf = ctx.runbook.write_flag
        assert wf is not None
        flags.set_frozen(self._client(ctx), wf.parameter, False)
        return {"parameter": wf.parameter, "region": self.target, "value": "false"}
