"""drorch's exit codes, defined once: the CLI returns them, ``--help`` and the README
list them (both from :func:`table`), and tests check each.

A script must be able to tell "nothing to do" from "refused" from "rolled back" from
"halted": each outcome that calls for a different reaction has a code of its own.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a drorch command's exit status means (the docstring of each member is the
    sentence shown in ``--help`` and the README)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    REFUSED = 3
    ROLLED_BACK = 4
    HALTED = 5
    NOTHING_TO_DO = 6
    STALE = 7
    NOT_CONFIRMED = 8
    # ``drorch plan``'s readiness verdicts (issue 18: "0 ready, 1 warnings, 2 not
    # ready") share 1 and 2 with ``failed`` and ``usage``: aliases, not new codes, so a
    # script reads the same number whichever name the code uses.
    WARNINGS = 1
    NOT_READY = 2


MEANING: dict[ExitCode, str] = {
    ExitCode.OK: "done (or, for --dry-run, the run would be allowed; for plan, it would be "
                 "allowed and every readiness check passed; for status, nothing needs a "
                 "human)",
    ExitCode.FAILED: "an error or a failed check (audit log broken, drill failed, conflicts "
                     "left refused, lab command failed); plan: the run would be allowed but "
                     "a readiness check warned",
    ExitCode.USAGE: "bad input: runbook error, bad option, or an irreversible command "
                    "without a terminal and without --yes; plan: not ready (a readiness "
                    "check failed)",
    ExitCode.REFUSED: "refused by a guard, nothing changed (already failed over, an incident "
                      "in flight, another orchestrator acting, no node control); plan and "
                      "--dry-run exit so when the run would be refused, whatever the "
                      "readiness",
    ExitCode.ROLLED_BACK: "a step failed before promotion and what was done was undone",
    ExitCode.HALTED: "halted (a step failed after promotion was requested, or a rollback "
                     "failed): a human must look, then `drorch resume`; status exits so "
                     "while the latest incident is halted, or in flight with nobody "
                     "running it (its process was stopped or killed)",
    ExitCode.NOTHING_TO_DO: "nothing to do: no incident to resume or report on, no "
                            "failover in force to fail back from or to acknowledge",
    ExitCode.STALE: "status: the watcher's last verdict is older than its health window "
                    "allows (a watcher that should be running is not ticking)",
    ExitCode.NOT_CONFIRMED: "the confirmation prompt was answered with anything but yes",
}


def table() -> str:
    """``code  NAME  meaning`` lines, for ``--help`` and the README."""
    return "\n".join(f"{int(code)}  {code.name.lower()}: {MEANING[code]}" for code in ExitCode)
