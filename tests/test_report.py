"""The report of a real local run, as a person sees it: `launch --follow` writes it beside the
model, it needs no network, a real headless Chromium shows every chart on a desktop and on a
phone; the evaluation files it is made from read with pandas; `runs` and `runs compare` show the
backtest. One run (module fixture) serves every test here."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from automation.sandbox import motoserver
from automation.sandbox.strictmoto import DEPLOYER
from instance.model.evaluation import QUANTILE_COLUMNS
from instance.protocol.artifacts import get_json, put_json
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.cli_helpers import cli_env, run_cli

pytestmark = pytest.mark.slow
BUCKET = bucket_name("dev", motoserver.SANDBOX_ACCOUNT, "us-east-1")
LAYOUT = Layout("dev")
ITEMS, LENGTH, H, W = 8, 120, 8, 3
OTHER = "run-20261101-000000-0ff1"


@pytest.fixture(scope="module")
def run(moto_endpoint, tmp_path_factory):
    motoserver.reset(moto_endpoint)
    tmp = tmp_path_factory.mktemp("report")
    frame = synthetic_frame(n_items=ITEMS, length=LENGTH)
    data = write_parquet(tmp / "data" / "train.parquet", frame)
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(dataset=str(data), num_steps=30)))
    env = cli_env(moto_endpoint, tmp / "home", CHRONOS_HEARTBEAT_SECONDS="1")
    result = run_cli(env, "--local", "launch", str(config), "--follow", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = result.stdout.splitlines()[0]
    # Test code reads and plants records as the deployer, by its named credentials.
    s3 = client("s3", AwsTarget(region="us-east-1", endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials))
    return dict(run_id=run_id, env=env, tmp=tmp, frame=frame, result=result, s3=s3)


def _parquet(c, name: str) -> pd.DataFrame:
    body = c["s3"].get_object(Bucket=BUCKET, Key=LAYOUT.evaluation(c["run_id"]) + name)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


# -- what the follow leaves ------------------------------------------------------------------------
def test_follow_writes_the_report_beside_the_model_and_says_where(run):
    page = run["tmp"] / "runs" / run["run_id"] / "report.html"
    assert page.is_file() and (page.parent / "model" / "config.json").is_file()
    assert run["result"].stderr.rstrip().splitlines()[-1] == f"report written to runs/{run['run_id']}/report.html"


def test_the_report_command_prints_the_path_and_needs_no_network(run):
    out = run["tmp"] / "again" / "r.html"
    result = run_cli(run["env"], "--local", "report", run["run_id"], "--out", str(out), cwd=run["tmp"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    page = out.read_text()
    assert "<script" not in page and "@import" not in page
    assert not re.search(r"""(src|href|srcset)=["']?(https?:)?//""", page)
    assert not re.search(r"url\((?!data:)", page)
    images = re.findall(r'<img [^>]*src="([^"]{0,40})', page)
    assert len(images) >= 5 and all(src.startswith("data:image/svg+xml;base64,") for src in images)
    for text in ("completed", "Training loss", "fine-tuned", "seasonal naive", "Where the time went", "cleanup",
                 f"{ITEMS} series", "Covariates", "temperature", "past-only covariate", "WQL alone",
                 f"Forecast of the next {H} steps", "median forecast", "10-90 %", "20-80 %"):
        assert text in page or text in _svg_texts(page), text


def _svg_texts(page: str) -> str:
    """matplotlib writes text as shapes with the text in a comment beside it."""
    import base64

    return " ".join(base64.b64decode(b).decode() for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", page))


def test_the_future_s_charts_come_from_the_sampled_series_alone(run):
    """forecasts/sample.parquet holds the drawn series' rows, so the report need not read the whole
    forecast.parquet (about 100 MB at 100,000 series): with it unreadable the section is the same;
    a run from before sample.parquet still draws them, from forecast.parquet."""
    s3, prefix = run["s3"], LAYOUT.forecasts(run["run_id"])
    record = get_json(s3, BUCKET, LAYOUT.training_record(run["run_id"]))
    sections = []
    for copy, change in (("run-20261101-000000-5a3e", "unreadable"), ("run-20261101-000000-01d5", "before")):
        put_json(s3, BUCKET, LAYOUT.final_record(copy), record | {"run_id": copy, "config": {
            **record["config"], "kind": "forecast"}})  # a forecast run: the page is its future section
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
            s3.copy_object(Bucket=BUCKET, Key=LAYOUT.forecasts(copy) + o["Key"][len(prefix):],
                           CopySource={"Bucket": BUCKET, "Key": o["Key"]})
        if change == "unreadable":
            s3.put_object(Bucket=BUCKET, Key=LAYOUT.forecast_file(copy), Body=b"PAR1 not read by the report")
        else:
            s3.delete_object(Bucket=BUCKET, Key=LAYOUT.forecast_sample(copy))
        out = run["tmp"] / f"{copy}.html"
        result = run_cli(run["env"], "--local", "report", copy, "--out", str(out), cwd=run["tmp"])
        assert result.returncode == 0, result.stderr
        page = out.read_text()
        section = page[page.index(f"<h2>Forecast of the next {H} steps"):]
        sections.append(section[:section.index("</section>")])
    assert sections[0] == sections[1] and sections[0].count('<img class="chart small"') == 6


def _legend(page: str) -> list[str]:
    """The labels of the future section's legend."""
    section = page[page.index("<h2>Forecast of the next"):]
    legend = section[section.index('<p class="legend">'):section.index("</section>")]
    return re.findall(r"</i>([^<]+)</span>", legend[:legend.index("</p>")])


def test_the_future_s_legend_names_history_only_when_a_chart_draws_it(run):
    """A forecast run that kept no history (none of the series' last points) draws the forecast
    alone: its legend does not promise a history line that no chart has."""
    s3, prefix = run["s3"], LAYOUT.forecasts(run["run_id"])
    record = get_json(s3, BUCKET, LAYOUT.training_record(run["run_id"]))
    copy = "run-20261101-000000-0b7e"
    put_json(s3, BUCKET, LAYOUT.final_record(copy), record | {"run_id": copy, "config": {
        **record["config"], "kind": "forecast"}})
    for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
        if not o["Key"].endswith(("history.parquet", "sample.parquet")):
            s3.copy_object(Bucket=BUCKET, Key=LAYOUT.forecasts(copy) + o["Key"][len(prefix):],
                           CopySource={"Bucket": BUCKET, "Key": o["Key"]})
    pages = {}
    for run_id in (run["run_id"], copy):
        out = run["tmp"] / f"legend-{run_id}.html"
        result = run_cli(run["env"], "--local", "report", run_id, "--out", str(out), cwd=run["tmp"])
        assert result.returncode == 0, result.stderr
        pages[run_id] = out.read_text()
    assert _legend(pages[run["run_id"]])[0] == "history"
    assert _legend(pages[copy]) == ["median forecast", "10-90 %", "20-80 %"]
    assert pages[copy].count('<img class="chart small"') >= 1


# -- the evaluation files --------------------------------------------------------------------------
def test_forecasts_cover_exactly_the_held_out_windows_with_ordered_quantiles(run):
    f = _parquet(run, "forecasts.parquet")
    # series x windows x horizon x (fine-tuned, fine-tuned on the target alone, seasonal naive): the
    # data has a covariate (temperature, past-only), so the model is scored without it too.
    assert len(f) == ITEMS * W * H * 3
    assert set(f.model) == {"finetuned", "finetuned_no_covariates", "seasonal_naive"} and set(f.window) == set(range(W))
    q = f[QUANTILE_COLUMNS].to_numpy()
    assert np.isfinite(q).all() and (np.diff(q, axis=1) >= 0).all()
    # No leakage: what was scored is exactly the last W*H points of every series, which training
    # never got (tests/test_backtest.py checks the split that feeds training).
    frame = run["frame"]
    held = frame.groupby("item_id").tail(W * H)
    scored = f[f.model == "finetuned"]
    assert set(zip(scored.item_id, scored.timestamp)) == set(zip(held.item_id, held.timestamp))
    merged = scored.merge(held, on=["item_id", "timestamp"], suffixes=("", "_data"))
    assert np.allclose(merged.target, merged.target_data)


def test_scores_summary_and_loss_history_are_saved_with_the_run(run):
    scores = _parquet(run, "series_scores.parquet")
    assert len(scores) == ITEMS * W * 3 and scores.wql.notna().all()
    loss = _parquet(run, "loss_history.parquet")
    assert loss.step.is_monotonic_increasing and loss.step.iloc[-1] == 30
    assert {"loss", "learning_rate", "grad_norm", "epoch", "attempt"} <= set(loss.columns)
    summary = get_json(run["s3"], BUCKET, LAYOUT.evaluation(run["run_id"]) + "summary.json")
    assert summary["windows"] == W and len(summary["per_window"]["finetuned"]) == W
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(run["run_id"]))
    assert summary["metrics"] == record["metrics"]


def test_runs_json_carries_the_evaluation_summary(run):
    runs = json.loads(run_cli(run["env"], "--local", "runs", "--json").stdout)
    mine = next(r for r in runs if r["run_id"] == run["run_id"])
    assert mine["evaluation"]["windows"] == W and mine["evaluation"]["series"] == ITEMS
    assert len(mine["evaluation"]["per_window"]["seasonal_naive"]) == W


def plant_other(run) -> None:
    """OTHER: an older run like this one, at a higher learning rate and twice the fine-tuned WQL,
    whose record is only under logs/ (from before the kept copy). Each test that reads it plants
    it: under xdist the tests of this module share no order."""
    record = get_json(run["s3"], BUCKET, LAYOUT.training_record(run["run_id"]))
    other = json.loads(json.dumps(record))
    other.update(run_id=OTHER, started_at="2026-11-01T00:00:00.000Z")
    other["config"]["training"]["learning_rate"] = 0.01
    other["metrics"]["finetuned"]["wql"] = record["metrics"]["finetuned"]["wql"] * 2
    put_json(run["s3"], BUCKET, LAYOUT.training_record(OTHER), other)


def test_compare_shows_what_differs_and_marks_the_best(run):
    plant_other(run)
    result = run_cli(run["env"], "--local", "runs", "compare", run["run_id"], OTHER, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["config"] == {"training.learning_rate": {run["run_id"]: 0.001, OTHER: 0.01}}
    wql = next(r for r in doc["metrics"] if r["name"] == "WQL fine-tuned")
    assert wql["best"] == [run["run_id"]] and wql["better"] == "lower"
    naive = next(r for r in doc["metrics"] if r["name"] == "WQL seasonal naive")
    assert naive["best"] == []  # the same for both: no best
    people = run_cli(run["env"], "--local", "runs", "compare", run["run_id"], OTHER)
    assert people.returncode == 0 and "★" in people.stdout and "training.learning_rate" in people.stdout


def test_history_outlives_the_logs_while_the_model_exists(run):
    """logs/ expires after 14 days, run outputs after 60: the run's final record is kept beside
    its outputs, so from day 15 `runs`, `monitor RUN`, `report` and `runs compare` still read it.
    A run from before the kept copy (its record only under logs/) reads as before (OTHER)."""
    s3, run_id = run["s3"], run["run_id"]
    plant_other(run)
    kept = get_json(s3, BUCKET, LAYOUT.final_record(run_id))
    assert kept == get_json(s3, BUCKET, LAYOUT.training_record(run_id)) and kept["final_status"] == "completed"
    logs = {o["Key"]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
            for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=LAYOUT.logs(run_id))["Contents"]}
    for key in logs:  # what the 14-day lifecycle rule does
        s3.delete_object(Bucket=BUCKET, Key=key)
    try:
        runs = json.loads(run_cli(run["env"], "--local", "runs", "--json").stdout)
        mine = next(r for r in runs if r["run_id"] == run_id)
        assert mine["final_status"] == "completed" and mine["metrics"] == kept["metrics"]
        assert OTHER in {r["run_id"] for r in runs} and next(r for r in runs if r["run_id"] == OTHER)["metrics"]
        shown = json.loads(run_cli(run["env"], "--local", "monitor", run_id, "--json").stdout)
        assert shown["final_status"] == "completed"
        out = run["tmp"] / "after-logs" / "r.html"
        assert run_cli(run["env"], "--local", "report", run_id, "--out", str(out), cwd=run["tmp"]).returncode == 0
        assert "completed" in out.read_text()
        compared = run_cli(run["env"], "--local", "runs", "compare", run_id, OTHER, "--json")
        assert compared.returncode == 0, compared.stderr
    finally:
        for key, body in logs.items():
            s3.put_object(Bucket=BUCKET, Key=key, Body=body)


# -- in a real browser -----------------------------------------------------------------------------
@pytest.mark.parametrize("viewport", [
    pytest.param(dict(width=1280, height=900), id="desktop"),
    pytest.param(dict(width=390, height=844, mobile=True, scale=2), id="phone"),
])
def test_the_report_in_headless_chromium(run, viewport, tmp_path):
    from tests.browser import Browser, find_chromium

    if find_chromium() is None and os.environ.get("CHRONOS_SKIP_BROWSER") == "1":
        pytest.skip("CHRONOS_SKIP_BROWSER=1 and no Chromium")
    page = run["tmp"] / "runs" / run["run_id"] / "report.html"
    name = "phone" if viewport.get("mobile") else "desktop"
    shot = tmp_path / f"report-{name}.png"
    with Browser.start(tmp_path) as browser:
        load = browser.open(page, screenshot=shot, **viewport)
    assert len(load.images) >= 5
    assert all(img["naturalWidth"] > 0 and img["naturalHeight"] > 0 for img in load.images), load.images
    assert load.console_errors == []
    assert load.network_requests == [], "the report must not reach the network"
    assert load.scroll_width <= load.viewport_width, "nothing is wider than the screen"
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("CHRONOS_REPORT_SCREENSHOTS")
    if keep:  # where a person (or docs/) wants to look at them
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
