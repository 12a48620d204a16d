"""The boot rules of a run's machines (instance/protocol/attempts.py), as a table, and the bound
on machines they give: no sequence of interruptions gets a run more than max_machines."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from instance.protocol.attempts import (END, MAX_RUNTIME_EXCEEDED, NO_CAPACITY, NOT_HOLDER, RESUME, START,
                                        TOO_MANY_INTERRUPTIONS, decide_boot, waiting_line)
from instance.protocol.timeutil import iso

RUN = "run-20261129-100000-ab12"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def lock(status="initialization", attempt=0, max_machines=6, **extra) -> dict:
    return {"run_id": RUN, "status": status, "attempt": attempt, "max_machines": max_machines,
            "deadline_at": iso(NOW + timedelta(hours=1)), "max_runtime_minutes": 120,
            "capacity_wait_minutes": 30, **extra}


@pytest.mark.parametrize("state, action, attempt, reason, last", [
    (None, NOT_HOLDER, 0, None, False),
    ({**lock(), "run_id": "run-20261129-090000-0000"}, NOT_HOLDER, 0, None, False),
    (lock(), START, 1, None, False),
    (lock(max_machines=1), START, 1, None, True),
    (lock("training", attempt=1), RESUME, 2, None, False),
    (lock("results_sync", attempt=5), RESUME, 6, None, True),
    (lock("training", attempt=6), END, 6, TOO_MANY_INTERRUPTIONS, False),
    (lock("killed", attempt=2), END, 2, "killed_by_user", False),
    (lock("failed", attempt=2, error={"class": "DataValidationError"}), END, 2, "DataValidationError", False),
    (lock("cleanup", attempt=2, outcome="completed", reason=None), END, 2, None, False),
    (lock("training", attempt=1, deadline_at=iso(NOW - timedelta(seconds=1))), END, 1, MAX_RUNTIME_EXCEEDED, False),
    (lock("training", attempt=1, awaiting_machine=True,
          interruptions=[{"at": iso(NOW - timedelta(minutes=31)), "step": 10}]), END, 1, NO_CAPACITY, False),
    (lock("training", attempt=1, awaiting_machine=True,
          interruptions=[{"at": iso(NOW - timedelta(minutes=29)), "step": 10}]), RESUME, 2, None, False),
])
def test_boot_decisions(state, action, attempt, reason, last):
    boot = decide_boot(state, RUN, NOW)
    assert (boot.action, boot.attempt, boot.reason, boot.last_machine) == (action, attempt, reason, last)


def test_cleanup_is_finished_with_the_outcome_it_recorded():
    assert decide_boot(lock("cleanup", attempt=3, outcome="completed"), RUN, NOW).final_status == "completed"
    assert decide_boot(lock("cleanup", attempt=3), RUN, NOW).final_status == "failed"


@pytest.mark.parametrize("max_machines", [1, 2, 6])
def test_no_sequence_of_boots_gets_more_than_max_machines(max_machines):
    """Each boot that works counts itself; the last one leaves the group, so no boot follows it.
    Even if the group launched more (a boot that died before leaving it), each would end the run."""
    state = lock(max_machines=max_machines)
    working = 0
    for _ in range(max_machines * 3):
        boot = decide_boot(state, RUN, NOW)
        if not boot.works:
            assert boot.action == END and boot.reason == TOO_MANY_INTERRUPTIONS
            break
        working += 1
        state = {**state, "status": "training", "attempt": boot.attempt}
        if boot.last_machine:
            assert boot.attempt == max_machines
    assert working == max_machines


def test_monitor_says_what_the_run_waits_for():
    waiting = lock("training", attempt=1, awaiting_machine=True, interruptions=[{"at": iso(NOW), "step": 4200}])
    assert waiting_line(waiting) == "interrupted at step 4200, waiting for a machine (attempt 2 of 6)"
    assert waiting_line({**lock(), "awaiting_machine": True}) == \
        "waiting for its first machine: the group looks for capacity"
    assert waiting_line(lock("training", attempt=1)) is None


def _machine(instance_id: str, attempt: int = 1) -> dict:
    return {"attempt": attempt, "instance_id": instance_id, "instance_type": "g5.xlarge", "zone": "us-east-1b",
            "market": "on-demand", "started_at": iso(NOW - timedelta(minutes=30)), "ended_at": None}


@pytest.mark.parametrize("state, counted", [
    # The machine the lock names vanished while training: counted, at the step it had reached.
    (lock("training", attempt=1, instance_id="i-old", machines=[_machine("i-old")], progress={"step": 420}), True),
    # A spot notice already recorded that machine's interruption: not twice.
    (lock("training", attempt=1, instance_id="i-old", machines=[_machine("i-old")],
          interruptions=[{"instance_id": "i-old", "step": 400, "notice": "{}"}], awaiting_machine=True), False),
    # Waiting for a machine (the previous one handed over): nothing was lost.
    (lock("training", attempt=1, instance_id="i-old", awaiting_machine=True), False),
    # The machine booting is the one the lock names (its agent restarted): nothing was lost.
    (lock("training", attempt=1, instance_id="i-new"), False),
    # No machine before this one.
    (lock("initialization", attempt=0), False),
])
def test_a_machine_lost_without_notice_counts_as_an_interruption(state, counted):
    from instance.protocol.attempts import LOST_WITHOUT_NOTICE, with_lost_machine

    after = with_lost_machine(state, "i-new", NOW)
    added = (after.get("interruptions") or [])[len(state.get("interruptions") or []):]
    if not counted:
        assert after == state
        return
    [entry] = added
    assert (entry["instance_id"], entry["step"], entry["notice"]) == ("i-old", 420, LOST_WITHOUT_NOTICE)
    assert (entry["instance_type"], entry["zone"]) == ("g5.xlarge", "us-east-1b")
    assert after["machines"][0]["ended_at"] == iso(NOW), "its cost stops when its loss is seen"
    assert state.get("interruptions") is None and state["machines"][0]["ended_at"] is None, "the input is untouched"
