"""A run's machines, one after another: what a booting agent does with the run it finds (pure).

The run stack's Auto Scaling group replaces a machine that goes away (spot reclaimed, hardware
lost) for as long as its desired capacity is 1. Every machine's agent decides at boot, from the
lock alone, whether the run goes on here:

- the lock is gone or belongs to another run: this machine has no run; it ends the group;
- the run was killed, failed, or is in cleanup: finish its cleanup here, then end the group;
- the run has used every machine it may have, or is past its deadline: end it failed;
- otherwise: this is attempt n + 1; resume (or start, for the first machine).

The bound: attempt n is written to the lock by machine n before it does any work, and a machine
that finds n = max_machines ends the run. A machine that boots when n = max_machines - 1 is the
last; it takes itself out of the group with the desired capacity going to 0 (DetachInstances,
ShouldDecrementDesiredCapacity) before training, so even if it then dies without a word, no
further machine is launched: max_machines in all, never more.

`deadline_at` is absolute and on S3's clock (the launch's first write); a machine whose clock is
off cannot stretch it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from .status import Status
from .timeutil import iso, parse_iso

START, RESUME, END, NOT_HOLDER = "start", "resume", "end", "not_holder"
TOO_MANY_INTERRUPTIONS = "too_many_interruptions"
MAX_RUNTIME_EXCEEDED = "max_runtime_exceeded"
NO_CAPACITY = "no_capacity"


@dataclass(frozen=True)
class Boot:
    action: str  # start | resume | end | not_holder
    attempt: int  # the attempt this machine is (for end: the attempts used so far)
    reason: str | None = None  # why the run ends (end only)
    final_status: str | None = None  # the outcome cleanup records (end only)
    last_machine: bool = False  # no replacement may follow this one

    @property
    def works(self) -> bool:
        return self.action in (START, RESUME)


def deadline(state: Mapping[str, Any]) -> datetime | None:
    """The run's deadline: `deadline_at`, or else its start plus max_runtime_minutes."""
    at = parse_iso(state.get("deadline_at"))
    if at is not None:
        return at
    start, minutes = parse_iso(state.get("started_at")), state.get("max_runtime_minutes")
    return start + timedelta(minutes=int(minutes)) if start and minutes else None


def waiting_since(state: Mapping[str, Any]) -> datetime | None:
    """When the run began to wait for the machine it awaits: its last interruption, or (for the
    first machine) its launch, on S3's clock where known."""
    interruptions = state.get("interruptions") or []
    if interruptions:
        return parse_iso(interruptions[-1].get("at"))
    due, minutes = parse_iso(state.get("deadline_at")), state.get("max_runtime_minutes")
    if due is not None and minutes:
        return due - timedelta(minutes=int(minutes))
    return parse_iso(state.get("started_at"))


def decide_boot(state: Mapping[str, Any] | None, run_id: str, now: datetime) -> Boot:
    """What the agent booting for `run_id` does, from the lock `state` and S3's time `now`."""
    if state is None or state.get("run_id") != run_id:
        return Boot(NOT_HOLDER, 0)
    used = int(state.get("attempt", 0))
    status = Status(state["status"])
    if status is Status.KILLED:
        return Boot(END, used, "killed_by_user", "killed")
    if status is Status.FAILED:
        return Boot(END, used, (state.get("error") or {}).get("class") or state.get("reason"), "failed")
    if status is Status.CLEANUP:
        return Boot(END, used, state.get("reason"), state.get("outcome") or "failed")
    allowed = int(state.get("max_machines", 1))
    if used >= allowed:
        return Boot(END, used, TOO_MANY_INTERRUPTIONS, "failed")
    due = deadline(state)
    if due is not None and now >= due:
        return Boot(END, used, MAX_RUNTIME_EXCEEDED, "failed")
    since = waiting_since(state)
    wait = timedelta(minutes=int(state.get("capacity_wait_minutes", 30)))
    if state.get("awaiting_machine") and since is not None and now >= since + wait:
        return Boot(END, used, NO_CAPACITY, "failed")
    action = START if used == 0 and status is Status.INITIALIZATION else RESUME
    return Boot(action, used + 1, last_machine=used + 1 >= allowed)


def machine_entry(instance_id: str | None, instance_type: str | None, zone: str | None, market: str,
                  attempt: int, now: datetime, hourly_usd: float | None = None) -> dict[str, Any]:
    """One machine of the run, as the lock's `machines` list keeps it (for cost and monitor).
    `hourly_usd`: the spot price AWS quoted at launch for its type and zone (None: the table's)."""
    return {"attempt": attempt, "instance_id": instance_id, "instance_type": instance_type, "zone": zone,
            "market": market, "started_at": iso(now), "ended_at": None, "hourly_usd": hourly_usd}


def interruption_entry(step: int | None, instance_id: str | None, instance_type: str | None, zone: str | None,
                       notice: str | None, now: datetime) -> dict[str, Any]:
    return {"at": iso(now), "step": step, "instance_id": instance_id, "instance_type": instance_type, "zone": zone,
            "notice": notice}


LOST_WITHOUT_NOTICE = "none: the machine was lost without notice"


def with_lost_machine(state: Mapping[str, Any], instance_id: str | None, now: datetime) -> dict[str, Any]:
    """The lock as a replacement machine finds it, with the machine before it counted as an
    interruption when that one vanished without notice (hardware, a crash, an on-demand machine
    the group replaced): the run resumes from its last complete checkpoint, as after a spot
    notice, and the interruption shows in monitor, the record and the cost. A machine that had a
    notice recorded its own interruption; a first boot has no machine before it."""
    out = dict(state)
    previous = state.get("instance_id")
    interruptions = list(state.get("interruptions") or [])
    if not previous or previous == instance_id or state.get("awaiting_machine") \
            or any(i.get("instance_id") == previous for i in interruptions):
        return out
    machines = [dict(m) for m in state.get("machines") or []]
    gone = next((m for m in reversed(machines) if m.get("instance_id") == previous), {})
    if gone and not gone.get("ended_at"):
        gone["ended_at"] = iso(now)
    interruptions.append(interruption_entry((state.get("progress") or {}).get("step"), previous,
                                            gone.get("instance_type") or state.get("instance_type"), gone.get("zone"),
                                            LOST_WITHOUT_NOTICE, now))
    out.update(interruptions=interruptions, machines=machines)
    return out


def waiting_line(state: Mapping[str, Any]) -> str | None:
    """What `monitor` says while a replacement machine is coming, or None when none is awaited:
    'interrupted at step 4200, waiting for a machine (attempt 2 of 6)'."""
    interruptions = state.get("interruptions") or []
    if not state.get("awaiting_machine"):
        return None
    if not interruptions:
        return "waiting for its first machine: the group looks for capacity"
    last = interruptions[-1]
    step = f" at step {last['step']}" if last.get("step") is not None else ""
    nxt = int(state.get("attempt", 0)) + 1
    return f"interrupted{step}, waiting for a machine (attempt {nxt} of {state.get('max_machines', nxt)})"
