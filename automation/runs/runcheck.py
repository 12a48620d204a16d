"""The CLI's look at the run holding the lock: EC2's word on its machine and its group's, judged
by the one rule in instance/protocol/liveness.py (verify-cleanup, monitor and the followers)."""
from __future__ import annotations

from datetime import timedelta

from instance.protocol.ec2 import instance_state
from instance.protocol.group import describe_group, group_name, wants_machine
from instance.protocol.liveness import Machine, Verdict, judge
from instance.protocol.state import Lease

from ..context import Target
from ..settings import settings


def check_run(target: Target, executor, lease: Lease, groups: list[dict] | None = None,
              stale_after: timedelta | None = None, reconciled: bool = False) -> Verdict:
    """The verdict on `lease`'s run. `groups`: the project's groups when the caller listed them
    already (verify-cleanup); otherwise the run's group is asked for only when its machine is not
    alive. One EC2 call for a run whose machine lives: a --local run's machine is its agent
    process, so when EC2 calls it live the executor checks the process (unless the caller has just
    reconciled every machine), ends the instance record of an agent that is gone, as EC2 reports
    a dead machine, and EC2 is asked again."""
    state = lease.state
    instance_id = state.get("instance_id")
    seen = instance_state(target.ec2, instance_id) if instance_id else None
    if (not reconciled and Machine.from_ec2(seen) is Machine.ALIVE
            and executor.reconcile_machine(lease.run_id, instance_id)):
        seen = instance_state(target.ec2, instance_id)
    wants = False
    if Machine.from_ec2(seen) is not Machine.ALIVE and state.get("group"):
        if groups is None:
            group = describe_group(target.autoscaling, lease.run_id)
        else:
            group = next((g for g in groups if g["AutoScalingGroupName"] == group_name(lease.run_id)), None)
        wants = wants_machine(group)
    return judge(state, lease.age, lease.seen_at, seen, wants, stale_after or settings().stale_after)
