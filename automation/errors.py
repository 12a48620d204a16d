"""Domain errors, each carrying the CLI exit code of DESIGN.md ("Exit codes")."""
from __future__ import annotations

OK, ERROR, BAD_INPUT, BUSY, RUN_FAILED, RUN_KILLED, LEFTOVERS = 0, 1, 2, 3, 4, 5, 6
INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class ChronosError(Exception):
    exit_code = ERROR


class BadInput(ChronosError):
    """Bad usage, config, dataset or environment: nothing was changed."""

    exit_code = BAD_INPUT


class Busy(ChronosError):
    exit_code = BUSY


class NoSuchRun(ChronosError):
    exit_code = BAD_INPUT


class RunNotFinished(ChronosError):
    """The run still holds the lock: what is asked of it needs it ended (a report, a comparison)."""

    exit_code = BUSY


class Interrupted(ChronosError):
    """Ctrl-C, after the command undid what it had started."""

    exit_code = INTERRUPTED


class NoEvaluation(ChronosError):
    """A completed run without an evaluation folder: it ran before runs kept one."""

    exit_code = ERROR
