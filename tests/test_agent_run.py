"""A complete run: the agent as a real subprocess against moto server, scratch:tiny on synthetic data.

One run is shared by every assertion here (module-scoped), to keep the suite fast.
"""
from __future__ import annotations

import math

import pytest

from instance.protocol.state import StateStore
from tests.agent_fixtures import (
    DATA_PREFIX,
    get_json,
    instance_state,
    keys_under,
    launch,
    parquet_bytes,
    run_agent,
    run_config,
    seeded_sandbox,
    synthetic_frame,
)
from tests.conftest import ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def completed(moto_endpoint, tmp_path_factory):
    # Two files: the sync and the validator see a month folder as it really is.
    frame = synthetic_frame(n_items=6, length=96)
    half = frame["item_id"].isin(["item-0", "item-1", "item-2"])
    sandbox = seeded_sandbox(moto_endpoint, {"part-0.parquet": parquet_bytes(frame[half]),
                                             "part-1.parquet": parquet_bytes(frame[~half])},
                             deployed=True)  # the operator reads the model below
    aws, s3, bucket = sandbox.aws, sandbox.s3, sandbox.bucket
    run = launch(s3, bucket, aws, ENV, run_config())
    tmp = tmp_path_factory.mktemp("agent")
    proc = run_agent(run, tmp)
    return dict(run=run, s3=s3, bucket=bucket, proc=proc, tmp=tmp, aws=aws)


def _record(c, name):
    return get_json(c["s3"], c["bucket"], getattr(c["run"].layout, name)(c["run"].run_id))


def test_agent_exits_zero_and_releases_the_lock(completed):
    assert completed["proc"].returncode == 0, completed["proc"].stderr[-3000:]
    assert StateStore(completed["s3"], completed["bucket"], ENV).read() is None


def test_every_artifact_is_where_the_layout_says(completed):
    run = completed["run"]
    keys = set(keys_under(completed["s3"], completed["bucket"], f"{ENV}/"))
    layout = run.layout
    for key in (
        layout.training_record(run.run_id),
        layout.cleanup_status(run.run_id),
        layout.agent_log(run.run_id),
        layout.model_metadata(run.run_id),
        layout.models(run.run_id) + "config.json",
        layout.models(run.run_id) + "model.safetensors",
        *(layout.evaluation(run.run_id) + name for name in (
            "summary.json", "forecasts.parquet", "series_scores.parquet", "history.parquet", "loss_history.parquet")),
        layout.forecast_file(run.run_id),
        layout.forecast_info(run.run_id),
        layout.forecast_history(run.run_id),
        layout.forecast_sample(run.run_id),
    ):
        assert key in keys
    assert layout.state not in keys


def test_training_record_is_complete(completed):
    doc = _record(completed, "training_record")
    run = completed["run"]
    assert doc["run_id"] == run.run_id and doc["env"] == ENV
    assert doc["final_status"] == "completed" and doc["reason"] is None and doc["error"] is None
    in_order = sorted(doc["phases"], key=lambda name: doc["phases"][name]["started_at"])
    assert in_order == ["initialization", "data_sync", "training", "forecast", "results_sync", "cleanup"]
    for phase in doc["phases"].values():
        assert phase["result"] == "ok" and phase["seconds"] >= 0 and phase["ended_at"] >= phase["started_at"]
    assert doc["phases"]["data_sync"]["detail"]["files"] == 2
    training = doc["training"]
    assert training["steps_done"] == training["total_steps"] == 20
    assert training["world_size"] == 1 and training["steps_by_rank"] == [20]
    assert math.isfinite(training["final_loss"]) and training["samples_per_second"] > 0
    assert doc["duration_seconds"] > 0 and doc["ended_at"] > doc["started_at"]
    assert {"python", "torch", "chronos", "transformers", "cuda"} <= set(doc["versions"])
    assert doc["host"]["executor"] == "local" and doc["host"]["instance_id"] == run.instance_id
    assert doc["cost"]["estimated_usd"] == 0.0 and "local" in doc["cost"]["note"]
    assert doc["config"]["model"]["base"] == "scratch:tiny"
    arts = doc["artifacts"]
    assert arts["model_uri"] == f"s3://{completed['bucket']}/{ENV}/{run.run_id}/models/"
    assert arts["metadata_uri"].endswith("model_metadata.json") and arts["log_uri"].endswith("agent.log")
    assert arts["evaluation_uri"] == f"s3://{completed['bucket']}/{ENV}/{run.run_id}/evaluation/"
    assert doc["data"]["series"] == 6 and doc["data"]["points"] == 6 * 96
    assert doc["evaluation"]["windows"] == 3 and len(doc["evaluation"]["per_window"]["finetuned"]) == 3


def test_the_run_ends_with_the_forecast_of_every_series(completed):
    """prediction_length steps past the end of every series, from all of its data (the backtest
    windows are context now), quantiles in order, and forecast.json saying what it was made from."""
    import io

    import numpy as np
    import pandas as pd

    run, s3, bucket = completed["run"], completed["s3"], completed["bucket"]
    body = s3.get_object(Bucket=bucket, Key=run.layout.forecast_file(run.run_id))["Body"].read()
    frame = pd.read_parquet(io.BytesIO(body))
    levels = [str(q) for q in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]
    assert list(frame.columns) == ["item_id", "timestamp", "predictions", *levels]
    assert len(frame) == 6 * 8 and sorted(frame["item_id"].unique()) == [f"item-{i}" for i in range(6)]
    quantiles = frame[levels].to_numpy()
    assert np.isfinite(quantiles).all() and (np.diff(quantiles, axis=1) >= 0).all()
    first = frame[frame["item_id"] == "item-0"]["timestamp"]
    data_end = pd.Timestamp("2026-11-01") + pd.Timedelta(hours=95)
    assert list(first) == list(pd.date_range(data_end + pd.Timedelta(hours=1), periods=8, freq="h"))
    info = get_json(s3, bucket, run.layout.forecast_info(run.run_id))
    meta = _record(completed, "model_metadata")
    assert info["model"] == f"s3://{bucket}/{ENV}/{run.run_id}/models/" and info["series"] == 6
    assert info["data_fingerprint"] == meta["data_fingerprint"] and info["quantile_levels"] == [float(q) for q in levels]
    record = _record(completed, "training_record")
    assert record["forecast"]["rows"] == 48 and record["artifacts"]["forecast_uri"].endswith("forecasts/forecast.parquet")


def test_metrics_are_finite_for_each_model(completed):
    metrics = _record(completed, "training_record")["metrics"]
    assert metrics["zero_shot"] is None  # a scratch base has no zero-shot score
    for name in ("finetuned", "seasonal_naive"):
        assert set(metrics[name]) == {"wql", "mase"}
        assert all(math.isfinite(v) and v >= 0 for v in metrics[name].values()), metrics


def test_model_metadata(completed):
    meta = _record(completed, "model_metadata")
    assert meta["base_model"] == "scratch:tiny" and meta["finetune_mode"] == "full"
    assert meta["data_fingerprint"].startswith("sha256:") and len(meta["data_fingerprint"]) == 71
    assert meta["metrics"] == _record(completed, "training_record")["metrics"]
    assert meta["config"]["training"]["num_steps"] == 20
    assert meta["artifacts"]["model_uri"].endswith("/models/")
    assert meta["dataset"]["uri"].endswith(DATA_PREFIX)
    assert meta["dataset"]["file_list"] == ["part-0.parquet", "part-1.parquet"]  # what the fingerprint covers
    assert meta["trained_on"] == {  # one process on this CPU: no torchrun, fit's own precision choice
        "executor": "local", "instance_type": None, "gpu": None, "gpus": 0, "processes": 1,
        "precision": "fp32", "tf32": False, "batch_size": 16, "batch_size_per_rank": 16,
    }


def test_cleanup_status_lists_every_step_done(completed):
    status = _record(completed, "cleanup_status")
    assert status["run_id"] == completed["run"].run_id and status["by"] == "agent" and status["completed_at"]
    results = {(s["resource"].split(" ")[0], s["action"]): s["result"] for s in status["steps"]}
    assert results[("lock", "release")] == "done"
    assert results[("instance", "terminate")] == "done"
    assert results[("training", "write final")] == "done"
    assert all(s["result"] in ("done", "not_found") for s in status["steps"])
    assert all({"resource", "action", "result", "detail", "at"} <= set(s) for s in status["steps"])


def test_instance_record_is_terminated(completed):
    assert instance_state(completed["aws"], completed["run"].instance_id) == "terminated"


def test_agent_log_reached_s3(completed):
    key = completed["run"].layout.agent_log(completed["run"].run_id)
    text = completed["s3"].get_object(Bucket=completed["bucket"], Key=key)["Body"].read().decode()
    assert "phase training" in text and "cleanup: release lock: done" in text
    assert "torchrun" not in text  # one GPU (or none): training stays in the agent process


def test_model_loads_from_s3_and_forecasts(completed, monkeypatch, tmp_path):
    import numpy as np
    from chronos import Chronos2Pipeline

    # As the record's `load_with` says a person loads it: Chronos's own loader, boto3's own
    # chain, the person's keys (the operator's, in this process's environment).
    monkeypatch.setenv("AWS_ENDPOINT_URL", completed["aws"].endpoint_url)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = _record(completed, "training_record")["artifacts"]["model_uri"]
    pipeline = Chronos2Pipeline.from_pretrained(uri)
    assert isinstance(pipeline, Chronos2Pipeline)
    frame = synthetic_frame(n_items=2, length=80, covariate=False)
    forecast = pipeline.predict_df(frame, prediction_length=8)
    assert len(forecast) == 2 * 8
    assert np.isfinite(forecast["predictions"].to_numpy()).all()


def test_a_forecast_only_run_forecasts_with_a_run_s_model_and_trains_nothing(completed, tmp_path):
    """kind: forecast: data_sync -> forecast -> results_sync -> cleanup on the machine, the model
    read from the earlier run's models/ prefix (the instance role reads {env}/run-*), its forecast
    the same as the training run's own (same model, same data)."""
    import io

    import pandas as pd

    s3, bucket, trained = completed["s3"], completed["bucket"], completed["run"]
    config = run_config(base=f"s3://{bucket}/{trained.layout.models(trained.run_id)}") | {"kind": "forecast"}
    run = launch(s3, bucket, completed["aws"], ENV, config)
    proc = run_agent(run, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert record["final_status"] == "completed"
    assert sorted(record["phases"], key=lambda p: record["phases"][p]["started_at"]) == [
        "initialization", "data_sync", "forecast", "results_sync", "cleanup"]
    assert record["training"] is None and record["artifacts"]["model_uri"] is None
    assert not keys_under(s3, bucket, run.layout.models(run.run_id))

    def forecast_of(r):
        return pd.read_parquet(io.BytesIO(s3.get_object(Bucket=bucket, Key=r.layout.forecast_file(r.run_id))["Body"].read()))

    pd.testing.assert_frame_equal(forecast_of(run), forecast_of(trained), check_exact=False, rtol=1e-5)


def test_a_model_with_known_covariates_and_no_future_values_forecasts_nothing_and_says_why(moto_endpoint, tmp_path):
    """Not a failure of the run: the model is what was paid for; the record says what to give."""
    sandbox = seeded_sandbox(moto_endpoint, {"part-0.parquet": parquet_bytes(synthetic_frame(n_items=3, length=96))})
    s3, bucket = sandbox.s3, sandbox.bucket
    config = run_config(num_steps=4) | {"columns": {"known_covariates": ["temperature"]}}
    run = launch(s3, bucket, sandbox.aws, ENV, config)
    proc = run_agent(run, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert record["final_status"] == "completed"
    assert record["forecast"] == {"skipped": "the model was trained with known covariates (temperature) and the run "
                                             "config names no forecast.future with their values over the horizon"}
    assert record["phases"]["forecast"]["result"] == "ok"
    assert not keys_under(s3, bucket, run.layout.forecasts(run.run_id))
