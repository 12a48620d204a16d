"""Failures and pauses injected into a --local agent through its one seam (instance/agent/hooks.py),
installed with CHRONOS_AGENT_HOOKS=tests.agent_hooks:EnvFaults (tests/cli_helpers.py and
tests/agent_fixtures.py set it; the agent process finds this module on PYTHONPATH).

- CHRONOS_FAULT=<where>[,<where>...] raises InjectedFault there. <where> is a phase name
  (`initialization`, `data_sync`, `results_sync`: at the start of the phase's work; `training`:
  inside Chronos2Pipeline.fit, at the first step, on rank 0 of a multi-GPU run), `training:rank<r>`
  (that rank of a multi-GPU run fails at its first step) or `cleanup:<step>` (that cleanup step
  fails once, so the agent's retry of the cleanup is exercised).
- CHRONOS_PAUSE=<phase>:<seconds>[,...] waits that long at the start of the phase (after the
  state moved to it; for `cleanup`, once the state is in cleanup), still answering kills, so a
  test can act (kill, SIGKILL, SIGSTOP) while the run is in that phase.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from instance.agent.hooks import Hooks


class InjectedFault(RuntimeError):
    """A failure a test asked for through CHRONOS_FAULT."""


class EnvFaults(Hooks):
    def __init__(self, environ=os.environ):
        self.raise_at = {w.strip() for w in environ.get("CHRONOS_FAULT", "").split(",") if w.strip()}
        self.pauses: dict[str, float] = {}
        for item in environ.get("CHRONOS_PAUSE", "").split(","):
            if ":" in item:
                where, seconds = item.rsplit(":", 1)
                self.pauses[where.strip()] = float(seconds)

    def _fire(self, where: str, once: bool = False) -> None:
        if where in self.raise_at:
            if once:
                self.raise_at.discard(where)
            raise InjectedFault(f"fault injected at {where} (CHRONOS_FAULT)")

    def phase_started(self, phase: str, check: Callable[[], None]) -> None:
        end = time.monotonic() + self.pauses.get(phase, 0.0)
        while time.monotonic() < end:
            check()
            time.sleep(0.1)
        if phase not in ("training", "cleanup"):  # training fails at its first step; cleanup by step
            self._fire(phase)

    def cleanup_step(self, step: str) -> None:
        self._fire(f"cleanup:{step}", once=True)

    def first_training_step(self) -> None:
        self._fire("training")

    def failing_ranks(self, world: int) -> list[int]:
        ranks = [r for r in range(world) if f"training:rank{r}" in self.raise_at]
        return sorted(set(ranks + [0])) if "training" in self.raise_at else ranks
