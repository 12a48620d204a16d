"""The one small interface every executor implements (local process, EC2 through Pulumi)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from instance.protocol.runconfig import RunConfig

from ..infra_record import InfraRecord


@dataclass(frozen=True)
class ProvisionRequest:
    run_id: str
    env: str
    config: RunConfig
    infra: InfraRecord
    endpoint_url: str | None = None  # None on real AWS


@dataclass(frozen=True)
class Provisioned:
    instance_id: str
    zone: str | None = None
    stack_name: str | None = None
    detail: dict = field(default_factory=dict)


class ProvisionError(Exception):
    """Provisioning failed. `kind` tells the user what to do about it."""

    KINDS = ("quota", "capacity", "permissions", "tooling", "other")

    def __init__(self, message: str, kind: str = "other"):
        assert kind in self.KINDS
        super().__init__(message)
        self.kind = kind


class Executor(Protocol):
    name: str

    def provision(self, req: ProvisionRequest) -> Provisioned:
        """Start the machine that runs the agent. Undo anything half-made before raising."""

    def terminate(self, run_id: str, instance_id: str | None) -> None:
        """Force-stop the run's machine (idempotent)."""

    def finalize(self, run_id: str) -> None:
        """Remove what the run left in the executor (stack, process record). Idempotent."""

    def leftover_stacks(self) -> list[str]:
        """Run stacks (or equivalents) still present, by run id."""
