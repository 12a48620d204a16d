"""What a person sees of a sweep through the real CLI (--local): the launch's estimate of the whole
sweep against the same trials as separate runs, monitor's trials done / running / left and the
best so far, the report's trials table and metric-by-setting charts, and `runs compare` on a
sweep's trials. One 2-trial sweep of scratch:tiny (module fixture) serves every test."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from automation.cli.render import sweep_line
from automation.sandbox import motoserver
from instance.protocol.runconfig import parse_config
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.cli_helpers import cli_env, run_cli
from tests.test_report import _svg_texts

pytestmark = pytest.mark.slow
SWEEP = {"grid": {"learning_rate": [1.0e-2, 1.0e-4]}}


@pytest.fixture(scope="module")
def run(moto_endpoint, tmp_path_factory):
    motoserver.reset(moto_endpoint)
    tmp = tmp_path_factory.mktemp("sweep-cli")
    data = write_parquet(tmp / "data" / "train.parquet", synthetic_frame(n_items=4, length=64))
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(dataset=str(data)) | {"sweep": SWEEP}))
    env = cli_env(moto_endpoint, tmp / "home", CHRONOS_HEARTBEAT_SECONDS="1")
    result = run_cli(env, "--local", "launch", str(config), "--follow", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(run_id=result.stdout.splitlines()[0], env=env, tmp=tmp, result=result)


def test_launch_prices_the_whole_sweep_and_the_same_trials_as_separate_runs(run):
    line = next(x for x in run["result"].stderr.splitlines() if "sweep:" in x)
    assert re.search(r"sweep: 2 trials, 1 at a time: at least \d+ min, ~\$[\d.]+ in this run; as 2 separate runs "
                     r"\(a start-up each\): at least \d+ min, ~\$[\d.]+", line), line


def test_separate_runs_cost_a_start_up_each():
    from automation.runs.launch import estimate

    cfg = parse_config(run_config(base="amazon/chronos-2", num_steps=500, batch_size=64, context_length=512,
                                  prediction_length=24) | {"sweep": {"grid": {"learning_rate": [1e-5, 1e-4, 1e-3, 1e-2]}}})
    est = estimate(cfg, local=False)
    assert est.sweep.trials == 4 and est.sweep.slots == 1
    # Four trials in one run pay one start-up; as four runs, four.
    assert est.sweep.separate_seconds - est.sweep.seconds == pytest.approx(3 * 150.0)
    assert est.separate_usd > est.sweep_usd > 0


def test_monitor_shows_the_trials_and_the_best(run):
    result = run_cli(run["env"], "--local", "monitor", run["run_id"], "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["sweep"]["done"] == 2 and shown["sweep"]["left"] == 0 and shown["sweep"]["best"]["trial"] in (0, 1)
    people = run_cli(run["env"], "--local", "monitor", run["run_id"])
    assert "trials" in people.stdout and "2 done · 0 running · 0 left · best so far: trial" in people.stdout


def test_the_live_line_counts_trials_running_and_left():
    line = sweep_line({"done": 1, "running": 2, "left": 3, "metric": "wql",
                       "best": {"trial": 0, "value": 0.123456, "params": {"learning_rate": 0.001}}})
    assert line == "1 done · 2 running · 3 left · best so far: trial 0, wql 0.1235 (learning_rate=0.001)"


def test_the_report_has_a_trials_table_and_a_chart_per_setting(run):
    out = run["tmp"] / "r.html"
    result = run_cli(run["env"], "--local", "report", run["run_id"], "--out", str(out), cwd=run["tmp"])
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    section = page[page.index("<h2>Sweep</h2>"):page.index("</section>", page.index("<h2>Sweep</h2>"))]
    assert section.count("<tr>") == 3  # the head and one row per trial
    assert "learning_rate" in section and "the run&#x27;s model" in section and "cost share" in section
    assert "WQL by learning_rate" in _svg_texts(section)


def test_runs_compare_on_a_sweep_s_trials(run):
    rid = run["run_id"]
    result = run_cli(run["env"], "--local", "runs", "compare", rid, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["runs"] == [f"{rid}#0", f"{rid}#1"]
    assert doc["config"] == {"training.learning_rate": {f"{rid}#0": 1.0e-4, f"{rid}#1": 1.0e-2}} or \
        doc["config"] == {"training.learning_rate": {f"{rid}#0": 1.0e-2, f"{rid}#1": 1.0e-4}}
    wql = next(r for r in doc["metrics"] if r["name"] == "WQL fine-tuned")
    record = json.loads(run_cli(run["env"], "--local", "monitor", rid, "--json").stdout)
    assert wql["best"] == [f"{rid}#{record['sweep']['best']['trial']}"]
    one = run_cli(run["env"], "--local", "runs", "compare", f"{rid}#0", f"{rid}#1")
    assert one.returncode == 0 and "★" in one.stdout
    missing = run_cli(run["env"], "--local", "runs", "compare", f"{rid}#0", f"{rid}#7")
    assert missing.returncode == 2 and f"run {rid} has no trial 7" in missing.stderr
