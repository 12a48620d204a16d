"""`chronos-train forecast MODEL DATA` through the real CLI: from a model folder a run saved (its
model_metadata.json beside it), as parquet or CSV, and every input it refuses with exit 2, one
sentence and nothing written. From a run id (fetched from the sandbox) in
tests/test_covariates_cli.py; the forecast's numbers against predict_df in tests/test_forecasting.py."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from instance.model.covariates import roles_of_frame
from instance.protocol.artifacts import write_json_atomic
from tests.agent_fixtures import write_parquet
from tests.cli_helpers import cli_env, run_cli
from tests.test_covariates import promo_frame
from tests.test_forecasting import PROMO, _future

pytestmark = pytest.mark.slow
H, C = 8, 64


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder as `launch --follow` downloads one: runs/RUN/model and its metadata beside."""
    from instance.model.basemodel import build_scratch

    root = tmp_path_factory.mktemp("run")
    build_scratch("tiny", C, seed=1, on="cpu").save_pretrained(root / "model")
    roles = roles_of_frame(promo_frame(n_items=1), PROMO)
    write_json_atomic(root / "model_metadata.json", {
        "run_id": "run-20261101-000000-abcd", "columns": roles.to_json(),
        "config": {"training": {"prediction_length": H, "context_length": C}}})
    return root / "model"


@pytest.fixture
def env(moto_endpoint, tmp_path):
    return cli_env(moto_endpoint, tmp_path / "home")


def _files(tmp_path, frame=None, future=None):
    frame = promo_frame(n_items=3) if frame is None else frame
    data = write_parquet(tmp_path / "data.parquet", frame)
    fut = write_parquet(tmp_path / "future.parquet", _future(promo_frame(n_items=3)) if future is None else future)
    return data, fut


def test_forecast_from_a_model_folder_as_parquet_and_csv(env, model_dir, tmp_path):
    data, future = _files(tmp_path)
    out = tmp_path / "out" / "next.parquet"
    result = run_cli(env, "forecast", str(model_dir), str(data), "--future", str(future), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["series"] == 3 and info["rows"] == 3 * H and info["out"] == str(out)
    assert info["run_id"] == "run-20261101-000000-abcd" and info["data_fingerprint"].startswith("sha256:")
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["item_id", "timestamp", "predictions", *[str(q / 10) for q in range(1, 10)]]
    csv = tmp_path / "next.csv"
    again = run_cli(env, "forecast", str(model_dir), str(data), "--future", str(future), "--out", str(csv),
                    "--quantiles", "0.05,0.5,0.95")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(csv) and "forecast of 3 series x 8 steps" in again.stderr
    table = pd.read_csv(csv)
    assert list(table.columns) == ["item_id", "timestamp", "predictions", "0.05", "0.5", "0.95"]
    assert (np.diff(table[["0.05", "0.5", "0.95"]].to_numpy(), axis=1) >= 0).all()


def _bad(frame_change=None, future_change=None):
    def files(tmp_path):
        frame = promo_frame(n_items=3)
        future = _future(frame)
        return _files(tmp_path, frame_change(frame) if frame_change else frame,
                      future_change(future) if future_change else future)
    return files


@pytest.mark.parametrize("files, said", [
    (_bad(frame_change=lambda f: f.drop(columns="footfall")),
     "data.parquet has no column 'footfall', which the model was trained with as a past covariate"),
    (_bad(frame_change=lambda f: f.rename(columns={"sales": "revenue"})), "data.parquet is not valid"),
    (_bad(future_change=lambda f: f[f["item_id"] != "item-2"]), "has no rows for 1 series (the first: 'item-2')"),
    (_bad(future_change=lambda f: f.iloc[:-1]), "has 7 rows for series 'item-2'"),
    (_bad(future_change=lambda f: f.assign(weather=1)), "has column(s) 'weather' besides the id"),
    (_bad(frame_change=lambda f: f[(f["item_id"] != "item-1") | (f.index % 72 < 10)].reset_index(drop=True)),
     "shorter than 16 points"),
    (_bad(frame_change=lambda f: f.drop(index=[3, 7, 8, 20]).reset_index(drop=True)), "frequency cannot be inferred"),
], ids=["missing-column", "renamed-target", "future-missing-series", "future-short", "future-unknown-column",
        "series-too-short", "no-frequency"])
def test_bad_inputs_exit_2_with_one_sentence_and_nothing_written(env, model_dir, tmp_path, files, said):
    data, future = files(tmp_path)
    out = tmp_path / "out.parquet"
    result = run_cli(env, "forecast", str(model_dir), str(data), "--future", str(future), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))


def test_an_unknown_run_or_a_run_without_a_model_is_refused(env, tmp_path, moto_endpoint):
    from automation.sandbox import motoserver
    from automation.sandbox.strictmoto import DEPLOYER
    from instance.protocol.artifacts import put_json
    from instance.protocol.aws import AwsTarget, client
    from instance.protocol.layout import Layout, bucket_name

    data, _ = _files(tmp_path)
    unknown = run_cli(env, "--local", "forecast", "run-20260101-000000-abcd", str(data))
    assert unknown.returncode == 2 and "no run run-20260101-000000-abcd in dev" in unknown.stderr, unknown.stderr
    # The deployer plants the failed run's record, by its named credentials.
    s3 = client("s3", AwsTarget(region="us-east-1", endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials))
    failed = "run-20260101-000000-f00d"
    put_json(s3, bucket_name("dev", motoserver.SANDBOX_ACCOUNT, "us-east-1"), Layout("dev").final_record(failed),
             {"run_id": failed, "final_status": "failed"})
    none = run_cli(env, "--local", "forecast", failed, str(data))
    assert none.returncode == 2 and f"run {failed} has no model (it ended failed)" in none.stderr, none.stderr
    assert not (tmp_path / "forecast.parquet").exists()


@pytest.mark.parametrize("given", ["0.1,abc", "0.1,1.5", "0"])
def test_a_bad_quantile_is_one_sentence_whatever_is_wrong_with_it(env, tmp_path, given):
    """Not a number or not strictly between 0 and 1: the same sentence, exit 2, before any model."""
    data, _ = _files(tmp_path)
    out = tmp_path / "out.parquet"
    result = run_cli(env, "forecast", "amazon/chronos-2", str(data), "--quantiles", given, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: --quantiles {given}: give numbers strictly between 0 and 1, such as "
                                     "0.1,0.5,0.9")
    assert not out.exists()


def test_a_pretrained_model_name_that_is_no_model_is_refused(env, tmp_path):
    data, _ = _files(tmp_path)
    result = run_cli(env, "forecast", "not a model", str(data))
    assert result.returncode == 2 and "neither a run id, a model folder" in result.stderr


# -- --remote with something other than a run id -----------------------------------------------------
def test_remote_with_a_model_folder_names_its_run_and_writes_nothing(env, model_dir, tmp_path, moto_endpoint):
    """The machine reads only the bucket: a folder a run saved is refused with the run that holds
    it, before a lock, a run or an upload."""
    from automation.sandbox import motoserver

    motoserver.reset(moto_endpoint)
    data, future = _files(tmp_path)
    result = run_cli(env, "--local", "forecast", str(model_dir), str(data), "--future", str(future), "--remote")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (f"error: --remote reads its model from the bucket, not from this disk: for "
                                     f"{model_dir}, name its run, run-20261101-000000-abcd, instead, or leave out "
                                     "--remote to forecast on this machine")
    assert json.loads(run_cli(env, "--local", "runs", "--json").stdout) == []
    assert _bucket_keys(moto_endpoint) == []


def _bucket_keys(moto_endpoint) -> list[str]:
    from automation.sandbox import motoserver
    from automation.sandbox.strictmoto import DEPLOYER
    from instance.protocol.aws import AwsTarget, client
    from instance.protocol.layout import bucket_name

    s3 = client("s3", AwsTarget(region="us-east-1", endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials))
    listed = s3.list_objects_v2(Bucket=bucket_name("dev", motoserver.SANDBOX_ACCOUNT, "us-east-1"))
    return [o["Key"] for o in listed.get("Contents", []) if not o["Key"].startswith("dev/infra")]


def test_remote_with_a_pretrained_model_is_a_forecast_run_of_it(env, tmp_path, moto_endpoint):
    """A pretrained base (here scratch:tiny: the hub is out of reach from the tests) forecasts as a
    run whose agent loads the base itself, as a training run's base; the data's own roles."""
    from automation.sandbox import motoserver
    from tests.agent_fixtures import synthetic_frame

    motoserver.reset(moto_endpoint)
    data = write_parquet(tmp_path / "data.parquet", synthetic_frame(n_items=4, length=64))
    out = tmp_path / "zero-shot.parquet"
    result = run_cli(env, "--local", "forecast", "scratch:tiny", str(data), "--remote", "--prediction-length", "6",
                     "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "forecast run: 4 series x 6 steps with scratch:tiny, on" in result.stderr
    assert "Chronos-2's published A10G figure scaled to T4 and scratch:tiny" in result.stderr
    frame = pd.read_parquet(out)
    assert len(frame) == 4 * 6 and list(frame.columns[:3]) == ["item_id", "timestamp", "predictions"]
    runs = json.loads(run_cli(env, "--local", "runs", "--json").stdout)
    assert [(r["kind"], r["final_status"]) for r in runs] == [("forecast", "completed")]
    # As launch --follow: the run's report, where the follow said it wrote it.
    run_id = result.stdout.splitlines()[0]
    assert f"report written to runs/{run_id}/report.html" in result.stderr
    page = (tmp_path / "runs" / run_id / "report.html").read_text()
    assert "<h2>Forecast of the next 6 steps" in page and "forecast run · completed" in page


def test_remote_refuses_an_out_it_cannot_write_before_anything_starts(env, tmp_path, moto_endpoint):
    """The forecast is fetched into --out at the run's end: a name that is neither .parquet nor
    .csv is refused at once, not after the machine was paid for."""
    from automation.sandbox import motoserver
    from tests.agent_fixtures import synthetic_frame

    motoserver.reset(moto_endpoint)
    data = write_parquet(tmp_path / "data.parquet", synthetic_frame(n_items=4, length=64))
    result = run_cli(env, "--local", "forecast", "scratch:tiny", str(data), "--remote", "--out",
                     str(tmp_path / "next.txt"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: --out {tmp_path / 'next.txt'}: name a .parquet or a .csv file"
    assert json.loads(run_cli(env, "--local", "runs", "--json").stdout) == []
    assert _bucket_keys(moto_endpoint) == [] and not (tmp_path / "next.txt").exists()
