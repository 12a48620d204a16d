"""Fault and pause hooks for the tests (issues 4 and 6), honoured ONLY in a `--local` run.

- CHRONOS_FAULT=<where>[,<where>...] raises InjectedFault at that point. <where> is a phase name
  (`initialization`, `data_sync`, `results_sync`: at the start of the phase's work; `training`:
  inside Chronos2Pipeline.fit, at the first step) or `cleanup:<step>` (that cleanup step fails
  once, so the agent's retry of the cleanup is exercised).
- CHRONOS_PAUSE=<phase>:<seconds>[,...] waits that long at the start of the phase (after the
  state moved to it; for `cleanup`, once the state is in cleanup), still answering kills, so a
  test can act (kill, SIGKILL, SIGSTOP) while the run is in that phase.

An EC2 run never reads these variables: the agent only builds them with `--local`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable


class InjectedFault(RuntimeError):
    """A failure a test asked for through CHRONOS_FAULT."""


@dataclass
class Faults:
    raise_at: set[str] = field(default_factory=set)
    pauses: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ=os.environ) -> "Faults":
        raise_at = {w.strip() for w in environ.get("CHRONOS_FAULT", "").split(",") if w.strip()}
        pauses = {}
        for item in environ.get("CHRONOS_PAUSE", "").split(","):
            if ":" in item:
                where, seconds = item.rsplit(":", 1)
                pauses[where.strip()] = float(seconds)
        return cls(raise_at, pauses)

    def wants(self, where: str) -> bool:
        return where in self.raise_at

    def fire(self, where: str) -> None:
        if where in self.raise_at:
            raise InjectedFault(f"fault injected at {where} (CHRONOS_FAULT)")

    def fire_once(self, where: str) -> None:
        if where in self.raise_at:
            self.raise_at.discard(where)
            raise InjectedFault(f"fault injected at {where} (CHRONOS_FAULT)")

    def pause(self, where: str, check: Callable[[], None]) -> None:
        end = time.monotonic() + self.pauses.get(where, 0.0)
        while time.monotonic() < end:
            check()
            time.sleep(0.1)
