"""Confirmation before an irreversible command (failover, failback, drill, resume).

Like ``terraform apply``: the prompt names the runbook, the regions and what cannot be
undone, and only ``yes`` goes on. ``--yes`` is for scripts. Without a terminal and
without ``--yes`` the command is refused at once (exit ``usage``), never left waiting
for an answer nobody can give.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from drorch.exitcodes import ExitCode

IRREVERSIBLE = {
    "failover": "the promotion of {dst}: from then on {src} can only come back by "
                "`drorch failback`, which rewinds or rebuilds it and reconciles the writes "
                "it took that {dst} never got",
    "failback": "the rewind or rebuild of {dst}'s databases (its data directory is "
                "archived first) and the promotion of {dst}",
    "drill": "a real failover to {dst} (promotion) and a failback to {src} (rewind or "
             "rebuild of {src}'s databases)",
    "resume": "whatever the incident has left to do, the promotion of {dst} included",
}


class NotConfirmed(Exception):
    """The command must not run; ``code`` says why (no terminal, or not ``yes``)."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Intent:
    """What is about to happen, for the prompt."""

    command: str
    runbook: str
    runbook_path: str
    src: str
    dst: str
    incident: str | None = None

    def prompt(self) -> str:
        what = f"{self.command} {self.incident}" if self.incident else self.command
        lost = IRREVERSIBLE[self.command].format(src=self.src, dst=self.dst)
        return (f"drorch {what} on runbook {self.runbook} ({self.runbook_path}): writes move "
                f"from {self.src} to {self.dst}.\n"
                f"Cannot be undone: {lost}.\n"
                "Only 'yes' will be accepted to go on: ")


def stdin_is_terminal() -> bool:
    """Whether a human can answer (a seam for tests: CliRunner has no terminal)."""
    return sys.stdin.isatty()


def confirm(intent: Intent, *, yes: bool) -> None:
    """Return when the command may run; raise :class:`NotConfirmed` otherwise."""
    if yes:
        return
    if not stdin_is_terminal():
        raise NotConfirmed(f"drorch {intent.command} is irreversible and there is no terminal "
                           "to confirm it on: pass --yes", ExitCode.USAGE)
    sys.stderr.write(intent.prompt())
    sys.stderr.flush()
    answer = sys.stdin.readline().strip()
    if answer != "yes":
        raise NotConfirmed(f"not confirmed (answered {answer!r}): nothing was done",
                           ExitCode.NOT_CONFIRMED)
