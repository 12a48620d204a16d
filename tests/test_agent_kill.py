"""Kills and fencing, with the agent as a real subprocess.

- A kill (the CLI moves the state to `killed`) during training stops at the next step, saves and
  uploads a checkpoint, and cleans up; a kill in another phase ends the same way (the run is held
  in that phase with CHRONOS_PAUSE).
- A fenced agent (frozen with SIGSTOP while `kill --force` completes the run and a new run takes
  the lock, then resumed) writes nothing more and exits 3.
- An agent that does not hold the lock writes nothing at all.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from instance.agent.main import EXIT_KILLED, EXIT_NOT_HOLDER
from instance.protocol.artifacts import put_json
from instance.protocol.state import StateStore
from instance.protocol.status import Status
from tests.agent_fixtures import (
    get_json,
    instance_state,
    keys_under,
    launch,
    parquet_bytes,
    run_agent,
    run_config,
    start_agent,
    synthetic_frame,
    upload_dataset,
)
from tests.conftest import ENV

pytestmark = pytest.mark.slow
# Far more steps than a test waits for: the run only ends early, by the kill.
LONG = dict(num_steps=20000)


def wait_for(predicate, timeout=60.0, every=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


def _state(s3, bucket):
    return StateStore(s3, bucket, ENV).read()


def _in_training(s3, bucket):
    lease = _state(s3, bucket)
    return lease is not None and lease.status == Status.TRAINING and (lease.state.get("progress") or {}).get("step", 0) >= 1


@pytest.fixture
def data(s3, bucket):
    upload_dataset(s3, bucket, {"a.parquet": parquet_bytes(synthetic_frame(n_items=4, length=64))})


def _finish(proc, timeout=90):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_kill_during_training_saves_a_checkpoint_and_cleans_up(s3, bucket, aws, data, tmp_path):
    run = launch(s3, bucket, aws, ENV, run_config(**LONG))
    proc = start_agent(run, tmp_path)
    try:
        wait_for(lambda: _in_training(s3, bucket))
        assert StateStore(s3, bucket, ENV).request_kill(run.run_id, requested_by="test") is not None
        killed_at = time.monotonic()
        code, out = _finish(proc)
    finally:
        proc.kill()
    assert code == EXIT_KILLED, out[-3000:]
    assert time.monotonic() - killed_at < 30
    record = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert record["final_status"] == "killed" and record["reason"] == "killed_by_user"
    assert record["kill"]["requested_by"] == "test"
    assert 1 <= record["training"]["steps_done"] < LONG["num_steps"]
    assert record["phases"]["training"]["result"] == "killed"
    checkpoints = keys_under(s3, bucket, run.layout.checkpoints(run.run_id))
    step = record["training"]["steps_done"]
    assert f"{run.layout.checkpoints(run.run_id)}checkpoint-{step}/model.safetensors" in checkpoints
    assert record["artifacts"]["checkpoints_uri"].endswith("/checkpoints/")
    assert get_json(s3, bucket, run.layout.cleanup_status(run.run_id))["final_status"] == "killed"
    assert _state(s3, bucket) is None
    assert instance_state(aws, run.instance_id) == "terminated"
    assert not keys_under(s3, bucket, run.layout.models(run.run_id))


def _killed_in(phase: str, run, s3, bucket, tmp_path) -> tuple[int, str]:
    """The agent held in `phase`, killed there, run to its end: (exit code, output)."""
    proc = start_agent(run, tmp_path, CHRONOS_PAUSE=f"{phase}:60")
    try:
        wait_for(lambda: (lease := _state(s3, bucket)) is not None and lease.state.get("phase") == phase)
        StateStore(s3, bucket, ENV).request_kill(run.run_id, requested_by="test")
        return _finish(proc)
    finally:
        proc.kill()


@pytest.mark.parametrize("phase", [Status.INITIALIZATION, Status.DATA_SYNC, Status.FORECAST, Status.RESULTS_SYNC])
def test_kill_in_another_phase_ends_killed(phase, s3, bucket, aws, data, tmp_path):
    run = launch(s3, bucket, aws, ENV, run_config())
    code, out = _killed_in(phase.value, run, s3, bucket, tmp_path)
    assert code == EXIT_KILLED, out[-3000:]
    record = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert record["final_status"] == "killed" and record["phases"][phase.value]["result"] == "killed"
    assert get_json(s3, bucket, run.layout.cleanup_status(run.run_id))["final_status"] == "killed"
    assert _state(s3, bucket) is None
    assert instance_state(aws, run.instance_id) == "terminated"
    assert not keys_under(s3, bucket, run.layout.models(run.run_id))


def test_a_killed_forecast_run_ends_killed_and_leaves_nothing(s3, bucket, aws, data, tmp_path):
    """A forecast-only run (kind: forecast) killed while it forecasts: no forecast, lock released,
    machine ended."""
    from instance.model.basemodel import build_scratch
    from instance.protocol.layout import Layout

    build_scratch("tiny", 64, on="cpu").save_pretrained(tmp_path / "model")
    models = Layout(ENV).models("run-20261101-000000-aaaa")
    for f in (tmp_path / "model").iterdir():
        s3.upload_file(str(f), bucket, models + f.name)
    run = launch(s3, bucket, aws, ENV, run_config(base=f"s3://{bucket}/{models}") | {"kind": "forecast"})
    code, out = _killed_in("forecast", run, s3, bucket, tmp_path)
    assert code == EXIT_KILLED, out[-3000:]
    record = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert record["final_status"] == "killed" and record["phases"]["forecast"]["result"] == "killed"
    assert "training" not in record["phases"]
    assert _state(s3, bucket) is None and instance_state(aws, run.instance_id) == "terminated"
    assert not keys_under(s3, bucket, run.layout.forecasts(run.run_id))


def test_frozen_agent_fenced_by_force_kill_writes_nothing(s3, bucket, aws, data, tmp_path):
    run = launch(s3, bucket, aws, ENV, run_config(**LONG))
    proc = start_agent(run, tmp_path)
    try:
        wait_for(lambda: _in_training(s3, bucket))
        os.kill(proc.pid, signal.SIGSTOP)
        # What `kill --force` does for an agent that does not answer: complete the records itself,
        # release the lock, end the instance. Then a new run takes the lock.
        store = StateStore(s3, bucket, ENV)
        store.release(store.read())
        forced = {"run_id": run.run_id, "final_status": "killed", "reason": "killed_by_user", "by": "cli"}
        layout = run.layout
        etags = {
            layout.training_record(run.run_id): put_json(s3, bucket, layout.training_record(run.run_id), forced),
            layout.cleanup_status(run.run_id): put_json(s3, bucket, layout.cleanup_status(run.run_id), {**forced, "steps": []}),
        }
        newer = store.acquire("run-20991231-000000-beef", instance_id="i-newer")
        log_before = s3.get_object(Bucket=bucket, Key=layout.agent_log(run.run_id))["ETag"]
        os.kill(proc.pid, signal.SIGCONT)
        code, out = _finish(proc)
    finally:
        proc.kill()
    assert code == EXIT_NOT_HOLDER, out[-3000:]
    for key, etag in etags.items():
        assert s3.head_object(Bucket=bucket, Key=key)["ETag"] == etag, f"{key} was overwritten"
    assert store.read().etag == newer.etag  # the newer run's state is untouched
    assert not keys_under(s3, bucket, layout.models(run.run_id))
    assert not keys_under(s3, bucket, layout.model_metadata(run.run_id))
    assert s3.head_object(Bucket=bucket, Key=layout.agent_log(run.run_id))["ETag"] == log_before, \
        "a fenced agent uploaded its log: a zombie wrote to the bucket"
    assert "fenced" in out


def test_agent_without_the_lock_writes_nothing(s3, bucket, aws, data, tmp_path):
    run = launch(s3, bucket, aws, ENV, run_config())
    store = StateStore(s3, bucket, ENV)
    store.release(store.read())
    other = store.acquire("run-20991231-000000-cafe")
    before = _objects(s3, bucket)
    proc = run_agent(run, tmp_path, timeout=60)
    assert proc.returncode == EXIT_NOT_HOLDER
    assert _objects(s3, bucket) == before, "no object added, removed or rewritten"
    assert store.read().etag == other.etag
    # It ends its own machine through EC2 (never trusting a power-off to terminate it).
    assert instance_state(aws, run.instance_id) == "terminated"


def _objects(s3, bucket: str) -> dict[str, str]:
    """Every object in the bucket with its ETag: a rewrite changes it even when the key stays."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}
