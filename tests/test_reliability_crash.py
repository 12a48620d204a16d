"""Crash matrix: the agent of a real `chronos-train --local launch` is SIGKILLed in each phase.

A SIGKILLed agent is a machine that died without ending itself through EC2: locally the group's
player powers it off, which on the worse reading the sandbox plays leaves it `stopped` (its
volume bills; automation/sandbox/poweroff.py). (On EC2 the bootstrap would still end it through
EC2: it leaves the group and terminates the machine when the agent exits with a code it never
gives.) The run has one machine (max_interruptions 0), so nothing replaces it, and a stopped
machine runs nothing and is started by nobody: no clock is involved, and no knob shortens the
stale limit. What the user must find, per phase, at once:
- `verify-cleanup` exits 6, names the run and says its machine is stopped with no replacement
  coming, and lists the stopped machine itself;
- `monitor RUN` says the run is lost;
- `verify-cleanup --fix` exits 0, releases the lock and closes the run as `failed`, reason `lost`,
  with a cleanup_status.json that says the CLI did it; `runs` shows it so;
- a second `verify-cleanup` exits 0, and a new launch runs to completion.
The time from the kill to the lock's release through `--fix` is printed (docs/reliability.md).
In cleanup the agent is held (CHRONOS_PAUSE) after the state moved to `cleanup` and before the
final record and the lock release: the run's outcome was not yet written, so `lost` is the honest
record there too, even though results_sync had already uploaded the model (asserted).
Once the lock is released only the machine can be left: the last case SIGKILLs the agent in the
2-second pause before it retries a failed termination (CHRONOS_FAULT=cleanup:instance), after it
released the lock and wrote its final record; the machine, out of its group, powers off and stays
stopped, `verify-cleanup` finds it (exit 6), `--fix` terminates it, and the run reads `completed`.

The agent is held in the phase with CHRONOS_PAUSE, except in training, where it is SIGKILLed in
the middle of Chronos2Pipeline.fit (after its first reported step). `make test` runs the training
case; `make reliability` runs all five.
"""
from __future__ import annotations

import json
import os
import signal
import time

import pytest

from instance.protocol.aws import client
from instance.protocol.layout import Layout, bucket_name
from tests.cli_helpers import (
    RUN_PHASES,
    agent_pid,
    bucket_keys,
    cli_env,
    launch_held,
    launched_run_id,
    live_state,
    phase_params,
    pid_running,
    run_cli,
    wait_until,
)
from tests.test_cli_flows import local_config

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
LAYOUT = Layout("dev")


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def env(aws, home):
    return cli_env(aws.endpoint_url, home, CHRONOS_HEARTBEAT_SECONDS="1", CHRONOS_LOG_UPLOAD_SECONDS="1")


def sigkill_agent(env, home, s3, tmp_path, phase: str) -> tuple[str, float]:
    """Launch a run, SIGKILL its agent once it is in `phase`; returns the run id and when."""
    # One machine: with replacements allowed, the group would bring the next machine and the run
    # would go on (tests/test_spot.py); here the machine's death must leave the run to be found.
    config = local_config(tmp_path, instance={"max_interruptions": 0},
                          **({"num_steps": 100_000} if phase == "training" else {}))
    run_id = launch_held(env, s3, BUCKET, config, phase, cwd=tmp_path)
    pid = agent_pid(home, run_id)
    assert live_state(s3, BUCKET)["agent"]["pid"] == pid and pid_running(pid)  # the state names what we kill
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: not pid_running(pid), timeout=10, what=f"agent {pid} to die")
    return run_id, killed_at


@pytest.mark.slow
@pytest.mark.parametrize("phase", phase_params(RUN_PHASES, default=("training",)))
def test_sigkilled_agent_is_found_fixed_and_the_next_run_completes(phase, env, home, aws, tmp_path):
    s3 = client("s3", aws)
    run_id, killed_at = sigkill_agent(env, home, s3, tmp_path, phase)

    found = run_cli(env, "--local", "verify-cleanup")
    assert found.returncode == 6, found.stdout + found.stderr
    assert f"LEFT: stale_lock {LAYOUT.state} (run {run_id} ({phase})" in found.stdout, found.stdout
    assert "is stopped and no replacement is coming" in found.stdout, found.stdout
    assert found.stdout.splitlines()[-1] == "2 leftover(s) that bill; run with --fix", found.stdout
    doc = json.loads(run_cli(env, "--local", "verify-cleanup", "--json").stdout)
    # The dead machine powered off: stopped, its volume billing, so it is a leftover too.
    assert [(f["kind"], f["run_id"]) for f in doc["findings"]] == [("stale_lock", run_id), ("instance", run_id)], doc
    assert "stopped" in doc["findings"][1]["detail"] and doc["starting"] == []
    lost = json.loads(run_cli(env, "--local", "monitor", run_id, "--json").stdout)
    assert (lost["active"], lost["lost"], lost["machine"]) == (True, True, "gone"), lost

    fixed = run_cli(env, "--local", "verify-cleanup", "--fix")
    released_after = time.monotonic() - killed_at
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"fixed: stale_lock {LAYOUT.state}" in fixed.stdout and fixed.stdout.rstrip().endswith("clean")
    assert f"fixed: instance {doc['findings'][1]['id']}" in fixed.stdout
    assert live_state(s3, BUCKET) is None  # the lock is released
    print(f"\n{phase}: kill -> lock released through verify-cleanup --fix in {released_after:.1f} s")

    record = json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.training_record(run_id))["Body"].read())
    assert (record["final_status"], record["reason"]) == ("failed", "lost"), record
    cleanup = json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.cleanup_status(run_id))["Body"].read())
    assert cleanup["by"] == "cli" and {"resource": "state file", "result": "done"}.items() <= \
        next(s for s in cleanup["steps"] if s["resource"] == "state file").items(), cleanup
    model_keys = [k for k in bucket_keys(s3, BUCKET) if k.startswith(LAYOUT.models(run_id))]
    assert bool(model_keys) == (phase == "cleanup"), model_keys  # only a run past results_sync has one
    shown = json.loads(run_cli(env, "--local", "monitor", run_id, "--json").stdout)
    assert (shown["final_status"], shown["reason"], shown["active"]) == ("failed", "lost", False)
    listed = json.loads(run_cli(env, "--local", "runs", "--json").stdout)
    mine = [r for r in listed if r["run_id"] == run_id]
    assert [(r["status"], r["reason"]) for r in mine] == [("failed", "lost")], mine

    assert run_cli(env, "--local", "verify-cleanup").returncode == 0  # idempotent: nothing left
    started = time.monotonic()
    again = run_cli(env, "--local", "launch", local_config(tmp_path / "again"), "--follow", "--no-download",
                    cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    assert time.monotonic() - started < 240
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0


@pytest.mark.slow
@pytest.mark.reliability
def test_sigkill_after_the_lock_release_leaves_nothing_to_fix(env, home, aws, tmp_path):
    s3 = client("s3", aws)
    faulty = {**env, "CHRONOS_FAULT": "cleanup:instance"}  # the terminate step fails once: a retry in 2 s
    run_id = launched_run_id(run_cli(faulty, "--local", "launch", local_config(tmp_path), cwd=tmp_path))
    pid = agent_pid(home, run_id)

    def between_release_and_retry():
        if live_state(s3, BUCKET) is not None:
            return None
        try:
            doc = json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.cleanup_status(run_id))["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None
        return doc if any(s["result"] == "error" for s in doc["steps"]) else None

    first = wait_until(between_release_and_retry, timeout=180, every=0.05, what="the cleanup retry window")
    assert pid_running(pid), "the agent finished its retry before the test could kill it"
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_running(pid), timeout=10, what=f"agent {pid} to die")

    record = json.loads(s3.get_object(Bucket=BUCKET, Key=LAYOUT.training_record(run_id))["Body"].read())
    assert record["final_status"] == "completed", record  # written before the lock was released
    assert [s["resource"] for s in first["steps"] if s["result"] == "error"][0].startswith("instance ")
    # Out of its group, the machine powered off without a termination: stopped, and found.
    left = run_cli(env, "--local", "verify-cleanup")
    assert left.returncode == 6 and "stopped with no active run" in left.stdout, left.stdout + left.stderr
    assert run_cli(env, "--local", "verify-cleanup", "--fix").stdout.count("fixed: instance") == 1
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    again = run_cli(env, "--local", "launch", local_config(tmp_path / "again"), "--follow", "--no-download",
                    cwd=tmp_path, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
