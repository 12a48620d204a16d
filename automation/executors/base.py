"""The one small interface every executor implements (local process, EC2 through Pulumi)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ..infra_record import InfraRecord

if TYPE_CHECKING:  # the config's model (pydantic) loads with a launch, not with every command that reads
    from instance.protocol.runconfig import RunConfig


@dataclass(frozen=True)
class ProvisionRequest:
    run_id: str
    env: str
    config: RunConfig
    infra: InfraRecord


@dataclass(frozen=True)
class Provisioned:
    instance_id: str | None  # None: the group is still looking for capacity for its first machine
    zone: str | None = None
    last_failed_launch: str | None = None  # no machine yet: why the group's launch failed, in AWS's words


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
        """Force-stop the run's machine (idempotent). Never needs the Pulumi CLI."""

    def reconcile(self) -> list[str]:
        """Bring EC2's view up to date with machines that died unseen; the instance ids marked
        gone. A no-op where EC2 itself is the machine (ec2)."""

    def reconcile_machine(self, run_id: str, instance_id: str) -> bool:
        """`reconcile` for the one machine EC2 just called live, without asking EC2: True when it
        had died unseen and EC2's record of it has now ended (ask EC2 again). False on ec2."""

    def finalize(self, run_id: str) -> None:
        """Remove what the run left in the executor (stack, process record). Idempotent; the only
        step that may need the Pulumi CLI, so callers that end runs do it last."""

    def leftover_stacks(self) -> list[str]:
        """Run stacks (or equivalents) still present, by run id."""

    def preview(self, req: ProvisionRequest):
        """What provision would make, without making it (a Pulumi preview); None when the
        executor makes nothing to preview."""
