"""Whole runs through the real CLI (subprocesses) against moto server: launch → follow →
completed; kill during training; the lock while a run is active; verify-cleanup after each."""
from __future__ import annotations

import json
import math
import time

import pytest
import yaml

from instance.protocol.aws import client
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.cli_helpers import cli_env, run_cli, start_cli

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
pytestmark = pytest.mark.slow


@pytest.fixture
def env(aws, tmp_path):
    return cli_env(aws.endpoint_url, tmp_path / "home", CHRONOS_HEARTBEAT_SECONDS="1", CHRONOS_KILL_GRACE_SECONDS="60")


def local_config(tmp_path, instance: dict | None = None, **training) -> str:
    data = write_parquet(tmp_path / "data" / "train.parquet", synthetic_frame(n_items=6, length=96))
    path = tmp_path / "run.yaml"
    doc = run_config(dataset=str(data), **training)
    doc["instance"].update(instance or {})
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def wait_for_status(env, run_id: str, wanted: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = run_cli(env, "--local", "monitor", run_id, "--json")
        if result.returncode == 0:
            doc = json.loads(result.stdout)
            if doc["status"] == wanted:
                return doc
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} never reached {wanted}")


def test_launch_follow_completes_then_runs_shows_metrics(env, aws, tmp_path):
    result = run_cli(env, "--local", "launch", local_config(tmp_path), "--follow", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.stdout.splitlines()[0]
    assert "estimated" not in result.stdout and "local run: $0.00" in result.stderr
    assert "fine-tuned" in result.stdout and "seasonal naive" in result.stdout

    runs = json.loads(run_cli(env, "--local", "runs", "--json").stdout)
    latest = runs[0]
    assert latest["run_id"] == run_id and latest["final_status"] == "completed" and not latest["active"]
    for name in ("finetuned", "seasonal_naive"):
        assert all(math.isfinite(v) for v in latest["metrics"][name].values())
    assert (tmp_path / "runs" / run_id / "model" / "config.json").exists()

    logs = run_cli(env, "--local", "logs", run_id)
    assert logs.returncode == 0 and "training" in logs.stdout
    # Following a run that has ended returns at once, with its outcome's exit code.
    followed = run_cli(env, "--local", "logs", run_id, "--follow", timeout=30)
    assert followed.returncode == 0 and followed.stdout == logs.stdout
    assert run_cli(env, "--local", "monitor", run_id, "--follow", "--no-download", timeout=30).returncode == 0
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    s3 = client("s3", aws)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=Layout("dev").state)


def test_kill_during_training_follower_exits_5_and_lock_is_held_meanwhile(env, aws, tmp_path):
    follower = start_cli(env, "--local", "launch", local_config(tmp_path, num_steps=100_000), "--follow",
                         cwd=tmp_path)
    try:
        run_id = follower.stdout.readline().strip()
        assert run_id.startswith("run-"), follower.stderr.read() if follower.poll() is not None else run_id
        wait_for_status(env, run_id, "training")

        second = run_cli(env, "--local", "launch", local_config(tmp_path / "other"))
        assert second.returncode == 3 and run_id in second.stderr

        killed = run_cli(env, "--local", "kill", run_id, "--wait")
        assert killed.returncode == 0, killed.stderr
        assert follower.wait(timeout=120) == 5
    finally:
        if follower.poll() is None:
            follower.kill()
    s3 = client("s3", aws)
    cleanup = json.loads(s3.get_object(Bucket=BUCKET, Key=Layout("dev").cleanup_status(run_id))["Body"].read())
    assert cleanup["steps"]
    record = json.loads(s3.get_object(Bucket=BUCKET, Key=Layout("dev").training_record(run_id))["Body"].read())
    assert record["final_status"] == "killed"
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0


def test_a_run_whose_machine_came_late_stops_at_its_max_runtime_counted_from_the_launch(env, aws, tmp_path):
    """No override of the deadline: the agent's soft deadline comes from the lock (its
    deadline_at: the lock's creation on S3's clock plus max_runtime_minutes), less the margin to
    save and clean up, as a machine that the group found only after a long wait for capacity
    meets it. The run ends failed / max_runtime_exceeded as a user sees it, and nothing is left."""
    import datetime

    from instance.protocol.state import StateStore
    from instance.protocol.timeutil import iso, utcnow

    slow_boot = {**env, "CHRONOS_SANDBOX_BOOT_SECONDS": "8"}
    config = local_config(tmp_path, {"max_runtime_minutes": 10}, num_steps=100_000)
    follower = start_cli(slow_boot, "--local", "launch", config, "--follow", cwd=tmp_path)
    store = StateStore(client("s3", aws), BUCKET, "dev")
    try:
        lease = None
        deadline = time.monotonic() + 60
        while lease is None and time.monotonic() < deadline:
            lease = store.read()
            time.sleep(0.05)
        assert lease is not None, "the launch never took the lock"
        # The lock was taken 7 min 10 s before this machine boots (the group waited for
        # capacity): 10 min - 430 s - the 150 s margin leaves the agent about 20 s.
        began = utcnow() - datetime.timedelta(seconds=430)
        store.update(lease, lambda s: {**s, "started_at": iso(began),
                                       "deadline_at": iso(began + datetime.timedelta(minutes=10))},
                     pin_status=False, heartbeat=False)
        code = follower.wait(timeout=240)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert code == 4, follower.stderr.read()[-3000:]
    run_id = follower.stdout.read().splitlines()[0].strip()
    record = json.loads(client("s3", aws).get_object(Bucket=BUCKET, Key=Layout("dev").final_record(run_id))["Body"].read())
    assert (record["final_status"], record["reason"]) == ("failed", "max_runtime_exceeded"), record.get("error")
    shown = run_cli(env, "--local", "monitor", record["run_id"])
    assert "max_runtime_exceeded" in shown.stdout, shown.stdout
    assert run_cli(env, "--local", "verify-cleanup").returncode == 0
