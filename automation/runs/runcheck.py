"""The CLI's look at the run holding the lock: EC2's word on its machine and its group's, and the
machine's boot failure record, judged by the one rule in instance/protocol/liveness.py
(verify-cleanup, monitor and the followers)."""
from __future__ import annotations

from datetime import timedelta

from instance.protocol.bootfailure import read_boot_failure
from instance.protocol.group import describe_group, group_name, wants_machine
from instance.protocol.liveness import Machine, Verdict, judge
from instance.protocol.state import Lease

from ..context import Target
from .capacity import explain_no_capacity
from .ending import instance_state
from ..settings import settings


def check_run(target: Target, executor, lease: Lease, groups: list[dict] | None = None,
              stale_after: timedelta | None = None, reconciled: bool = False) -> Verdict:
    """The verdict on `lease`'s run. `groups`: the project's groups when the caller listed them
    already (verify-cleanup); otherwise the run's group is asked for only when its machine is not
    alive, and so is the boot failure record (one GET). One EC2 call for a run whose machine
    lives: a --local run's machine is its agent process, so when EC2 calls it live the executor
    checks the process (unless the caller has just reconciled every machine), plays the end of an
    agent that is gone as EC2 reports a dead machine, and EC2 is asked again."""
    verdict = _judge(target, executor, lease, groups, stale_after, reconciled)
    if not verdict.stale:
        return verdict
    # The lock was read before the machine was judged, and it may have moved on meanwhile: the
    # agent releases it and then its machine ends, or a replacement takes it over and then, as the
    # run's last machine, leaves its group. Only a lock unchanged after the judgement is stale.
    again = target.state_store().read()
    if again is not None and again.etag == lease.etag:
        return explain_no_capacity(target, lease, verdict)
    if again is None or again.run_id != lease.run_id:
        return Verdict(verdict.machine, False, "its run ended while it was judged")
    return explain_no_capacity(target, again, _judge(target, executor, again, None, stale_after, reconciled=True))


def _judge(target: Target, executor, lease: Lease, groups: list[dict] | None, stale_after: timedelta | None,
           reconciled: bool) -> Verdict:
    state = lease.state
    instance_id = state.get("instance_id")
    seen = instance_state(target, instance_id)
    if (not reconciled and Machine.from_ec2(seen) is Machine.ALIVE
            and executor.reconcile_machine(lease.run_id, instance_id)):
        seen = instance_state(target, instance_id)
    wants, failure = False, None
    if Machine.from_ec2(seen) is not Machine.ALIVE:
        failure = read_boot_failure(target.s3, target.bucket, target.layout.boot_failure(lease.run_id))
        if state.get("group"):
            if groups is None:
                group = describe_group(target.autoscaling, lease.run_id)
            else:
                group = next((g for g in groups if g["AutoScalingGroupName"] == group_name(lease.run_id)), None)
            wants = wants_machine(group)
    return judge(state, lease.age, lease.seen_at, seen, wants, stale_after or settings().stale_after, failure)
