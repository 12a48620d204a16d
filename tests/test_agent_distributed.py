"""Data-parallel runs through the agent: `instance.gpus: 2` on a 4-GPU type, run --local on this
CPU, so torchrun starts two ranks with gloo (not NCCL, CUDA placement or bf16: no GPU here).

- a run completes with world size 2, both ranks at the last step, and the model loads from S3;
- a kill mid-training stops both ranks at the same step within seconds, the run ends `killed`
  with a checkpoint uploaded;
- a rank that raises ends the run `failed` with that rank's message, within a minute.
The ranks drawing different batches is shown in test_distributed.py, closer to the ranks.
"""
from __future__ import annotations

import contextlib
import time

import pytest

from instance.agent.main import EXIT_FAILED, EXIT_KILLED
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
from tests.test_agent_kill import wait_for

pytestmark = pytest.mark.slow
TWO_RANKS = {"type": "g5.12xlarge", "gpus": 2, "spot": False, "max_runtime_minutes": 60}


def two_rank_config(**training):
    return run_config(**training) | {"instance": TWO_RANKS}


@pytest.fixture
def bucket(deployed):
    """Deployed, not bare: the person reading the model is the operator."""
    return deployed.bucket


@pytest.fixture
def data(s3, bucket):
    upload_dataset(s3, bucket, {"a.parquet": parquet_bytes(synthetic_frame(n_items=4, length=64))})


def _record(s3, bucket, run, name="training_record"):
    return get_json(s3, bucket, getattr(run.layout, name)(run.run_id))


def test_two_ranks_complete_and_the_model_loads(s3, bucket, aws, data, tmp_path, monkeypatch):
    """With a known covariate: the ranks train with it (what they show Chronos is in
    test_distributed.py), the model's metadata records it, the backtest scores it."""
    from chronos import Chronos2Pipeline

    run = launch(s3, bucket, aws, ENV, two_rank_config() | {"columns": {"known_covariates": ["temperature"]}})
    proc = run_agent(run, tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    record = _record(s3, bucket, run)
    training = record["training"]
    assert record["final_status"] == "completed"
    assert set(record["metrics"]) >= {"finetuned", "finetuned_no_covariates", "seasonal_naive"}
    assert training["world_size"] == 2 and training["steps_by_rank"] == [20, 20]
    assert training["batch_size_per_rank"] == 8 and training["device"] == "cpu" and training["precision"] == "fp32"
    assert training["samples_per_second"] > 0
    meta = _record(s3, bucket, run, "model_metadata")
    assert meta["columns"]["known_covariates"] == ["temperature"] and meta["columns"]["targets"] == ["target"]
    assert meta["trained_on"] == {
        "executor": "local", "instance_type": None, "gpu": None, "gpus": 0, "processes": 2,
        "precision": "fp32", "tf32": False, "batch_size": 16, "batch_size_per_rank": 8,
    }
    log = s3.get_object(Bucket=bucket, Key=run.layout.agent_log(run.run_id))["Body"].read().decode()
    assert "rank0 " in log and "rank1 " in log  # both ranks' lines reached agent.log
    # Chronos's own loader and boto3's chain, as a person loads it: the operator's keys.
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pipeline = Chronos2Pipeline.from_pretrained(record["artifacts"]["model_uri"])
    forecast = pipeline.predict_df(synthetic_frame(n_items=2, length=80, covariate=False), prediction_length=8)
    assert len(forecast) == 16
    assert _state(s3, bucket) is None and instance_state(aws, run.instance_id) == "terminated"


def _state(s3, bucket):
    return StateStore(s3, bucket, ENV).read()


def _training_step(s3, bucket) -> int:
    lease = _state(s3, bucket)
    if lease is None or lease.status != Status.TRAINING:
        return 0
    return (lease.state.get("progress") or {}).get("step", 0)


def _act_during_training(s3, bucket, run, tmp_path, act, **start) -> tuple[int, str, float]:
    """Start the agent, `act()` once rank 0 reported a step; (exit code, output, seconds after `act`)."""
    proc = start_agent(run, tmp_path, **start)
    try:
        wait_for(lambda: _training_step(s3, bucket) >= 1, timeout=120)
        act()
        acted_at = time.monotonic()
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, out, time.monotonic() - acted_at


def test_kill_stops_both_ranks_at_the_same_step(s3, bucket, aws, data, tmp_path):
    run = launch(s3, bucket, aws, ENV, two_rank_config(num_steps=20000))
    code, out, seconds = _act_during_training(
        s3, bucket, run, tmp_path, lambda: StateStore(s3, bucket, ENV).request_kill(run.run_id, requested_by="test"))
    assert code == EXIT_KILLED, out[-4000:]
    assert seconds < 30
    record = _record(s3, bucket, run)
    assert record["final_status"] == "killed" and record["reason"] == "killed_by_user"
    training = record["training"]
    step = training["steps_done"]
    assert 1 <= step < 20000 and training["steps_by_rank"] == [step, step]
    assert training["stopped_by"].startswith("KilledByUser")
    checkpoint = f"{run.layout.checkpoints(run.run_id)}checkpoint-{step}/model.safetensors"
    assert checkpoint in keys_under(s3, bucket, run.layout.checkpoints(run.run_id))
    assert _state(s3, bucket) is None


def test_a_rank_that_raises_fails_the_run_with_its_message(s3, bucket, aws, data, tmp_path):
    run = launch(s3, bucket, aws, ENV, two_rank_config(num_steps=20000))
    started = time.monotonic()
    proc = run_agent(run, tmp_path, timeout=180, CHRONOS_FAULT="training:rank1")
    assert proc.returncode == EXIT_FAILED, proc.stderr[-4000:]
    assert time.monotonic() - started < 120  # process starts included; not a collective timeout
    record = _record(s3, bucket, run)
    assert record["final_status"] == "failed" and record["reason"] == "RankFailed"
    error = record["error"]
    assert error["class"] == "RankFailed" and error["phase"] == "training"
    assert error["message"] == ("rank 1 of 2 failed: InjectedRankFault: "
                                "fault injected at training on rank 1 (CHRONOS_FAULT)")
    assert _state(s3, bucket) is None and instance_state(aws, run.instance_id) == "terminated"


@pytest.mark.reliability
def test_a_rank_killed_by_a_signal_fails_the_run_within_a_minute(s3, bucket, aws, data, tmp_path):
    """No Python exception, no report: the run still fails at once, saying what is known."""
    import os
    import signal

    run = launch(s3, bucket, aws, ENV, two_rank_config(num_steps=20000))
    work = tmp_path / "work"
    code, out, seconds = _act_during_training(
        s3, bucket, run, tmp_path, lambda: os.kill(int((work / "ranks" / "rank1.pid").read_text()), signal.SIGKILL),
        work_dir=work)
    assert code == EXIT_FAILED, out[-4000:]
    assert seconds < 60
    error = _record(s3, bucket, run)["error"]
    assert error["class"] == "RankFailed", error
    assert error["message"].startswith("rank 1 of 2 was killed by SIGKILL without an error of its own"), error
    assert _state(s3, bucket) is None and instance_state(aws, run.instance_id) == "terminated"


@pytest.mark.reliability
def test_ranks_left_behind_by_a_dead_agent_stop_on_their_own(s3, bucket, aws, data, tmp_path):
    """The agent SIGKILLed (nothing relays a stop any more): rank 0 sees it gone, every rank stops
    at the same step and exits, and torchrun with them."""
    import psutil

    run = launch(s3, bucket, aws, ENV, two_rank_config(num_steps=20000))
    proc = start_agent(run, tmp_path)
    left: list = []
    try:
        wait_for(lambda: _training_step(s3, bucket) >= 1, timeout=120)
        left = psutil.Process(proc.pid).children(recursive=True)  # torchrun and its two ranks
        assert len(left) >= 3
        proc.kill()  # not reaped until the end: the ranks must see a zombie as gone
        _, alive = psutil.wait_procs(left, timeout=60)
    finally:
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.kill()
        proc.communicate()
    assert not alive, [p.pid for p in alive]
