"""The real CLI, engine, journal, audit log and lab runbook, in-process, with the
steps' world replaced: each step's ``check``/``apply``/``undo`` only records that it
ran, and a step named in ``failing`` raises. What is tested is what the CLI and the
engine decide from that (exit codes, prompts, audit entries, reports), not what a
step does to PostgreSQL or AWS (the integration tests do that)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner, Result

from drorch.cli import app
from drorch.engine import Engine
from drorch.steps import dns, failback, freeze, promote, secrets, validate
from drorch.steps.base import StepFailed
from tests.conftest import LAB_RUNBOOK

STEP_CLASSES = (freeze.RaiseWriteFlag, freeze.FreezeDatabase, freeze.LowerWriteFlag,
                promote.PromoteDatabase, promote.OpenWrites, secrets.RewriteSecret,
                dns.FlipDns, validate.CanaryWrite, validate.RunFlows,
                failback.FenceOldPrimary, failback.ReconcileDivergence,
                failback.ResyncAsReplica, failback.RejoinAsReplica)


REAL_APPLY = {cls: cls.apply for cls in STEP_CLASSES}
"""Each step's own ``apply``, for a test that puts one back."""


class Crash(BaseException):
    """The process dies mid-step (no ``except Exception`` catches it): the journal
    keeps the step ``started``."""


@dataclass
class Rig:
    """``failing``: step ids whose ``apply`` raises ``StepFailed``; ``failing_undo``:
    whose ``undo`` raises; ``crashing``: whose ``apply`` raises :class:`Crash`;
    ``details``: what a step's ``apply`` returns (default ``{"rigged": True}``);
    ``applied``: ids in call order."""

    state: Path
    failing: set[str] = field(default_factory=set)
    failing_undo: set[str] = field(default_factory=set)
    crashing: set[str] = field(default_factory=set)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    runner: CliRunner = field(default_factory=CliRunner)

    def cli(self, *args: str, input: str | None = None) -> Result:
        """Run ``drorch ARGS``; the log configuration it makes (bound to CliRunner's
        stderr, closed afterwards) is put back as it was for the tests that follow."""
        saved = structlog.get_config()
        try:
            return self.runner.invoke(app, [*args], input=input, catch_exceptions=False)
        finally:
            structlog.configure(**saved)

    def audit(self) -> list[dict[str, Any]]:
        path = self.state / "audit.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Rig:
    """The lab runbook with its state under ``tmp_path``; ports nobody listens on (port 1
    refuses at once, so a plan's database checks fail fast and say so)."""
    for key in ("DRORCH_LAB_PG_A_PORT", "DRORCH_LAB_PG_B_PORT", "DRORCH_LAB_MOTO_PORT",
                "DRORCH_LAB_AWS_A_PORT", "DRORCH_LAB_AWS_B_PORT"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("DRORCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DRORCH_RUNBOOK", str(LAB_RUNBOOK))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    r = Rig(tmp_path / "state")

    def apply(self: Any, ctx: Any) -> dict[str, Any]:
        if self.id in r.crashing:
            raise Crash(self.id)
        if self.id in r.failing:
            raise StepFailed(f"{self.id} failed on cue")
        r.applied.append(self.id)
        return dict(r.details.get(self.id, {"rigged": True}))

    def undo(self: Any, ctx: Any) -> dict[str, Any]:
        if self.id in r.failing_undo:
            raise StepFailed(f"undo of {self.id} failed on cue")
        return {"undone": True}

    # Creating the AWS clients costs seconds and no rigged step uses them.
    monkeypatch.setattr(Engine, "warm_up", lambda self: None)
    for cls in STEP_CLASSES:
        monkeypatch.setattr(cls, "check", lambda self, ctx: False)
        monkeypatch.setattr(cls, "apply", apply)
        monkeypatch.setattr(cls, "undo", undo)
    return r
