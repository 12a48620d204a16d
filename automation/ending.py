"""Ending a run from the CLI: kill (ask, wait, force) and the forced end that verify-cleanup
also uses for a stale lock. The agent normally ends its own run; this is the fallback.
"""
from __future__ import annotations

import getpass
import os
import socket
import time
from dataclasses import dataclass

from instance.protocol.ec2 import instance_state as ec2_instance_state
from instance.protocol.state import Fenced, LockError
from instance.protocol.status import Status

from .context import Target
from .errors import NoSuchRun
from .runs import record_end_from_cli, step

GONE_STATES = ("shutting-down", "terminated")


def kill_grace_seconds() -> float:
    return float(os.environ.get("CHRONOS_KILL_GRACE_SECONDS", "120"))


@dataclass(frozen=True)
class KillResult:
    run_id: str
    requested: bool
    forced: bool
    ended: bool
    final_status: str | None


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


def force_end(target: Target, executor, run_id: str, final_status: str, reason: str) -> list[dict]:
    """Terminate the run's machine, close its records and release its lock. Idempotent."""
    store = target.state_store()
    lease = store.read()
    state = dict(lease.state) if lease and lease.run_id == run_id else {}
    instance_id = state.get("instance_id") or _instance_by_tag(target, run_id)
    steps = []
    executor.terminate(run_id, instance_id)
    if instance_id:
        seen = confirm_terminated(target, instance_id)
        steps.append(step(f"instance {instance_id}", "terminate",
                          "done" if seen == "terminated" else ("not_found" if seen == "not_found" else "error"),
                          f"EC2 reports {seen}"))
    if lease and lease.run_id == run_id:
        try:
            if not lease.status.is_terminal:
                lease = store.move(lease, Status(final_status), reason=reason)
            if lease.status is not Status.CLEANUP:
                lease = store.move(lease, Status.CLEANUP)
            store.release(lease)
            steps.append(step("state file", "delete", "done"))
        except Fenced as exc:
            steps.append(step("state file", "delete", "not_found", str(exc)))
    else:
        steps.append(step("state file", "delete", "not_found", "already released"))
    executor.finalize(run_id)
    steps.append(step(f"{executor.name} run resources", "finalize", "done"))
    record_end_from_cli(target, run_id, final_status, reason, state, steps)
    return steps


def _instance_by_tag(target: Target, run_id: str) -> str | None:
    resp = target.ec2.describe_instances(Filters=[
        {"Name": "tag:RunId", "Values": [run_id]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
    ])
    found = [i["InstanceId"] for r in resp["Reservations"] for i in r["Instances"]]
    return found[0] if found else None


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
    if force:
        force_end(target, executor, run_id, "killed", "killed_by_user")
        return KillResult(run_id, requested, True, True, "killed")
    if not wait:
        return KillResult(run_id, requested, False, False, None)
    deadline = time.monotonic() + kill_grace_seconds()
    while time.monotonic() < deadline:
        current = store.read()
        if current is None or current.run_id != run_id:
            executor.finalize(run_id)
            return KillResult(run_id, requested, False, True, _final_status(target, run_id))
        time.sleep(0.5 if target.local else 3)
    force_end(target, executor, run_id, "killed", "killed_by_user")
    return KillResult(run_id, requested, True, True, "killed")


def _final_status(target: Target, run_id: str) -> str | None:
    from instance.protocol.artifacts import get_json

    record = get_json(target.s3, target.bucket, target.layout.training_record(run_id)) or {}
    return record.get("final_status")
