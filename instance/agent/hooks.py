"""The one seam where tests reach into a running agent: named points of its lifecycle.

A run on EC2 always has the no-op `Hooks`. A `--local` agent loads another class from
`CHRONOS_AGENT_HOOKS=module:Class` (the tests' fault and pause injection, tests/agent_hooks.py);
the production code only calls these points, and knows nothing of what a test does there.
"""
from __future__ import annotations

import importlib
from typing import Callable


class Hooks:
    def phase_started(self, phase: str, check: Callable[[], None]) -> None:
        """The state has moved to `phase` (cleanup included); `check` raises on a kill."""

    def cleanup_step(self, step: str) -> None:
        """A cleanup step is about to run (state, record, workdir, lock, instance, log, status)."""

    def first_training_step(self) -> None:
        """Training reached its first step, inside Chronos2Pipeline.fit."""

    def failing_ranks(self, world: int) -> list[int]:
        """Of a training on `world` processes, the ranks that fail at their first step (the
        processes are torchrun's, so the answer travels in their job description)."""
        return []


def for_agent(local: bool, environ) -> Hooks:
    """The agent's hooks: an EC2 agent has none, whatever its environment says (a variable left
    in a machine's environment must never reach into a real run); a --local one loads
    CHRONOS_AGENT_HOOKS."""
    return load(environ.get("CHRONOS_AGENT_HOOKS")) if local else Hooks()


def load(spec: str | None) -> Hooks:
    if not spec:
        return Hooks()
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()
