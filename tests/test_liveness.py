"""When a held lock's run is over: the one rule (instance/protocol/liveness.py), as a table."""
from __future__ import annotations

from datetime import timedelta

import pytest

from instance.protocol.bootfailure import BootFailure
from instance.protocol.liveness import Machine, judge
from instance.protocol.state import Lease
from instance.protocol.timeutil import iso, utcnow

NOW = utcnow()
LIMIT = timedelta(minutes=5)
FRESH, OLD = timedelta(seconds=2), timedelta(minutes=6)
ONE_MACHINE = {"instance_id": "i-0abc", "attempt": 1, "max_machines": 1, "group": "run-x"}
SPARE_MACHINES = {**ONE_MACHINE, "max_machines": 6}
PAST_DEADLINE = {**SPARE_MACHINES, "deadline_at": iso(NOW - timedelta(minutes=1))}
NO_ID = {"attempt": 0, "max_machines": 6, "group": "run-x"}
AWAITING = {**SPARE_MACHINES, "awaiting_machine": True, "capacity_wait_minutes": 30,
            "interruptions": [{"at": iso(NOW - timedelta(minutes=7)), "step": 420}]}

# (case, lock, its age by S3's clock, EC2's state of its machine, the group wants one) -> stale, machine, waiting
TABLE = [
    ("running machine, fresh lock", ONE_MACHINE, FRESH, "running", False, False, Machine.ALIVE, None),
    ("running machine, silent lock: never guessed dead", ONE_MACHINE, OLD, "running", False, False, Machine.ALIVE, None),
    ("pending machine", ONE_MACHINE, OLD, "pending", True, False, Machine.ALIVE, None),
    ("terminated, no group wants one: dead at once", ONE_MACHINE, FRESH, "terminated", False, True, Machine.GONE, None),
    ("shutting-down, no group wants one: dead at once", ONE_MACHINE, FRESH, "shutting-down", False, True, Machine.GONE,
     None),
    ("terminated, the lock's age unknown: still dead", ONE_MACHINE, None, "terminated", False, True, Machine.GONE, None),
    ("terminated, group wants one, attempts left", SPARE_MACHINES, FRESH, "terminated", True, False, Machine.GONE,
     "waiting for a replacement machine (attempt 2 of 6)"),
    ("terminated, group wants one, out of attempts", ONE_MACHINE, FRESH, "terminated", True, True, Machine.GONE, None),
    ("terminated, group wants one, past the deadline", PAST_DEADLINE, FRESH, "terminated", True, True, Machine.GONE,
     None),
    ("terminated, waited past the capacity wait", AWAITING, timedelta(minutes=36), "terminated", True, True,
     Machine.GONE, None),
    ("terminated after a spot notice: the interruption line", AWAITING, OLD, "terminated", True, False, Machine.GONE,
     "interrupted at step 420, waiting for a machine (attempt 2 of 6)"),
    ("not known to EC2 yet, fresh lock", ONE_MACHINE, FRESH, None, False, False, Machine.UNKNOWN, None),
    ("no instance id yet (provisioning), fresh lock", NO_ID, FRESH, None, True, False, Machine.UNKNOWN, None),
    ("unknown machine, silent past the limit", ONE_MACHINE, OLD, None, False, True, Machine.UNKNOWN, None),
    ("stopped, no group wants one: dead at once (it runs nothing; nobody starts it)", ONE_MACHINE, FRESH, "stopped",
     False, True, Machine.GONE, None),
    ("stopping, no group wants one: dead at once", ONE_MACHINE, FRESH, "stopping", False, True, Machine.GONE, None),
    ("stopped member, group wants one, attempts left: its health check replaces it", SPARE_MACHINES, FRESH, "stopped",
     True, False, Machine.GONE, "waiting for a replacement machine (attempt 2 of 6)"),
    ("unknown machine, age not told by S3: never stale", ONE_MACHINE, None, None, False, False, Machine.UNKNOWN, None),
    ("unknown while awaiting a machine: the capacity wait on top", AWAITING, OLD, None, True, False, Machine.UNKNOWN,
     "interrupted at step 420, waiting for a machine (attempt 2 of 6)"),
]


@pytest.mark.parametrize("case,state,age,ec2,wants,stale,machine,waiting", TABLE, ids=[row[0] for row in TABLE])
def test_liveness_rule(case, state, age, ec2, wants, stale, machine, waiting):
    verdict = judge(state, age, NOW, ec2, wants, LIMIT)
    assert (verdict.stale, verdict.machine, verdict.waiting) == (stale, machine, waiting), verdict
    assert verdict.dead == (stale and machine is Machine.GONE)
    if verdict.stale:
        assert "i-0abc" in verdict.why or "names no machine" in verdict.why


def test_the_reason_names_what_happens_next():
    dead = judge(ONE_MACHINE, FRESH, NOW, "terminated", False, LIMIT)
    assert dead.why == "its machine i-0abc is terminated and no replacement is coming"
    spent = judge(ONE_MACHINE, FRESH, NOW, "terminated", True, LIMIT)
    assert spent.why == "its machine i-0abc is terminated and it has used all 1 machine(s) it may have"
    young = judge(NO_ID, FRESH, NOW, None, False, LIMIT)
    assert young.why.startswith("it names no machine yet") and "5 min" in young.why


def test_a_lease_read_from_s3_carries_what_the_rule_needs():
    written = NOW - timedelta(minutes=30)
    lease = Lease("e1", ONE_MACHINE, last_modified=written, seen_at=written + timedelta(minutes=30, seconds=1))
    assert lease.age == timedelta(minutes=30)
    assert judge(lease.state, lease.age, lease.seen_at, None, False, LIMIT).stale
    assert not judge(lease.state, lease.age, lease.seen_at, None, False, timedelta(hours=1)).stale


@pytest.mark.parametrize("state,age,wants,reason", [
    (ONE_MACHINE, FRESH, False, "lost"),  # the machine died; nothing else to say
    ({**SPARE_MACHINES, "attempt": 6}, FRESH, True, "too_many_interruptions"),
    (PAST_DEADLINE, FRESH, True, "max_runtime_exceeded"),
    (AWAITING, timedelta(minutes=36), True, "no_capacity"),
], ids=["no group", "out of machines", "past the deadline", "no capacity"])
def test_a_dead_run_is_recorded_with_the_reason_a_booting_machine_would_give(state, age, wants, reason):
    verdict = judge(state, age, NOW, "terminated", wants, LIMIT)
    assert verdict.dead and verdict.reason == reason


FIRST_AWAITED = {**NO_ID, "max_machines": 1, "awaiting_machine": True, "capacity_wait_minutes": 30}


@pytest.mark.parametrize("wants,age,stale,reason", [
    (True, timedelta(minutes=34), False, None),  # within stale limit + capacity wait: it waits
    (True, timedelta(minutes=36), True, "no_capacity"),  # the group looked for the whole wait and found none
    (False, timedelta(minutes=36), True, "lost"),  # nobody asked for a machine any more: not capacity
], ids=["still waiting", "never found one", "group wants none"])
def test_a_run_whose_first_machine_never_came_ends_no_capacity_not_lost(wants, age, stale, reason):
    """README's contract (instance.capacity_wait_minutes: "no capacity for this long: failed /
    no_capacity") for the first machine too, which EC2 never knew (no instance id)."""
    verdict = judge(FIRST_AWAITED, age, NOW, None, wants, LIMIT)
    assert (verdict.stale, verdict.machine) == (stale, Machine.UNKNOWN)
    if stale:
        assert verdict.reason == reason
    if reason == "no_capacity":
        assert verdict.why == ("it names no machine yet: its group found no machine within "
                               "instance.capacity_wait_minutes (30 min)")


WRITTEN = NOW - timedelta(minutes=1)  # the lock's last write, by S3's clock (age 1 min)
EARLIER, LATER = WRITTEN - timedelta(seconds=30), WRITTEN + timedelta(seconds=30)
ENV_FAILED = "cannot restore or build the python environment"

# (case, lock, EC2's state of its machine, the group wants one, the boot failure record) -> stale, reason
BOOT_TABLE = [
    ("its machine failed at boot and is terminating", ONE_MACHINE, "shutting-down", False,
     BootFailure("boot_failed", ENV_FAILED, "i-0abc", EARLIER), True, "boot_failed"),
    ("its machine failed at boot and was stopped by a power-off", ONE_MACHINE, "stopped", False,
     BootFailure("boot_failed", ENV_FAILED, "i-0abc", EARLIER), True, "boot_failed"),
    ("failed at boot while the group still looked like it wanted one: the machine took it to 0 first",
     SPARE_MACHINES, "terminated", True, BootFailure("boot_failed", ENV_FAILED, "i-0abc", EARLIER), True, "boot_failed"),
    ("the lock names no machine yet (a group run whose first machine failed)", NO_ID, None, True,
     BootFailure("boot_failed", ENV_FAILED, "i-0def", EARLIER), True, "boot_failed"),
    ("a replacement failed at boot after the interruption was written", AWAITING, "terminated", True,
     BootFailure("boot_failed", ENV_FAILED, "i-0def", LATER), True, "boot_failed"),
    ("an older machine's failure, the lock written since by another: not about this run's state", SPARE_MACHINES,
     "terminated", True, BootFailure("boot_failed", ENV_FAILED, "i-0def", EARLIER), False, "lost"),
    ("the agent crashed: the machine's reason", ONE_MACHINE, "terminated", False,
     BootFailure("agent_crashed", "the agent exited with 137", "i-0abc", EARLIER), True, "agent_crashed"),
    ("its machine still runs (it writes the record before it ends itself): alive is never stale", ONE_MACHINE,
     "running", False, BootFailure("boot_failed", ENV_FAILED, "i-0abc", EARLIER), False, "lost"),
]


@pytest.mark.parametrize("case,state,ec2,wants,failure,stale,reason", BOOT_TABLE, ids=[row[0] for row in BOOT_TABLE])
def test_a_machine_that_could_not_run_the_agent_ends_its_run_with_its_reason(case, state, ec2, wants, failure, stale,
                                                                             reason):
    verdict = judge(state, timedelta(minutes=1), NOW, ec2, wants, LIMIT, failure)
    assert (verdict.stale, verdict.reason) == (stale, reason), verdict
    if stale:
        assert verdict.why.endswith(f"could not run the agent: {failure.message}")
        assert verdict.error == {"class": reason, "message": failure.message, "phase": "boot"}


def test_a_run_past_its_deadline_whose_machine_left_its_group_is_recorded_as_such():
    """The dead-man switch takes the machine out of its group, then terminates it."""
    verdict = judge({**ONE_MACHINE, "deadline_at": iso(NOW - timedelta(minutes=1))}, FRESH, NOW, "terminated",
                    False, LIMIT)
    assert verdict.dead and verdict.reason == "max_runtime_exceeded"
