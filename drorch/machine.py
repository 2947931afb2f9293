"""The incident lifecycle: states and transitions, declared once, as data.

The machine only answers "may this happen now?" and records where we are.
It does no irreversible work in callbacks (``transitions`` does not roll a
state back when a callback raises): the engine runs steps and journals them,
then fires the trigger. ``may_<trigger>()`` powers ``--dry-run`` and ``plan``.

Within ``failing_over`` and ``failing_back`` the order of steps is the plan's
(``drorch/plan.py``), not the machine's: a plan is a list of stages, each a
group of steps that may run in parallel (several database pairs promoted at
once), so approval gates and custom hooks are stages too.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from transitions import Machine


class State(StrEnum):
    MONITORING = "monitoring"
    DEGRADED = "degraded"
    FAILING_OVER = "failing_over"
    FAILED_OVER = "failed_over"
    FAILING_BACK = "failing_back"
    HALTED = "halted"


S = State

# trigger, source(s), destination
TRANSITIONS: list[dict[str, Any]] = [
    {"trigger": "degrade", "source": S.MONITORING, "dest": S.DEGRADED},
    {"trigger": "recover", "source": S.DEGRADED, "dest": S.MONITORING},
    {"trigger": "start_failover", "source": [S.MONITORING, S.DEGRADED], "dest": S.FAILING_OVER},
    {"trigger": "failover_done", "source": S.FAILING_OVER, "dest": S.FAILED_OVER},
    # Before promotion a failed failover unfreezes and returns to watching.
    {"trigger": "roll_back", "source": S.FAILING_OVER, "dest": S.MONITORING},
    {"trigger": "start_failback", "source": S.FAILED_OVER, "dest": S.FAILING_BACK},
    {"trigger": "failback_done", "source": S.FAILING_BACK, "dest": S.MONITORING},
    # Before the old primary is promoted again, a failed failback leaves the
    # service where it is (failed over), with what was frozen unfrozen.
    {"trigger": "roll_back_failback", "source": S.FAILING_BACK, "dest": S.FAILED_OVER},
    {"trigger": "halt", "source": [S.FAILING_OVER, S.FAILING_BACK], "dest": S.HALTED},
    # A human resumes a halted incident; the engine picks up from the journal.
    {"trigger": "resume_failover", "source": S.HALTED, "dest": S.FAILING_OVER},
    {"trigger": "resume_failback", "source": S.HALTED, "dest": S.FAILING_BACK},
]


class Lifecycle:
    """The model object ``transitions`` decorates with triggers and ``state``."""

    state: str

    def __init__(self, initial: State = State.MONITORING) -> None:
        self.machine = Machine(
            model=self,
            states=list(State),
            transitions=TRANSITIONS,
            initial=initial,
            auto_transitions=False,
            queued=True,
            send_event=True,
        )

    @property
    def current(self) -> State:
        return State(self.state)

    def can(self, trigger: str) -> bool:
        """Could ``trigger`` fire now? (Never fires it.)"""
        checker = getattr(self, f"may_{trigger}", None)
        return bool(checker and checker())

    def fire(self, trigger: str) -> State:
        if not self.can(trigger):
            raise IllegalTransition(trigger, self.current)
        getattr(self, trigger)()
        return self.current


class IllegalTransition(Exception):
    def __init__(self, trigger: str, state: State) -> None:
        super().__init__(f"cannot {trigger.replace('_', ' ')} while {state.value}")
        self.trigger = trigger
        self.state = state
