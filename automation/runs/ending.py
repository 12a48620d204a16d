"""Ending a run from the CLI: kill (ask, wait, force) and the forced end that verify-cleanup
also uses for a stale lock or an orphaned machine. The agent normally ends its own run; this is
the fallback.

Ending never depends on the Pulumi CLI (DESIGN, "Ephemeral run stack"). A forced end goes:
1. the machine: every instance of the run, found by its RunId tag (and the id the lock names),
   terminated through EC2 and confirmed with EC2;
2. the lock: moved to the outcome, then cleanup, and released (conditional writes);
3. the records: training.json and cleanup_status.json closed, conditionally, never replacing
   what the agent finished;
4. the run's stack record, last and best effort: one that cannot be removed here (no Pulumi CLI,
   a backend error) is reported and removed by the next command that has the CLI (`launch`,
   `verify-cleanup --fix`). It holds nothing billable once the machine is gone.
"""
from __future__ import annotations

import getpass
import logging
import socket
import time
from dataclasses import dataclass, field

from instance.protocol.ec2 import instance_state as ec2_instance_state
from instance.protocol.ec2 import instances_by_tag
from instance.protocol.group import end_group
from instance.protocol.state import Fenced, LockError
from instance.protocol.status import Status

from ..context import Target
from ..errors import NoSuchRun
from .records import read_record, record_end_from_cli, step
from ..settings import settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ended:
    """What a forced end did: its steps, and the stack it could not remove (None when tidy)."""

    run_id: str
    steps: list[dict] = field(default_factory=list)
    stack_left: str | None = None


@dataclass(frozen=True)
class KillResult:
    run_id: str
    requested: bool
    forced: bool
    ended: bool
    final_status: str | None
    stack_left: str | None = None


def instance_state(target: Target, instance_id: str | None) -> str | None:
    """EC2's word on the run's instance; None when it has none or EC2 knows no such instance."""
    return ec2_instance_state(target.ec2, instance_id) if instance_id else None


def confirm_terminated(target: Target, instance_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        state = instance_state(target, instance_id)
        if state in (None, "terminated") or time.monotonic() > deadline:
            return state or "not_found"
        time.sleep(0.2 if target.local else 5)


def run_instances(target: Target, run_id: str, known: str | None = None) -> list[str]:
    """The run's instances that may still bill: the one the lock names and any tagged RunId."""
    found = [i["InstanceId"] for i in instances_by_tag(target.ec2, {"RunId": run_id})]
    return list(dict.fromkeys(([known] if known else []) + found))


def force_end(target: Target, executor, run_id: str, final_status: str, reason: str,
              error: dict | None = None) -> Ended:
    """Terminate the run's machine, release its lock and close its records (with `error` when the
    lock has none: what its machine said went wrong), then tidy its stack. Idempotent."""
    store = target.state_store()
    lease = store.read()
    held = lease if lease is not None and lease.run_id == run_id else None
    state = dict(held.state) if held else {}
    if error and not state.get("error"):
        state["error"] = error
    steps = end_machines(target, executor, run_id, state.get("instance_id"))
    steps.append(_release(store, run_id, Status(final_status), reason))
    record_end_from_cli(target, run_id, final_status, reason, state, steps)
    return Ended(run_id, steps, tidy_stack(executor, run_id))


def end_machines(target: Target, executor, run_id: str, known: str | None) -> list[dict]:
    """Set the run's group to 0 machines (else it would replace what ends here), then terminate
    every machine of the run through the executor (EC2, no Pulumi) and confirm."""
    result, detail = end_group(target.autoscaling, run_id)
    steps = [step("group", "set to 0 machines", result, detail)] if result != "not_found" else []
    ids = run_instances(target, run_id, known)
    if not ids:
        executor.terminate(run_id, None)  # a local agent may live without an instance record
        return [*steps, step("instance", "terminate", "not_found", "EC2 has no live instance tagged with this run")]
    for instance_id in ids:
        executor.terminate(run_id, instance_id)
        seen = confirm_terminated(target, instance_id)
        result = "done" if seen == "terminated" else ("not_found" if seen == "not_found" else "error")
        steps.append(step(f"instance {instance_id}", "terminate", result, f"EC2 reports {seen}"))
    return steps


def _release(store, run_id: str, outcome: Status, reason: str, attempts: int = 5) -> dict:
    """Move the run to `outcome`, then cleanup, and delete its lock. Read after the machines
    ended: until then the agent may still have moved it (to cleanup, say), and a lease read
    before would be fenced by that last write of a now dead writer."""
    for _ in range(attempts):
        lease = store.read()
        if lease is None or lease.run_id != run_id:
            return step("state file", "delete", "not_found", "already released")
        try:
            if not lease.status.is_terminal:
                lease = store.move(lease, outcome, reason=reason)
            if lease.status is not Status.CLEANUP:
                lease = store.move(lease, Status.CLEANUP)
            store.release(lease)
            return step("state file", "delete", "done")
        except Fenced as exc:
            last = str(exc)
    return step("state file", "delete", "error", last)


def tidy_stack(executor, run_id: str) -> str | None:
    """Remove the run's stack record (needs the Pulumi CLI when there is one). None when done or
    there was none; else why it stays, for the user (the next launch or --fix retries it)."""
    try:
        executor.finalize(run_id)
        return None
    except Exception as exc:  # noqa: BLE001 - the run has ended; only its record is left
        log.warning("run stack %s left in place: %s", run_id, exc)
        return str(exc)


def kill(target: Target, executor, run_id: str | None, force: bool, wait: bool) -> KillResult:
    store = target.state_store()
    lease = store.read()
    if lease is None:
        raise NoSuchRun(f"no run is active in env {target.env}; nothing to kill (see `chronos-train runs`)")
    if run_id and lease.run_id != run_id:
        raise NoSuchRun(f"run {run_id} is not active; the active run is {lease.run_id}")
    run_id = lease.run_id
    try:
        killed = store.request_kill(run_id, requested_by=f"{getpass.getuser()}@{socket.gethostname()}")
    except LockError:
        killed = None
    requested = killed is not None and killed.status is Status.KILLED
    if force or lease.state.get("awaiting_machine"):
        # No machine runs the run while it waits for a replacement: nobody else would end it.
        ended = force_end(target, executor, run_id, "killed", "killed_by_user")
        return KillResult(run_id, requested, True, True, "killed", ended.stack_left)
    if not wait:
        return KillResult(run_id, requested, False, False, None)
    deadline = time.monotonic() + settings().kill_grace
    while time.monotonic() < deadline:
        current = store.read()
        if current is None or current.run_id != run_id:
            left = tidy_stack(executor, run_id)
            return KillResult(run_id, requested, False, True, _final_status(target, run_id), left)
        time.sleep(0.5 if target.local else 3)
    ended = force_end(target, executor, run_id, "killed", "killed_by_user")
    return KillResult(run_id, requested, True, True, "killed", ended.stack_left)


def _final_status(target: Target, run_id: str) -> str | None:
    return (read_record(target, run_id) or {}).get("final_status")
