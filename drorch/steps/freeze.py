"""Freeze writes in the region we leave: the write flag, then each database.

A database that cannot be reached is recorded as such (the region is down: it
takes no writes either); it will be fenced before any failback.
"""

from __future__ import annotations

from typing import Any

from drorch.adapters import flags
from drorch.adapters import postgres as pg
from drorch.steps.base import Step, StepContext


class RaiseWriteFlag(Step):
    stage = "freeze"

    @property
    def id(self) -> str:
        return f"{self.stage}:write-flag@{self.target}"

    def describe(self, ctx: StepContext) -> str:
        wf = ctx.runbook.write_flag
        return (f"set write flag {wf.parameter} in {self.target} to frozen" if wf
                else "no write flag configured")

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("ssm", ctx.aws_region(self.target))

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
        if ctx.facts.get(f"freeze:{self.target}") is None:
            return False
        try:
            return pg.is_frozen(self._dsn(ctx), ctx.runbook.database(self.target).app_roles)
        except pg.Unreachable:
            return True  # recorded frozen before, unreachable now: nothing can write there

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        key = f"freeze:{self.target}"
        prior = ctx.facts.get(key)
        try:
            record = pg.freeze(self._dsn(ctx), ctx.runbook.database(self.target).app_roles,
                               pg.FreezeRecord.from_dict(prior) if prior else None)
        except pg.Unreachable as exc:
            detail = {"reachable": False, "error": str(exc).strip().splitlines()[0],
                      "note": f"{ctx.from_region} unreachable: nothing to freeze (no client "
                              "can write there either); failback fences it before it may "
                              "serve again"}
            ctx.facts.set(key, {"roles_locked": [], "read_only_was": "off",
                                "sessions_ended": 0, "unreachable": True})
            return detail
        ctx.facts.set(key, record.to_dict())
        return {"reachable": True, **record.to_dict()}

    def undo(self, ctx: StepContext) -> dict[str, Any] | None:
        prior = ctx.facts.get(f"freeze:{self.target}")
        if not prior or prior.get("unreachable"):
            return None
        pg.unfreeze(self._dsn(ctx), pg.FreezeRecord.from_dict(prior))
        return {"restored": prior}


class LowerWriteFlag(Step):
    """The region we move to takes writes: its flag must say so."""

    stage = "open"

    @property
    def id(self) -> str:
        return f"{self.stage}:write-flag@{self.target}"

    def describe(self, ctx: StepContext) -> str:
        return f"clear the write flag in {self.target}"

    def _client(self, ctx: StepContext) -> Any:
        return ctx.aws("ssm", ctx.aws_region(self.target))

    def check(self, ctx: StepContext) -> bool:
        wf = ctx.runbook.write_flag
        return wf is None or not flags.is_frozen(self._client(ctx), wf.parameter)

    def apply(self, ctx: StepContext) -> dict[str, Any]:
        wf = ctx.runbook.write_flag
        assert wf is not None
        flags.set_frozen(self._client(ctx), wf.parameter, False)
        return {"parameter": wf.parameter, "region": self.target, "value": "false"}
