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
