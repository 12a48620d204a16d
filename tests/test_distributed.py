"""The ranks of a data-parallel run (instance/model/distributed.py), closer than the agent tests:
the rank channel's files, and two real ranks under torchrun (gloo, CPU) that draw different
batches, agree on one stopping step, and leave every report to rank 0."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from instance.model.distributed import RankChannel, RankError, RankJob
from instance.model.training import TrainingOutcome, TrainingSettings
from tests.agent_fixtures import ROOT, synthetic_frame, write_parquet


def _job(tmp_path: Path, **kw) -> RankJob:
    settings = TrainingSettings(prediction_length=8, context_length=64, num_steps=6, batch_size=16, learning_rate=1e-3)
    fields = dict(files=[str(tmp_path / "a.parquet")], settings=asdict(settings), base_dir=str(tmp_path / "base"),
                  output_dir=str(tmp_path / "train"), staging_dir=str(tmp_path / "staging"), agent_pid=os.getpid(),
                  world_size=2)
    return RankJob(**{**fields, **kw})


def test_channel_reads_only_complete_event_lines(tmp_path):
    channel = RankChannel(tmp_path)
    channel.emit("progress", progress={"step": 1})
    with open(tmp_path / "events.jsonl", "ab") as fh:
        fh.write(b'{"event": "checkpoint", "pa')  # a line being written
    assert [e["event"] for e in channel.new_events()] == ["progress"]
    with open(tmp_path / "events.jsonl", "ab") as fh:
        fh.write(b'th": "x", "step": 2}\n')
    channel.emit("outcome", outcome={})
    assert [e["event"] for e in channel.new_events()] == ["checkpoint", "outcome"]
    assert list(channel.new_events()) == []


def test_channel_stop_is_written_once_and_errors_come_earliest_first(tmp_path):
    channel = RankChannel(tmp_path)
    assert channel.stop_reason() is None
    channel.request_stop("KilledByUser: killed")
    channel.request_stop("MaxRuntimeExceeded: later")
    assert channel.stop_reason() == "KilledByUser: killed"
    for rank, at in ((0, 20.0), (1, 10.0)):
        err = RankError(rank, "RuntimeError", f"from {rank}", "tb", at)
        (tmp_path / f"error-rank{rank}.json").write_text(json.dumps(asdict(err)))
    (tmp_path / "error-rank2.json").write_text('{"rank": 2, "err')  # cut short by the kill that followed
    assert [e.rank for e in channel.errors()] == [1, 0]
    assert channel.errors()[0].sentence(3) == "rank 1 of 3 failed: RuntimeError: from 1"
    channel.write_job(_job(tmp_path))
    assert channel.read_job() == _job(tmp_path) and channel.read_job().training.batch_size == 16


def test_root_cause_is_the_first_rank_to_fail():
    from instance.agent.torchrun import RankExit, root_cause

    raised = RankError(1, "ValueError", "bad batch", "tb", 100.2)
    echo = RankError(0, "RuntimeError", "Connection closed by peer", "tb", 100.4)  # gloo, waiting for rank 1
    ended = RankExit(0, -15, "SIGTERM", 101.0)  # torchrun ending the others
    assert root_cause([raised, echo], [RankExit(1, 1, None, 100.0), ended], 2) == "rank 1 of 2 failed: ValueError: bad batch"
    oom = RankExit(1, -9, "SIGKILL", 101.0)  # noticed within 0.1 s, stamped in whole seconds
    assert root_cause([echo], [oom, ended], 2).startswith("rank 1 of 2 was killed by SIGKILL without an error of its own")
    late = RankExit(0, -9, "SIGKILL", 131.0)  # a rank that ignored torchrun's SIGTERM for 30 s
    assert root_cause([raised], [late], 2) == "rank 1 of 2 failed: ValueError: bad batch"
    assert root_cause([], [ended], 2) is None


def test_a_dead_agent_reads_as_gone_before_it_is_reaped():
    from instance.protocol.processes import pid_alive

    child = subprocess.Popen(["sleep", "30"])
    assert pid_alive(child.pid)
    child.kill()
    deadline = time.monotonic() + 5
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child.pid)  # a zombie still answers signal 0
    child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid()) and not pid_alive(None)


def test_outcome_travels_as_json(tmp_path):
    out = TrainingOutcome(pipeline=object(), model_dir=tmp_path / "m", steps_done=3, total_steps=9, final_loss=0.5,
                          samples_per_second=10.0, train_seconds=1.0, stopped_by="x", checkpoints=[tmp_path / "c"],
                          precision="bf16", tf32=True, device="cuda", world_size=4, batch_size_per_rank=64,
                          steps_by_rank=[3, 3, 3, 3])
    back = TrainingOutcome.from_json(json.loads(json.dumps(out.to_json())))
    assert back.pipeline is None and back.summary() == out.summary() and back.checkpoints == out.checkpoints
    assert back.bf16 and back.model_dir == out.model_dir


@pytest.mark.slow
def test_two_ranks_draw_different_batches_and_stop_at_the_same_step(tmp_path):
    from instance.model.basemodel import build_scratch

    write_parquet(tmp_path / "a.parquet", synthetic_frame(n_items=4, length=64))
    build_scratch("tiny", 64, on="cpu").save_pretrained(tmp_path / "base")
    channel = RankChannel(tmp_path / "ranks")
    channel.write_job(_job(tmp_path, settings=asdict(TrainingSettings(  # LoRA: merged on each rank, saved by rank 0
        prediction_length=8, context_length=64, num_steps=500, batch_size=16, learning_rate=1e-3, finetune_mode="lora"))))
    channel.request_stop("test: stop at once")  # rank 0 wishes it at step 1: every rank stops at step 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "_rank_probe.py"), str(channel.job_path)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert time.monotonic() - started < 200

    drawn = [json.loads((channel.folder / f"batches-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(drawn[0]) >= 2 and len(drawn[1]) >= 2
    assert all(a != b for a, b in zip(drawn[0], drawn[1])), drawn  # seed + rank: two streams, not one twice

    events = list(channel.new_events())
    outcomes = [e["outcome"] for e in events if e["event"] == "outcome"]
    assert len(outcomes) == 1  # rank 0 alone reports
    outcome = TrainingOutcome.from_json(outcomes[0])
    assert outcome.steps_done == 2 and outcome.steps_by_rank == [2, 2]
    assert outcome.stopped_by == "test: stop at once" and outcome.world_size == 2 and outcome.batch_size_per_rank == 8
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [2]
    assert (Path(checkpoints[0]["path"]) / "adapter_model.safetensors").exists()  # staged by rank 0 after the barrier
    assert outcome.model_dir.name == "merged" and (outcome.model_dir / "model.safetensors").exists()
    assert channel.errors() == [] and "rank1 " in proc.stderr and "rank0 " in proc.stderr


@pytest.mark.slow
def test_ranks_show_the_model_the_known_covariate_over_each_training_horizon(tmp_path):
    """The roles travel in the job: on every rank, every series of every batch has its known
    covariate's horizon values revealed (prediction_length finite values each) and nothing else."""
    from instance.model.basemodel import build_scratch
    from instance.protocol.columns import ColumnNames

    frame = synthetic_frame(n_items=4, length=64)  # temperature: here a known covariate
    frame["store"] = frame["item_id"].str[-1].map({"0": "north", "1": "south", "2": "north", "3": "east"})
    write_parquet(tmp_path / "a.parquet", frame)
    build_scratch("tiny", 64, on="cpu").save_pretrained(tmp_path / "base")
    channel = RankChannel(tmp_path / "ranks")
    channel.write_job(_job(tmp_path, columns=ColumnNames(known_covariates=("temperature",)).to_json()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "_rank_probe.py"), str(channel.job_path)]
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=240,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        futures = json.loads((channel.folder / f"futures-rank{rank}.json").read_text())
        assert len(futures) >= 6  # one batch a step
        assert all(finite == series * 8 for finite, series in futures), futures
    outcome = TrainingOutcome.from_json(next(e["outcome"] for e in channel.new_events() if e["event"] == "outcome"))
    assert outcome.steps_done == 6 and outcome.steps_by_rank == [6, 6]
