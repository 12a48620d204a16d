"""Is a held lock's run still going? The one rule verify-cleanup, monitor and the followers share.

Four facts decide, each from the party that knows it:
- the machine the lock names, by EC2's word: alive (pending, running), gone (shutting-down,
  terminated: final on EC2; stopping, stopped: it runs nothing, nobody starts it again, and in a
  group it is replaced as unhealthy; locally the agent process is gone), or unknown (EC2 has no
  such instance, or the lock names none yet);
- whether the run's Auto Scaling group will bring another machine (it wants one);
- the lock itself: its age by S3's clock, its attempt and max_machines, its deadline;
- the machine's own last word, when it could not run the agent (bootfailure.py): it applies when
  it comes from the machine the lock names, or the lock names none, or it was written after the
  lock's last write (S3's clock both).

The verdicts:
- alive: never stale, however quiet the lock (a hung agent is ended by its own watchdog and the
  machine's dead-man switch, not by a guess from here);
- not alive, and its machine said it could not run the agent: stale at once, recorded with the
  machine's reason (`boot_failed`): the machine took its group to 0 before it said so, so nothing
  is coming, whatever the group looked like a moment ago;
- gone, and a replacement is coming (the group wants a machine, the run has attempts left, is
  within its deadline, and has waited less than capacity_wait_minutes): not stale, "waiting for a
  replacement machine (attempt n of m)";
- gone, and nothing is coming: stale at once. No clock is involved: EC2's terminated is final.
  Recorded `max_runtime_exceeded` when the run is past its deadline (the machine's dead-man
  switch ended it), else `lost`;
- unknown: stale only once S3 says nobody wrote the lock for the stale limit (longer by
  capacity_wait_minutes while a machine is awaited). EC2 is eventually consistent: an
  instance just launched may not be listed yet, and a launch still provisioning names none.
  Recorded `no_capacity` when the group still wanted the machine it awaited (it found none:
  the CLI adds why from its scaling activities, automation/runs/capacity.py), else `lost`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Mapping

from .attempts import MAX_RUNTIME_EXCEEDED, NO_CAPACITY, TOO_MANY_INTERRUPTIONS, deadline, waiting_line
from .bootfailure import BootFailure

DEFAULT_STALE_AFTER = timedelta(minutes=5)
LOST = "lost"  # the reason a stale run is recorded with, unless the rule knows better
ALIVE_STATES = frozenset({"pending", "running"})
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped"})


class Machine(str, Enum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"

    @classmethod
    def from_ec2(cls, instance_state: str | None) -> "Machine":
        """EC2's state name (None: EC2 has no such instance, or the lock names none)."""
        if instance_state in ALIVE_STATES:
            return cls.ALIVE
        if instance_state in GONE_STATES:
            return cls.GONE
        return cls.UNKNOWN


@dataclass(frozen=True)
class Verdict:
    machine: Machine
    stale: bool
    why: str  # one clause for people: "its machine i-0abc is terminated and no replacement is coming"
    waiting: str | None = None  # set while a replacement machine is coming
    reason: str = LOST  # what a stale run is recorded failed with (the boot rules' reasons where they apply)
    error: dict[str, Any] | None = None  # the record's error, when the machine said what went wrong

    @property
    def dead(self) -> bool:
        """Confirmed dead: the machine is gone and nothing replaces it (no clock involved)."""
        return self.stale and self.machine is Machine.GONE

    def to_json(self) -> dict[str, Any]:
        return {"machine": self.machine.value, "stale": self.stale, "why": self.why, "waiting": self.waiting,
                "reason": self.reason, "error": self.error}


def replacement_coming(state: Mapping[str, Any], group_wants: bool, age: timedelta | None, now: datetime | None,
                       stale_after: timedelta) -> tuple[str, str] | None:
    """(why no replacement machine is coming, the reason to record), or None when one is. The
    reasons are the ones a booting machine would record (attempts.py), where one applies."""
    due = deadline(state)
    past_due = due is not None and now is not None and now >= due
    if not group_wants:
        return "no replacement is coming", MAX_RUNTIME_EXCEEDED if past_due else LOST
    used, allowed = int(state.get("attempt", 0)), int(state.get("max_machines", 1))
    if used >= allowed:
        return f"it has used all {allowed} machine(s) it may have", TOO_MANY_INTERRUPTIONS if allowed > 1 else LOST
    if past_due:
        return "it is past its deadline (instance.max_runtime_minutes)", MAX_RUNTIME_EXCEEDED
    if age is not None and age >= stale_after + _capacity_wait(state):
        return "no replacement came within instance.capacity_wait_minutes", NO_CAPACITY
    return None


def judge(state: Mapping[str, Any], age: timedelta | None, now: datetime | None, instance_state: str | None,
          group_wants: bool, stale_after: timedelta = DEFAULT_STALE_AFTER,
          boot_failure: BootFailure | None = None) -> Verdict:
    """The verdict on a held lock. `age` and `now` are S3's (None when S3 did not say);
    `instance_state` is EC2's word on the machine the lock names; `group_wants` is whether the
    run's group will (re)place a machine; `boot_failure` is the run's boot failure record, if
    one was written."""
    machine = Machine.from_ec2(instance_state)
    instance = state.get("instance_id")
    if machine is Machine.ALIVE:
        return Verdict(machine, False, f"its machine {instance} is {instance_state}")
    if boot_failure is not None and speaks_for_lock(boot_failure, state, age, now):
        who = boot_failure.instance_id or instance or "its machine"
        return Verdict(machine, True, f"its machine {who} could not run the agent: {boot_failure.message}",
                       reason=boot_failure.reason, error=boot_failure.error())
    if machine is Machine.GONE:
        gone = f"its machine {instance} is {instance_state}"
        not_coming = replacement_coming(state, group_wants, age, now, stale_after)
        if not_coming:
            return Verdict(machine, True, f"{gone} and {not_coming[0]}", reason=not_coming[1])
        nxt, allowed = int(state.get("attempt", 0)) + 1, int(state.get("max_machines", 1))
        line = f"waiting for a replacement machine (attempt {nxt} of {allowed})"
        return Verdict(machine, False, f"{gone}; {line}", waiting_line(state) or line)
    limit = stale_after + (_capacity_wait(state) if state.get("awaiting_machine") else timedelta(0))
    unknown = f"its machine {instance} is not known to EC2" if instance else "it names no machine yet"
    if age is None or age < limit:
        return Verdict(machine, False, f"{unknown} (a launch or boot may be under way); lost if its lock stays "
                                       f"unwritten for {_minutes(limit)}", waiting_line(state))
    if state.get("awaiting_machine") and group_wants:
        # Its group was still asked for a machine and found none: capacity (or quota), not a loss.
        return Verdict(machine, True, f"{unknown}: its group found no machine within instance.capacity_wait_minutes "
                                      f"({_minutes(_capacity_wait(state))})", reason=NO_CAPACITY)
    return Verdict(machine, True, f"{unknown} and nothing wrote its lock for {_minutes(limit)} or more")


def speaks_for_lock(failure: BootFailure, state: Mapping[str, Any], age: timedelta | None,
                    now: datetime | None) -> bool:
    """Whether a boot failure record is about the run as the lock stands: written by the machine
    the lock names, or while it names none, or after the lock's last write (S3's clock both). A
    record of an earlier machine whose successor has written the lock since says nothing now."""
    named = state.get("instance_id")
    if not named or failure.instance_id == named:
        return True
    return failure.written_at is not None and age is not None and now is not None and failure.written_at >= now - age


def _capacity_wait(state: Mapping[str, Any]) -> timedelta:
    return timedelta(minutes=int(state.get("capacity_wait_minutes", 30)))


def _minutes(limit: timedelta) -> str:
    seconds = int(limit.total_seconds())
    return f"{seconds // 60} min" if seconds >= 120 else f"{seconds} s"
