"""`report` and `runs compare` on runs planted in the sandbox (no training): each bad input is
one sentence with its own exit code, and a failed run's report shows what exists and says what
is missing. The report of a real run is tests/test_report.py."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from automation.cli.main import cli
from automation.report.compare import best_of, compare_records, config_diff
from automation.sandbox import motoserver
from automation.sandbox.control import SandboxInfo, seed
from automation.sandbox.strictmoto import DEPLOYER
from instance.protocol.artifacts import put_json
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import Layout, bucket_name
from instance.protocol.state import StateStore
from tests.cli_helpers import cli_env

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
LAYOUT = Layout("dev")
OLD = "run-20261001-090000-0001"  # completed before runs kept an evaluation folder
FAILED = "run-20261002-090000-0002"
ACTIVE = "run-20261003-090000-0003"
UNKNOWN = "run-20261004-090000-0004"
CONFIG = {"dataset": "cached-datasets/2026/10/", "model": {"base": "scratch:tiny", "finetune_mode": "full"},
          "training": {"prediction_length": 8, "learning_rate": 0.001, "num_steps": 100},
          "instance": {"type": "g5.xlarge", "spot": False}}


def record(run_id: str, status: str, **extra) -> dict:
    doc = {
        "run_id": run_id, "env": "dev", "final_status": status, "reason": None, "error": None,
        "started_at": "2026-10-01T09:00:00.000Z", "ended_at": "2026-10-01T09:10:00.000Z", "duration_seconds": 600,
        "host": {"executor": "ec2", "instance_type": "g5.xlarge", "spot": False},
        "cost": {"instance_type": "g5.xlarge", "spot": False, "hourly_usd": 1.0, "estimated_usd": 0.1667},
        "config": CONFIG, "training": {"steps_done": 100, "total_steps": 100, "final_loss": 0.5},
        "phases": {
            "initialization": {"started_at": "2026-10-01T09:02:00.000Z", "ended_at": "2026-10-01T09:02:30.000Z",
                               "seconds": 30, "result": "ok"},
            "data_sync": {"started_at": "2026-10-01T09:02:30.000Z", "ended_at": "2026-10-01T09:03:00.000Z",
                          "seconds": 30, "result": "ok"},
            "training": {"started_at": "2026-10-01T09:03:00.000Z", "ended_at": "2026-10-01T09:09:00.000Z",
                         "seconds": 360, "result": "ok"},
        },
        "metrics": {"finetuned": {"wql": 0.05, "mase": 0.8}, "zero_shot": None,
                    "seasonal_naive": {"wql": 0.1, "mase": 1.0}},
        "artifacts": {"log_uri": f"s3://{BUCKET}/dev/logs/{run_id}/agent.log"},
    }
    doc.update(extra)
    return doc


@pytest.fixture(scope="module")
def sandbox(moto_endpoint):
    """Planted once for the module: nothing here changes the sandbox."""
    motoserver.reset(moto_endpoint)
    aws = AwsTarget(region="us-east-1", endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials)
    seed(SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None), "dev")
    s3 = client("s3", aws)
    put_json(s3, BUCKET, LAYOUT.training_record(OLD), record(OLD, "completed"))
    failed = record(FAILED, "failed", reason="RuntimeError", metrics=None,
                    error={"class": "RuntimeError", "message": "CUDA error: out of memory", "phase": "training"})
    failed["phases"]["training"].update(result="failed", seconds=120, ended_at="2026-10-01T09:05:00.000Z")
    put_json(s3, BUCKET, LAYOUT.training_record(FAILED), failed)
    loss = pd.DataFrame({"step": [10, 20, 30], "loss": [2.0, 1.5, 1.2], "learning_rate": [1e-4, 9e-5, 8e-5],
                         "grad_norm": [1.0, 0.9, 0.8], "epoch": [0.1, 0.2, 0.3], "attempt": [1, 1, 1]})
    buf = io.BytesIO()
    loss.to_parquet(buf, index=False)
    s3.put_object(Bucket=BUCKET, Key=LAYOUT.evaluation(FAILED) + "loss_history.parquet", Body=buf.getvalue())
    StateStore(s3, BUCKET, "dev").acquire(ACTIVE, executor="ec2", instance_type="g5.xlarge")
    return aws


@pytest.fixture
def planted(sandbox, tmp_path, monkeypatch):
    for name, value in cli_env(sandbox.endpoint_url, tmp_path / "home").items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(cli, ["--local", *args])


@pytest.mark.parametrize("args,code,sentence", [
    (["report", UNKNOWN], 2, f"error: run {UNKNOWN} is neither active nor recorded in env dev; "
                             "list runs with `chronos-train runs`"),
    (["report", ACTIVE], 3, f"error: run {ACTIVE} has not finished (it is in initialization); its report can be "
                            f"made once it ends: `chronos-train monitor {ACTIVE} --follow`"),
    (["report", OLD], 1, f"error: run {OLD} completed before runs kept an evaluation folder (nothing under "
                         f"s3://{BUCKET}/dev/{OLD}/evaluation/), so it has no report; its metrics are in "
                         f"`chronos-train monitor {OLD}`"),
    (["report", "run-nope"], 2, "error: 'run-nope' is not a run id"),
    (["runs", "compare", OLD, UNKNOWN], 2, f"error: run {UNKNOWN} is neither active nor recorded"),
    (["runs", "compare", OLD, ACTIVE], 3, f"error: run {ACTIVE} has not finished"),
    (["runs", "compare", OLD, OLD], 2, "error: name at least two different runs to compare"),
], ids=["unknown", "unfinished", "before-evaluation", "not-a-run-id", "compare-unknown", "compare-unfinished",
        "compare-one"])
def test_each_bad_input_is_one_sentence_with_its_exit_code(planted, args, code, sentence):
    result = invoke(*args)
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(sentence), result.output
    assert not (planted / "runs").exists(), "nothing is written for a refused report"


def test_a_failed_run_reports_what_exists_and_says_what_is_missing(planted):
    result = invoke("report", FAILED)
    assert result.exit_code == 0, result.output
    page = (planted / "runs" / FAILED / "report.html").read_text()
    assert result.output.strip() == f"runs/{FAILED}/report.html"
    for text in ("failed", "RuntimeError", "CUDA error: out of memory (in training)", "Not in this report",
                 "No evaluation: the run failed (RuntimeError) before its model was scored.",
                 "No model: only a completed run uploads one.", "3 logged steps of 100",
                 "the run stopped at the red line", "launch and boot", "$0.0333"):
        assert text in page, text
    assert page.count("<img ") == 2 and page.count("<picture>") == 2  # the loss so far, the timeline
    assert "No loss history" not in page


def test_compare_a_run_from_before_the_evaluation_folder(planted):
    result = invoke("runs", "compare", OLD, FAILED, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["runs"] == [OLD, FAILED] and doc["config"] == {}
    status = next(r for r in doc["metrics"] if r["name"] == "status")
    assert status["values"] == {OLD: "completed", FAILED: "failed"} and status["best"] == []


def test_config_diff_and_best_of_a_row():
    a = {"training": {"lr": 1, "steps": 5}, "model": {"base": "x"}}
    b = {"training": {"lr": 2, "steps": 5}, "model": {"base": "x"}, "evaluation": {"windows": 3}}
    assert config_diff([a, b]) == {"evaluation.windows": [None, 3], "training.lr": [1, 2]}
    assert best_of([0.2, 0.1, None], "lower") == [1] and best_of([0.2, 0.1], "higher") == [0]
    assert best_of([0.1, 0.1], "lower") == [] and best_of([0.1, None], "lower") == [] and best_of([1, 2], None) == []
    rows = {r.name: r for r in compare_records(["a", "b"], [
        {"metrics": {"finetuned": {"wql": 0.1}, "seasonal_naive": {"wql": 0.2}}, "duration_seconds": 10},
        {"metrics": {"finetuned": {"wql": 0.3}, "seasonal_naive": {"wql": 0.2}}, "duration_seconds": 5}]).rows}
    assert rows["WQL fine-tuned ÷ naive"].values == pytest.approx([0.5, 1.5]) and rows["WQL fine-tuned ÷ naive"].best == [0]
    assert rows["duration (s)"].best == [1] and "MASE zero-shot" not in rows
