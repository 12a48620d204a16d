"""A `--local` run with covariates through the real CLI, as a person makes one: data with its own
column names (store_id, day, two targets, a known covariate, a categorical one), `data validate
--config` saying each column's role, `launch --follow`, then what the run left: the roles in
model_metadata.json (read back as ColumnRoles), each target's scores, the report's Covariates
section and `runs compare`. One run (module fixture) serves every test here; what Chronos is given
is asserted in tests/test_covariates.py."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from automation.sandbox import motoserver
from automation.sandbox.strictmoto import DEPLOYER
from instance.protocol.artifacts import get_json, put_json
from instance.protocol.aws import AwsTarget, client
from instance.protocol.columns import ColumnRoles
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import run_config, write_parquet
from tests.cli_helpers import cli_env, run_cli

pytestmark = pytest.mark.slow
BUCKET = bucket_name("dev", motoserver.SANDBOX_ACCOUNT, "us-east-1")
LAYOUT = Layout("dev")
ITEMS, LENGTH, H, W = 6, 96, 8, 2
COLUMNS = {"id": "store_id", "timestamp": "day", "target": ["sales", "returns"], "known_covariates": ["promo"]}
OLD = "run-20261101-000000-01d0"


def store_frame() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frames = []
    for i in range(ITEMS):
        t = np.arange(LENGTH)
        promo = rng.random(LENGTH) < 0.2
        sales = 30 + 2 * i + 4 * np.sin(2 * np.pi * t / 7) + 15 * promo + rng.normal(0, 1, LENGTH)
        frames.append(pd.DataFrame({
            "store_id": f"store-{i}", "day": pd.date_range("2026-01-01", periods=LENGTH, freq="D"),
            "sales": sales, "returns": 0.1 * sales + rng.normal(0, 0.2, LENGTH), "promo": promo.astype(int),
            "weather": rng.choice(["sun", "rain", "snow"], LENGTH),
        }))
    return pd.concat(frames, ignore_index=True)


def future_frame(promo: int = 1) -> pd.DataFrame:
    """The promotions of the H days after the data, for every store."""
    days = pd.date_range("2026-01-01", periods=LENGTH + H, freq="D")[LENGTH:]
    return pd.DataFrame({"store_id": np.repeat([f"store-{i}" for i in range(ITEMS)], H), "day": np.tile(days, ITEMS),
                         "promo": promo})


@pytest.fixture(scope="module")
def run(moto_endpoint, tmp_path_factory):
    motoserver.reset(moto_endpoint)
    tmp = tmp_path_factory.mktemp("covariates")
    data = write_parquet(tmp / "data" / "stores.parquet", store_frame())
    future = write_parquet(tmp / "future" / "promo.parquet", future_frame())
    config = tmp / "run.yaml"
    doc = run_config(dataset=str(data), num_steps=20, prediction_length=H) | {"columns": COLUMNS,
                                                                             "forecast": {"future": str(future)}}
    doc["evaluation"] = {"windows": W}
    config.write_text(yaml.safe_dump(doc))
    env = cli_env(moto_endpoint, tmp / "home", CHRONOS_HEARTBEAT_SECONDS="1")
    validated = run_cli(env, "data", "validate", str(data), "--config", str(config), "--json")
    dry = run_cli(env, "--local", "launch", str(config), "--dry-run", "--json", cwd=tmp)
    result = run_cli(env, "--local", "launch", str(config), "--follow", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    # Test code reads and plants records as the deployer, by its named credentials.
    s3 = client("s3", AwsTarget(region="us-east-1", endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials))
    return dict(run_id=result.stdout.splitlines()[0], env=env, tmp=tmp, s3=s3, result=result, validated=validated,
                dry=dry)


def test_the_run_forecasts_with_the_future_values_launch_uploaded(run):
    """forecast.future, a local file, went into the run's own prefix; the forecast continues every
    store's days, under the data's own column names, one row per store, target and day."""
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(run["run_id"]))
    assert record["final_status"] == "completed"
    assert record["config"]["forecast"]["future"] == LAYOUT.forecast_future(run["run_id"])
    body = run["s3"].get_object(Bucket=BUCKET, Key=LAYOUT.forecast_file(run["run_id"]))["Body"].read()
    f = pd.read_parquet(io.BytesIO(body))
    assert list(f.columns[:4]) == ["store_id", "day", "target_name", "predictions"]
    assert len(f) == ITEMS * 2 * H and set(f.target_name) == {"sales", "returns"}
    assert f["day"].min() == pd.Timestamp("2026-01-01") + pd.Timedelta(days=LENGTH)
    assert record["forecast"]["future"] == LAYOUT.forecast_future(run["run_id"])


def test_forecast_from_the_run_id_equals_the_run_s_own_forecast_and_reuses_the_fetched_model(run):
    tmp = run["tmp"]
    args = ("--local", "forecast", run["run_id"], str(tmp / "data" / "stores.parquet"),
            "--future", str(tmp / "future" / "promo.parquet"), "--out", str(tmp / "mine.parquet"))
    result = run_cli(run["env"], *args)
    assert result.returncode == 0, result.stderr
    body = run["s3"].get_object(Bucket=BUCKET, Key=LAYOUT.forecast_file(run["run_id"]))["Body"].read()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp / "mine.parquet"), pd.read_parquet(io.BytesIO(body)),
                                  check_exact=False, rtol=1e-5)
    fetched = tmp / "home" / "models" / "dev" / run["run_id"] / ".complete.json"
    first = fetched.stat().st_mtime_ns
    assert run_cli(run["env"], *args).returncode == 0
    assert fetched.stat().st_mtime_ns == first  # read from the home, not fetched again


@pytest.fixture(scope="module")
def remote(run):
    """`forecast RUN DATA --remote`: a forecast-only run of the training run's model, followed."""
    tmp = run["tmp"]
    out = tmp / "remote.csv"
    result = run_cli(run["env"], "--local", "forecast", run["run_id"], str(tmp / "data" / "stores.parquet"),
                     "--future", str(tmp / "future" / "promo.parquet"), "--remote", "--out", str(out), cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(run_id=result.stdout.splitlines()[0], out=out, result=result)


def test_a_forecast_run_on_the_machine_is_followed_to_its_file(run, remote):
    """--remote: a forecast-only run (kind forecast) through the lock, the agent's phases and
    cleanup, its forecast fetched to --out and equal to the training run's own; `runs` says its kind."""
    result, out, remote_id = remote["result"], remote["out"], remote["run_id"]
    assert f"forecast run: {ITEMS} series x {H} steps with {run['run_id']}'s model" in result.stderr
    # The estimate, before anything is launched: from the training run's own forecast on this machine.
    said = result.stderr
    estimate = said.index(f"estimate: {ITEMS} series in about ")
    assert estimate < said.index(f"run {remote_id}: lock taken")
    line = said[estimate:said.index("\n", estimate)]
    assert f"series/s: {run['run_id']}'s own forecast on this machine), $0.00 here (on AWS about $" in line, line
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(remote_id))
    assert record["final_status"] == "completed" and record["config"]["kind"] == "forecast"
    assert "training" not in record["phases"] and record["phases"]["forecast"]["result"] == "ok"
    body = run["s3"].get_object(Bucket=BUCKET, Key=LAYOUT.forecast_file(run["run_id"]))["Body"].read()
    theirs = pd.read_parquet(io.BytesIO(body))
    mine = pd.read_csv(out, parse_dates=["day"])
    np.testing.assert_allclose(mine["predictions"], theirs["predictions"], rtol=1e-5)
    runs = json.loads(run_cli(run["env"], "--local", "runs", "--json").stdout)
    assert {r["run_id"]: r["kind"] for r in runs}[remote_id] == "forecast"
    assert run_cli(run["env"], "--local", "verify-cleanup").returncode == 0


def test_a_forecast_run_s_report_shows_its_forecast_with_fan_charts_of_the_future(run, remote):
    """`report` on a forecast-only run: no training or backtest to miss, its own section (series,
    horizon, the model's run, quantiles, cost) and a fan chart per (store, target) it kept the
    history of; a killed one reports what is missing instead of failing."""
    page_path = run["tmp"] / "forecast-report.html"
    result = run_cli(run["env"], "--local", "report", remote["run_id"], "--out", str(page_path), cwd=run["tmp"])
    assert result.returncode == 0, result.stderr
    page = page_path.read_text()
    section = page[page.index("<h2>Forecast of the next 8 steps"):]
    section = section[:section.index("</section>")]
    for text in (f"{ITEMS} × 2 targets", "8 steps (frequency D)", "6 of the 12 series and targets", f"{run['run_id']}&#x27;s model", "0.1, 0.2, 0.3",
                 "forecast phase", "$0.00 (local run)", "known covariates promo", "forecast.parquet"):
        assert text in section, text
    assert section.count('<img class="chart small"') == 6  # 3 of the 6 stores spread out, x 2 targets
    charts = _svg_texts(section)
    assert "store-0 · sales" in charts and "store-5 · returns" in charts
    assert "<h2>Evaluation" not in page and "<h2>Training" not in page and "Not in this report" not in page
    assert "forecast only" in page and "<h2>Phases" in page
    # The same run killed in its forecast phase: a page saying so, not a failure.
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(remote["run_id"]))
    killed = "run-20261101-000000-dead"
    put_json(run["s3"], BUCKET, LAYOUT.final_record(killed), record | {
        "run_id": killed, "final_status": "killed", "reason": "killed by the user", "artifacts": {}})
    try:
        again = run_cli(run["env"], "--local", "report", killed, "--out", str(page_path), cwd=run["tmp"])
    finally:
        run["s3"].delete_object(Bucket=BUCKET, Key=LAYOUT.final_record(killed))
    assert again.returncode == 0, again.stderr
    assert "No forecast: the run was killed (killed by the user) before its forecast was uploaded." in \
        page_path.read_text()


def test_a_training_run_s_report_shows_its_forecast_of_the_future(run):
    page = (run["tmp"] / "runs" / run["run_id"] / "report.html").read_text()
    section = page[page.index("<h2>Forecast of the next 8 steps"):]
    section = section[:section.index("</section>")]
    assert "this run&#x27;s fine-tuned model" in section and f"{ITEMS} × 2 targets" in section
    assert section.count('<img class="chart small"') == 6 and "store-0 · sales" in _svg_texts(section)


def _svg_texts(page: str) -> str:
    """matplotlib writes text as shapes with the text in a comment beside it."""
    import base64
    import re

    return " ".join(base64.b64decode(b).decode() for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", page))


def test_a_forecast_run_with_future_values_that_do_not_fit_costs_nothing(run):
    tmp = run["tmp"]
    short = write_parquet(tmp / "short-future.parquet", future_frame().iloc[:-1])
    before = json.loads(run_cli(run["env"], "--local", "runs", "--json").stdout)
    result = run_cli(run["env"], "--local", "forecast", run["run_id"], str(tmp / "data" / "stores.parquet"),
                     "--future", str(short), "--remote", cwd=tmp)
    assert result.returncode == 2 and "has 7 rows for series 'store-5'" in result.stderr, result.stderr
    after = json.loads(run_cli(run["env"], "--local", "runs", "--json").stdout)
    assert [r["run_id"] for r in after] == [r["run_id"] for r in before]  # no run was started for it


def test_data_validate_says_each_column_s_role_and_type(run):
    assert run["validated"].returncode == 0, run["validated"].stderr
    doc = json.loads(run["validated"].stdout)
    assert doc["ok"] and doc["series"] == ITEMS
    assert [(c["name"], c["role"], c["type"]) for c in doc["columns"]] == [
        ("store_id", "id", "identifier"), ("day", "timestamp", "datetime"), ("sales", "target", "numeric"),
        ("returns", "target", "numeric"), ("promo", "known_covariate", "numeric"),
        ("weather", "past_covariate", "categorical")]


def test_launch_says_the_roles_it_will_train_with(run):
    said = "columns: targets sales, returns; known covariates: promo (numeric); past-only covariates: weather (categorical)"
    assert said in run["result"].stderr
    dry = json.loads(run["dry"].stdout)
    assert dry["columns"]["known_covariates"] == ["promo"] and dry["columns"]["id"] == "store_id"


def test_the_model_s_metadata_records_the_roles(run):
    meta = get_json(run["s3"], BUCKET, LAYOUT.model_metadata(run["run_id"]))
    roles = ColumnRoles.from_json(meta["columns"])
    assert roles.id == "store_id" and roles.timestamp == "day" and roles.targets == ["sales", "returns"]
    assert roles.known_covariates == ["promo"] and roles.past_covariates == ["weather"]
    assert roles.get("weather").kind == "categorical" and roles.get("promo").dtype == "int64"
    assert meta["config"]["columns"] == COLUMNS


def test_each_target_is_scored_and_the_files_keep_the_project_s_column_names(run):
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(run["run_id"]))
    per_target = record["evaluation"]["per_target"]
    assert record["evaluation"]["targets"] == ["sales", "returns"] and set(per_target) == {"sales", "returns"}
    for model in ("finetuned", "finetuned_no_covariates", "seasonal_naive"):
        assert record["metrics"][model]["wql"] == pytest.approx(np.mean([per_target[t][model]["wql"] for t in per_target]))
    body = run["s3"].get_object(Bucket=BUCKET, Key=LAYOUT.evaluation(run["run_id"]) + "forecasts.parquet")["Body"].read()
    f = pd.read_parquet(io.BytesIO(body))
    assert {"item_id", "timestamp", "target", "target_name"} <= set(f.columns)
    assert set(f.target_name) == {"sales", "returns"} and set(f.item_id) == {f"store-{i}" for i in range(ITEMS)}


def test_the_report_shows_the_covariates_and_what_they_bring(run):
    page = (run["tmp"] / "runs" / run["run_id"] / "report.html").read_text()
    section = page[page.index("<h2>Covariates"):page.index("</section>", page.index("<h2>Covariates"))]
    for text in ("<code>promo</code>", "known covariate", "<code>weather</code>", "past-only covariate", "categorical",
                 "WQL with", "WQL alone"):
        assert text in section, text
    assert "store-0 · returns" in page or "· sales" in page  # fan charts per series and target
    evaluation = page[page.index("<h2>Evaluation"):page.index("</section>", page.index("<h2>Evaluation"))]
    assert "<td>returns</td>" in evaluation and "2 targets, forecast jointly" in evaluation


def test_runs_compare_shows_the_covariates_and_the_target_alone_scores(run):
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(run["run_id"]))
    old = json.loads(json.dumps(record))  # a run from before covariates: no roles, no target-alone scores
    old.update(run_id=OLD, started_at="2026-11-01T00:00:00.000Z", evaluation={"windows": W})
    old["data"].pop("columns")
    old["metrics"] = {m: v for m, v in old["metrics"].items() if not m.endswith("_no_covariates")}
    put_json(run["s3"], BUCKET, LAYOUT.training_record(OLD), old)
    result = run_cli(run["env"], "--local", "runs", "compare", run["run_id"], OLD, "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r["values"] for r in json.loads(result.stdout)["metrics"]}
    assert rows["covariates"] == {run["run_id"]: "promo (known, numeric), weather (past-only, categorical)", OLD: None}
    alone = record["metrics"]["finetuned_no_covariates"]["wql"]
    assert rows["WQL fine-tuned, target(s) alone"] == {run["run_id"]: alone, OLD: None}
    assert rows["WQL fine-tuned · returns"][run["run_id"]] == record["evaluation"]["per_target"]["returns"]["finetuned"]["wql"]
    people = run_cli(run["env"], "--local", "runs", "compare", run["run_id"], OLD)
    assert people.returncode == 0 and "promo (known, numeric)" in people.stdout
