"""Pick the executor for a target: the local process runner, or EC2 through Pulumi."""
from __future__ import annotations


def for_target(target):
    if target.local:
        from .local import LocalExecutor

        return LocalExecutor(target.aws, target.env, target.bucket)
    from .ec2 import Ec2Executor

    return Ec2Executor.for_target(target)
