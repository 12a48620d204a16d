"""Run statuses and the one table of allowed moves between them (pure logic, no I/O)."""
from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    INITIALIZATION = "initialization"
    DATA_SYNC = "data_sync"
    TRAINING = "training"
    FORECAST = "forecast"  # the trained model forecasts past the end of every series
    RESULTS_SYNC = "results_sync"
    CLEANUP = "cleanup"
    FAILED = "failed"
    KILLED = "killed"

    @property
    def is_terminal(self) -> bool:
        """The run's outcome is decided: only cleanup (or nothing) can follow."""
        return self in (Status.CLEANUP, Status.FAILED, Status.KILLED)


MAIN_CHAIN = (
    Status.INITIALIZATION,
    Status.DATA_SYNC,
    Status.TRAINING,
    Status.FORECAST,
    Status.RESULTS_SYNC,
    Status.CLEANUP,
)


def _table() -> dict[Status, frozenset[Status]]:
    moves: dict[Status, set[Status]] = {s: set() for s in Status}
    for a, b in zip(MAIN_CHAIN, MAIN_CHAIN[1:]):
        moves[a].add(b)
    for s in Status:
        if not s.is_terminal:
            moves[s] |= {Status.FAILED, Status.KILLED}
    moves[Status.DATA_SYNC].add(Status.FORECAST)  # a forecast-only run trains nothing
    moves[Status.FAILED].add(Status.CLEANUP)
    moves[Status.KILLED].add(Status.CLEANUP)
    return {s: frozenset(t) for s, t in moves.items()}


TRANSITIONS: dict[Status, frozenset[Status]] = _table()


class IllegalTransition(ValueError):
    def __init__(self, current: Status, target: Status):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing"
        super().__init__(f"a run cannot move from {current.value} to {target.value} (allowed: {allowed})")
        self.current, self.target = current, target


def can_move(current: Status | str, target: Status | str) -> bool:
    return Status(target) in TRANSITIONS[Status(current)]


def check_move(current: Status | str, target: Status | str) -> Status:
    current, target = Status(current), Status(target)
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target
