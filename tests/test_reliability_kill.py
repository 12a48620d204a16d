"""Kill matrix: `chronos-train kill --wait` against a real `--local` run held in each phase, and
`kill --force` against a frozen (SIGSTOPped) agent.

- Before cleanup, a kill ends the run `killed` by its own agent: training.json and
  cleanup_status.json say so, no model is uploaded, the lock is released, verify-cleanup exits 0,
  and `monitor --follow` on the ended run exits 5.
- In cleanup the outcome is already decided (cleanup is terminal): the kill changes nothing, the
  CLI says the stop came too late, and the run ends as it was going to (completed).
- `kill --force` on a frozen agent ends the run at once (the local executor SIGKILLs the process
  group, as terminating an instance would).
- Fencing: the frozen agent must never write once resumed. To keep it alive to resume, the forced
  kill is issued from a second machine: another CHRONOS_HOME, where the local executor has no pid
  file and can only mark the instance terminated in EC2, just as on AWS a terminate call may
  precede the machine's actual end. A new run then takes the lock, the old agent is resumed
  (SIGCONT), and the test checks that every record of the old run and the new run's lock are
  untouched while the zombie notices it was fenced and exits.

`make test` runs the results_sync kill and the fencing scenario; `make reliability` runs the rest.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from instance.protocol.aws import client
from instance.protocol.layout import Layout, bucket_name
from tests.cli_helpers import (RUN_PHASES, agent_pid, bucket_keys, cli_env, instances_by_state, launch_held,
                               launched_run_id, live_state, phase_params, pid_running, run_cli, wait_until)
from tests.test_cli_flows import local_config

pytestmark = pytest.mark.slow
BUCKET = bucket_name("dev", "123456789012", "us-east-1")
LAYOUT = Layout("dev")
@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def env(aws, home):
    return cli_env(aws.endpoint_url, home, CHRONOS_HEARTBEAT_SECONDS="1", CHRONOS_LOG_UPLOAD_SECONDS="1",
                   CHRONOS_KILL_GRACE_SECONDS="90")


@pytest.fixture
def s3(aws):
    return client("s3", aws)


def _json(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def held_run(env, s3, tmp_path: Path, phase: str, pause_s: int = 300, instance: dict | None = None) -> str:
    config = local_config(tmp_path, instance=instance, **({"num_steps": 100_000} if phase == "training" else {}))
    return launch_held(env, s3, BUCKET, config, phase, pause_s, cwd=tmp_path)


@pytest.mark.parametrize("phase", phase_params(RUN_PHASES[:-1], default=("results_sync",)))
def test_kill_wait_in_phase_ends_the_run_killed_and_clean(phase, env, home, s3, tmp_path):
    run_id = held_run(env, s3, tmp_path, phase)
    pid = agent_pid(home, run_id)

    killed = run_cli(env, "--local", "kill", run_id, "--wait", timeout=120)
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.strip() == f"run {run_id} stopped by its agent; final status: killed"
    wait_until(lambda: not pid_running(pid), timeout=30, what="the agent to exit")

    record = _json(s3, LAYOUT.training_record(run_id))
    assert (record["final_status"], record["reason"]) == ("killed", "killed_by_user"), record
    assert record["phases"][phase]["result"] == "killed" and record["kill"]["requested_by"]
    cleanup = _json(s3, LAYOUT.cleanup_status(run_id))
    assert (cleanup["by"], cleanup["final_status"]) == ("agent", "killed")
    assert {s["result"] for s in cleanup["steps"]} <= {"done", "not_found"}, cleanup["steps"]
    assert live_state(s3, BUCKET) is None
    assert not [k for k in bucket_keys(s3, BUCKET) if k.startswith(LAYOUT.models(run_id))]
    if phase == "training":  # stopped mid-fit: the checkpoint of the last step is kept
        assert [k for k in bucket_keys(s3, BUCKET) if k.startswith(LAYOUT.checkpoints(run_id))]
    assert run_cli(env, "--local", "monitor", run_id, "--follow").returncode == 5
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr


@pytest.mark.reliability
def test_kill_during_cleanup_comes_too_late_and_changes_nothing(env, home, s3, tmp_path):
    run_id = held_run(env, s3, tmp_path, "cleanup", pause_s=6)

    asked = run_cli(env, "--local", "kill", run_id)
    assert asked.returncode == 0, asked.stderr
    assert "already ending" in asked.stdout and "nothing to stop" in asked.stdout, asked.stdout
    assert live_state(s3, BUCKET)["status"] == "cleanup"  # the kill was not written

    waited = run_cli(env, "--local", "kill", run_id, "--wait", timeout=120)
    assert waited.returncode == 0, waited.stderr
    assert "final status: completed" in waited.stdout and "too late" in waited.stdout, waited.stdout
    record = _json(s3, LAYOUT.training_record(run_id))
    assert record["final_status"] == "completed" and "kill" not in record
    assert _json(s3, LAYOUT.cleanup_status(run_id))["final_status"] == "completed"
    assert [k for k in bucket_keys(s3, BUCKET) if k.startswith(LAYOUT.models(run_id))]
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0


def freeze(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
               timeout=10, what=f"agent {pid} to stop")


@pytest.mark.reliability
def test_force_kill_of_a_frozen_agent_ends_it_at_once(env, home, aws, s3, tmp_path):
    run_id = held_run(env, s3, tmp_path, "training")
    pid = agent_pid(home, run_id)
    freeze(pid)

    forced = run_cli(env, "--local", "kill", run_id, "--force", timeout=120)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.strip() == f"run {run_id} force-terminated; final status: killed"
    assert not pid_running(pid)  # SIGKILL reaches a stopped process
    record = _json(s3, LAYOUT.training_record(run_id))
    assert (record["final_status"], record["reason"], record["recorded_by"]) == ("killed", "killed_by_user", "cli")
    assert _json(s3, LAYOUT.cleanup_status(run_id))["by"] == "cli"
    assert live_state(s3, BUCKET) is None
    assert set(instances_by_state(client("ec2", aws)).values()) == {"terminated"}
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0


def test_frozen_agent_resumed_after_a_forced_kill_writes_nothing(env, home, aws, s3, tmp_path):
    # One machine (it leaves its group as it boots): the group's end does not take it with it,
    # as on AWS a detached instance outlives its group; the frozen agent lives on to be fenced.
    old = held_run(env, s3, tmp_path, "training", instance={"max_interruptions": 0})
    pid = agent_pid(home, old)
    freeze(pid)
    try:
        elsewhere = cli_env(aws.endpoint_url, tmp_path / "laptop-2")  # a second machine: no pid file there
        forced = run_cli(elsewhere, "--local", "kill", old, "--force", timeout=120)
        assert forced.returncode == 0, forced.stderr
        assert forced.stdout.strip() == f"run {old} force-terminated; final status: killed"
        assert pid_running(pid)  # still frozen, and still holding what it meant to write

        old_keys = [LAYOUT.training_record(old), LAYOUT.cleanup_status(old), LAYOUT.agent_log(old)]
        etags = {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in old_keys}
        assert _json(s3, LAYOUT.training_record(old))["final_status"] == "killed"
        new = launched_run_id(run_cli({**env, "CHRONOS_PAUSE": "initialization:300"}, "--local", "launch",
                                      local_config(tmp_path / "new"), cwd=tmp_path))
        wait_until(lambda: (live_state(s3, BUCKET) or {}).get("agent"), timeout=120, what="the new agent")

        os.kill(pid, signal.SIGCONT)
        wait_until(lambda: not pid_running(pid), timeout=60, what="the resumed agent to give up")
    finally:
        if pid_running(pid):
            os.kill(pid, signal.SIGKILL)

    assert {k: s3.head_object(Bucket=BUCKET, Key=k)["ETag"] for k in old_keys} == etags, "a zombie write landed"
    assert not [k for k in bucket_keys(s3, BUCKET) if k.startswith((LAYOUT.models(old), LAYOUT.model_metadata(old)))]
    state = live_state(s3, BUCKET)
    assert state["run_id"] == new and state["status"] == "initialization"
    assert [h["status"] for h in state["history"]] == ["initialization"]
    said = (home / "work" / old / "agent.stdout").read_text()
    assert "fenced" in said and "agent exits with 3" in said, said[-2000:]

    killed = run_cli(env, "--local", "kill", new, "--wait", timeout=120)
    assert killed.returncode == 0 and "final status: killed" in killed.stdout, killed.stdout + killed.stderr
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
