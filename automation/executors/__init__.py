"""Where a run's machine comes from: a local process (alone or in a local group), or EC2 through the
Automation API. `for_target` picks one for a target."""
from __future__ import annotations

from typing import Callable


def for_target(target, progress: Callable[[str], None] | None = None):
    """`progress` hears what Pulumi does while an EC2 launch provisions (one line a step)."""
    if target.local:
        from .local import LocalExecutor

        return LocalExecutor(target.aws, target.env, target.bucket)
    from .ec2 import Ec2Executor

    return Ec2Executor.for_target(target, progress=progress)
