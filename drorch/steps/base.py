"""What every step is: ``check`` (already done?), ``apply``, and maybe ``undo``.

The engine calls ``check`` before ``apply``, so a step the process finished just
before it was killed is observed as done, not done twice. ``apply`` returns a
JSON-able detail for the journal (never a secret). ``irreversible`` steps
(promotion) forbid rollback once done: after them the machine goes forward or
halts. Steps never read global configuration: everything is in the context.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from drorch.config import Runbook


class Facts(Protocol):
    """Durable values a step measured (journaled before the engine moves on)."""

    def get(self, key: str, default: Any = None) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...


class Clients(Protocol):
    def __call__(self, service: str, region: str) -> Any: ...


NodeControl = Callable[[str, str], Any]
"""(database, region) -> a node drorch may stop, start and rewind (``PgNodeLike``)."""

Recorder = Callable[..., None]
"""(action, inputs, outcome="ok") -> None: an audit entry for one decision."""


@dataclass
class StepContext:
    runbook: Runbook
    incident_id: str
    actor: str
    from_region: str
    to_region: str
    aws: Clients
    facts: Facts
    nodes: NodeControl | None = None
    recorder: Recorder | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    progress: Callable[..., None] | None = None
    """The engine's progress callback (step, status, sentence, detail)."""

    def aws_region(self, region: str) -> str:
        return self.runbook.region(region).aws_region

    def waiting(self, step_id: str) -> Callable[[str], None]:
        """A callback a long wait in step ``step_id`` tells how it goes (status
        ``waiting``), shown as the step's progress."""
        def tell(sentence: str) -> None:
            if self.progress is not None:
                self.progress(step_id, "waiting", sentence, {})
        return tell

    def record(self, action: str, inputs: dict[str, Any], outcome: str = "ok") -> None:
        if self.recorder is not None:
            self.recorder(action, inputs, outcome)


class StepFailed(Exception):
    """A step could not do its job; ``detail`` goes to the journal."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


class Step(ABC):
    stage: ClassVar[str]
    irreversible: ClassVar[bool] = False
    api: ClassVar[str] = "AWS"
    """The AWS API a step calls (for messages: "could not reach region-a's SSM API")."""

    def __init__(self, target: str) -> None:
        self.target = target

    @property
    def id(self) -> str:
        return f"{self.stage}:{self.target}"

    @abstractmethod
    def describe(self, ctx: StepContext) -> str:
        """One sentence for the plan and --dry-run."""

    @abstractmethod
    def check(self, ctx: StepContext) -> bool:
        """True when the world already shows this step done. Must not change anything."""

    @abstractmethod
    def apply(self, ctx: StepContext) -> dict[str, Any]:
        """Do the step; return the journal detail. Raise StepFailed on failure."""

    def undo(self, ctx: StepContext) -> dict[str, Any] | None:
        """Reverse ``apply`` during a rollback; None when there is nothing to undo."""
        return None

    def api_region(self, ctx: StepContext) -> str | None:
        """The runbook region whose AWS API this step calls, None when it calls none (or
        a global one). In a failover, a step calling the failed region's API is best
        effort: that API may be down with the region, and the failover must not wait on
        it nor roll back because of it."""
        return None

    def requested(self, ctx: StepContext) -> bool:
        """An irreversible step: was its action requested (journaled just before the
        request)? From then on a failure halts for a human; it never rolls back."""
        return False


@dataclass(frozen=True)
class Stage:
    """Steps that may run at once (e.g. every database pair's promotion)."""

    name: str
    steps: tuple[Step, ...]
