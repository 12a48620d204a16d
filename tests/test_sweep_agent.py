"""A sweep through the agent as a real subprocess against moto server: scratch:tiny, 20 steps a trial.

- two trials one after the other: the better by the backtest WQL is the run's model and forecast,
  the other's settings, scores and time are in training.json, and a trial scores what a separate
  run with its settings scores (same seeds);
- two trials side by side in two CPU processes;
- a trial whose training loss trails the median stops early and is recorded as pruned;
- a kill mid-sweep stops every trial at once and ends the run killed.
"""
from __future__ import annotations

import json

import pytest

from instance.agent.main import EXIT_KILLED
from instance.protocol.aws import client
from instance.protocol.processes import pid_alive
from instance.protocol.state import StateStore
from tests.agent_fixtures import (
    get_json,
    keys_under,
    launch,
    parquet_bytes,
    run_agent,
    run_config,
    seeded_sandbox,
    start_agent,
    synthetic_frame,
)
from tests.conftest import ENV
from tests.test_agent_kill import wait_for

pytestmark = pytest.mark.slow
GRID = {"grid": {"learning_rate": [1.0e-2, 1.0e-5]}, "keep_models": True}
FOUR_PROCESSES = {"type": "g5.12xlarge", "gpus": 2, "spot": False, "max_runtime_minutes": 60}


def sweep_config(sweep=GRID, instance=None, **training):
    doc = run_config(**training) | {"sweep": sweep}
    if instance:
        doc["instance"] = instance
    return doc


@pytest.fixture(scope="module")
def sandbox(moto_endpoint):
    seeded = seeded_sandbox(moto_endpoint, {"a.parquet": parquet_bytes(synthetic_frame(n_items=4, length=64))})
    return dict(aws=seeded.aws, s3=seeded.s3, bucket=seeded.bucket)


def _run(sandbox, tmp, config, **env):
    run = launch(sandbox["s3"], sandbox["bucket"], sandbox["aws"], ENV, config)
    proc = run_agent(run, tmp, timeout=300, **env)
    return run, proc, get_json(sandbox["s3"], sandbox["bucket"], run.layout.training_record(run.run_id))


@pytest.fixture(scope="module")
def swept(sandbox, tmp_path_factory):
    return _run(sandbox, tmp_path_factory.mktemp("sweep"), sweep_config())


def test_the_better_trial_is_the_run_s_model(swept, sandbox):
    run, proc, doc = swept
    s3, bucket = sandbox["s3"], sandbox["bucket"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert doc["final_status"] == "completed"
    sweep = doc["sweep"]
    trials = sweep["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"] and sweep["left"] == 0 and sweep["done"] == 2
    assert {t["params"]["learning_rate"] for t in trials} == {1.0e-2, 1.0e-5}
    best = min(trials, key=lambda t: t["value"])
    assert sweep["best"]["trial"] == best["number"] and best["value"] != max(t["value"] for t in trials)
    assert doc["training"]["sweep_trial"] == best["number"]
    assert doc["metrics"] == best["metrics"] and best["value"] == best["metrics"]["finetuned"]["wql"]
    for t in trials:
        assert t["seconds"] > 0 and t["steps_done"] == 20 and t["pruned"] is False
        assert 0 < t["cost_share"] < 1 and t["cost_usd"] == 0.0  # a local run costs nothing
    # The run's model is the winner's, byte for byte; the model's metadata says its settings.
    model = s3.get_object(Bucket=bucket, Key=run.layout.models(run.run_id) + "model.safetensors")["Body"].read()
    kept = run.layout.sweep_trial(run.run_id, best["number"]) + "model/model.safetensors"
    assert model == s3.get_object(Bucket=bucket, Key=kept)["Body"].read()
    meta = get_json(s3, bucket, run.layout.model_metadata(run.run_id))
    assert meta["config"]["training"]["learning_rate"] == best["params"]["learning_rate"]
    assert meta["metrics"] == best["metrics"]
    # Its forecast is the winner's too (the forecast phase forecasts with the run's model).
    info = get_json(s3, bucket, run.layout.forecast_info(run.run_id))
    assert info["model"].endswith(f"{run.run_id}/models/") and info["series"] == 4
    summary = get_json(s3, bucket, run.layout.evaluation(run.run_id) + "summary.json")
    assert summary["metrics"] == best["metrics"]
    journal = run.layout.sweep_journal(run.run_id)
    assert journal in keys_under(s3, bucket, run.layout.sweep(run.run_id))


def test_a_trial_scores_what_a_separate_run_with_its_settings_scores(swept, sandbox, tmp_path):
    _, _, doc = swept
    trial = doc["sweep"]["trials"][0]
    _, proc, alone = _run(sandbox, tmp_path, run_config(learning_rate=trial["params"]["learning_rate"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert alone["metrics"] == trial["metrics"]


def test_two_trials_side_by_side_in_two_processes(sandbox, swept, tmp_path):
    run, proc, doc = _run(sandbox, tmp_path, sweep_config(
        {"grid": {"learning_rate": [1.0e-2, 1.0e-3]}, "parallel": 2}, FOUR_PROCESSES))
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = doc["sweep"]
    assert sweep["parallel"] == 2 and [t["state"] for t in sweep["trials"]] == ["complete", "complete"]
    log = sandbox["s3"].get_object(Bucket=sandbox["bucket"], Key=run.layout.agent_log(run.run_id))["Body"].read().decode()
    assert "(GPU/process 0)" in log and "(GPU/process 1)" in log
    # Side by side: the second started before the first ended.
    starts = [line for line in log.splitlines() if "sweep: trial" in line and "starts" in line]
    ends = [line for line in log.splitlines() if "sweep: trial" in line and "done:" in line]
    assert len(starts) == 2 and log.index(starts[1]) < log.index(ends[0])
    best = min(sweep["trials"], key=lambda t: t["value"])
    assert doc["metrics"] == best["metrics"] and doc["final_status"] == "completed"
    # A trial in a process of its own scores what the same settings score in the agent's process.
    here = next(t for t in sweep["trials"] if t["params"]["learning_rate"] == 1.0e-2)
    there = next(t for t in swept[2]["sweep"]["trials"] if t["params"]["learning_rate"] == 1.0e-2)
    assert here["metrics"] == there["metrics"]


def test_a_trial_behind_the_median_is_pruned(sandbox, tmp_path):
    """The first trial learns (lr 1e-2, the grid's first in Optuna's order); the second's loss
    blows up (lr 0.9: ~2,000 at its first logged step, where the first had ~3.4): it trails the
    median there, stops and is recorded as pruned."""
    _, proc, doc = _run(sandbox, tmp_path, sweep_config(
        {"grid": {"learning_rate": [0.9, 1.0e-2]}, "sampler": "grid", "pruner": "median"}, num_steps=60))
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second = doc["sweep"]["trials"]
    assert first["params"]["learning_rate"] == 1.0e-2 and first["state"] == "complete" and first["steps_done"] == 60
    assert second["state"] == "pruned" and second["pruned"] is True and second["steps_done"] < 60
    assert second["value"] is None and second["metrics"] is None
    assert doc["sweep"]["best"]["trial"] == first["number"] and doc["final_status"] == "completed"


def test_kill_mid_sweep_stops_every_trial_and_ends_killed(sandbox, tmp_path):
    s3, bucket = sandbox["s3"], sandbox["bucket"]
    run = launch(s3, bucket, sandbox["aws"], ENV, sweep_config(
        {"grid": {"learning_rate": [1.0e-2, 1.0e-3, 1.0e-4]}, "parallel": 2}, FOUR_PROCESSES, num_steps=20000))
    work = tmp_path / "work"
    proc = start_agent(run, tmp_path, work_dir=work)
    try:
        def both_training():
            lease = StateStore(s3, bucket, ENV).read()
            sweep = ((lease.state.get("progress") or {}).get("sweep") or {}) if lease else {}
            return sweep.get("running") == 2 and lease.state["progress"].get("step", 0) >= 1
        wait_for(both_training, timeout=180)
        pids = [int(p.read_text()) for p in work.glob("sweep/trials/*/ranks/rank0.pid")]
        assert len(pids) == 2
        StateStore(s3, bucket, ENV).request_kill(run.run_id, requested_by="test")
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_KILLED, out[-3000:]
    assert not [p for p in pids if pid_alive(p)], "every trial's process ended"
    doc = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert doc["final_status"] == "killed"
    states = [t["state"] for t in doc["sweep"]["trials"]]
    assert states == ["stopped", "stopped"], states  # the third never started
    assert all(t["steps_done"] < 20000 for t in doc["sweep"]["trials"])
    journal = s3.get_object(Bucket=bucket, Key=run.layout.sweep_journal(run.run_id))["Body"].read().decode()
    assert json.loads(journal.splitlines()[0])  # Optuna's journal: one JSON operation a line


def test_a_spot_interruption_mid_sweep_resumes_with_finished_trials_kept(aws, tmp_path):
    """Through the CLI (its group played by the local executor): the notice comes while the second
    trial trains; the replacement machine keeps the first trial as it finished, runs the second
    again from its checkpoint, and the run completes with the better of the two."""
    import yaml

    from tests.cli_helpers import cli_env, launched_run_id, run_cli, wait_until
    from tests.test_spot import ended, interrupt, lock
    from tests.test_spot import record as record_of
    from tests.agent_fixtures import write_parquet

    env = cli_env(aws.endpoint_url, tmp_path / "home", CHRONOS_HEARTBEAT_SECONDS="0.5", CHRONOS_NOTICE_SECONDS="0.2",
                  CHRONOS_SPOT_NOTICE_SECONDS="30", CHRONOS_KILL_GRACE_SECONDS="60")
    data = write_parquet(tmp_path / "data" / "train.parquet", synthetic_frame(n_items=4, length=64))
    doc = run_config(dataset=str(data), num_steps=300) | {"sweep": {"grid": {"learning_rate": [1.0e-3, 1.0e-2]}}}
    doc["instance"].update(spot=True)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(doc))
    s3 = client("s3", aws)
    run_id = launched_run_id(run_cli(env, "--local", "launch", str(config), cwd=tmp_path))

    def second_trial_training():
        state = lock(s3) or {}
        progress = state.get("progress") or {}
        return state.get("attempt") == 1 and progress.get("trial") == 1 and progress.get("step", 0) >= 10
    wait_until(lambda: second_trial_training() or (ended(s3, run_id) and pytest.fail(str(record_of(s3, run_id)))), 240, 0.1,
               what="the second trial training on the first machine")
    interrupt(env, run_id)
    record = wait_until(lambda: ended(s3, run_id), 300, what="the run to end")
    assert record["final_status"] == "completed", record.get("error")
    assert record["attempt"] == 2 and len(record["interruptions"]) == 1
    first, lost, again = record["sweep"]["trials"]
    assert (first["state"], first["attempt"]) == ("complete", 1), "finished on the first machine, kept"
    assert (lost["state"], lost["attempt"]) == ("interrupted", 1)
    assert (again["state"], again["attempt"], again["retry_of"]) == ("complete", 2, lost["number"])
    assert again["params"] == lost["params"] and again["steps_done"] == 300
    assert again["resumed_from_step"] >= 10, "the second machine went on from the lost trial's checkpoint"
    assert record["sweep"]["done"] == 2 and record["sweep"]["left"] == 0
    best = min((first, again), key=lambda t: t["value"])
    assert record["metrics"] == best["metrics"]
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
