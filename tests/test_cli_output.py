"""The CLI's shape: one error mapping for every command, `status` is `monitor`, the follow loop's
parts, what non-interactive output looks like (one line per change, nothing cut), knobs."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from automation.cli import run_commands
from automation.cli.main import cli
from automation.cli.render import LinePrinter
from automation.runs.records import RunView
from automation.sandbox.control import SandboxInfo, seed
from instance.protocol.artifacts import put_json
from instance.protocol.layout import Layout, bucket_name
from tests.cli_helpers import cli_env, run_cli

BUCKET = bucket_name("dev", "123456789012", "us-east-1")
RUN = "run-20261128-090000-bbbb"
RECORD = {
    "run_id": RUN, "final_status": "completed", "reason": None, "duration_seconds": 65,
    "started_at": "2026-11-28T09:00:00.000Z", "ended_at": "2026-11-28T09:01:05.000Z",
    "host": {"executor": "ec2", "instance_type": "g4dn.xlarge", "instance_id": "i-0123456789abcdef0"},
    "cost": {"spot": False, "estimated_usd": 0.01},
    "metrics": {"finetuned": {"wql": 0.05, "mase": 0.8}, "seasonal_naive": {"wql": 0.1, "mase": 1.0}},
    "artifacts": {"model_uri": f"s3://{BUCKET}/dev/{RUN}/models/",
                  "log_uri": f"s3://{BUCKET}/dev/logs/{RUN}/agent.log"},
}


@pytest.fixture
def env(aws, tmp_path):
    seed(SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None), "dev")
    return cli_env(aws.endpoint_url, tmp_path / "home")


# -- one mapping, one monitor -------------------------------------------------------------------------
def test_status_is_monitor_registered_twice():
    assert cli.commands["status"] is cli.commands["monitor"]


RUN_ARG = "run-20261128-090000-cccc"


@pytest.mark.parametrize("command,where,raised,code,sentence", [
    (["--local", "runs"], "automation.runs.records.history", KeyboardInterrupt(), 130, "error: interrupted"),
    (["--local", "data", "ls"], "automation.datasets.listing", RuntimeError("disk on fire"), 1,
     "error: RuntimeError: disk on fire (set CHRONOS_DEBUG=1 for a traceback)"),
    (["--local", "verify-cleanup"], "automation.runs.verify.verify", LookupError("x"), 1, "error: LookupError: x"),
    (["--local", "monitor", "--json"], "automation.runs.records.view", OSError("gone"), 1, "error: OSError: gone"),
    (["--local", "logs", RUN_ARG], "automation.cli.logs.stream", ValueError("v"), 1, "error: ValueError: v"),
    (["--local", "kill", RUN_ARG], "automation.runs.ending.kill", KeyboardInterrupt(), 130, "error: interrupted"),
    (["--local", "report", RUN_ARG], "automation.report.page.write_report", RuntimeError("r"), 1,
     "error: RuntimeError: r"),
    (["--local", "runs", "compare", RUN_ARG, RUN], "automation.report.compare.compare", RuntimeError("c"), 1,
     "error: RuntimeError: c"),
    (["--local", "doctor"], "automation.runs.doctor.doctor", RuntimeError("d"), 1, "error: RuntimeError: d"),
    (["data", "validate", "x.parquet"], "automation.datasets.validate", RuntimeError("e"), 1, "error: RuntimeError: e"),
    (["--local", "sandbox", "status"], "automation.sandbox.control.status", RuntimeError("s"), 1,
     "error: RuntimeError: s"),
])
def test_every_command_maps_errors_the_same_way(env, monkeypatch, command, where, raised, code, sentence):
    """One mapping (ChronosGroup) for every subject's commands: whatever a command's one function
    raises becomes one sentence and its exit code, never a traceback."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module, attr = where.rsplit(".", 1)

    def boom(*args, **kwargs):
        raise raised

    monkeypatch.setattr(f"{module}.{attr}", boom)
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == code and sentence in result.output and "Traceback" not in result.output


def test_a_knob_that_is_not_a_number_is_one_sentence_and_exit_2(env):
    result = run_cli({**env, "CHRONOS_STALE_SECONDS": "five minutes"}, "--local", "verify-cleanup")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: CHRONOS_STALE_SECONDS must be a number of seconds (0 or more), not 'five minutes'"


# -- following ------------------------------------------------------------------------------------------
def view(status: str, step: int | None = None, loss: float | None = None, active: bool = True) -> RunView:
    progress = {"step": step, "total_steps": 100, "loss": loss} if step is not None else {}
    return RunView(run_id=RUN, active=active, status=status, progress=progress)


def test_line_printer_prints_one_line_per_change():
    lines: list[str] = []
    now = [0.0]
    printer = LinePrinter(lines.append, every=5.0, clock=lambda: now[0])
    for v in (view("initialization"), view("initialization"), view("data_sync"), view("data_sync"),
              view("training", 1, 0.9)):
        printer(v)
        now[0] += 1
    printer(view("training", 2, 0.8))  # 1 s after the last line: throttled
    now[0] += 10
    printer(view("training", 2, 0.8))  # due, and changed since the last printed line
    printer(view("training", 2, 0.8))  # identical: never twice
    now[0] += 10
    printer(view("training", 2, 0.8))
    printer(view("completed", active=False))  # the final report says it
    assert lines == [f"{RUN}: initialization", f"{RUN}: data_sync", f"{RUN}: training step 1/100 loss 0.9000",
                     f"{RUN}: training step 2/100 loss 0.8000"]


class FinalizeFails:
    name = "ec2"

    def reconcile(self):
        return []

    def finalize(self, run_id):
        raise RuntimeError("error: failed to load checkpoint: blob (key \".pulumi/stacks/...\") (code=Unknown)")


def test_a_failing_stack_tidy_after_a_completed_follow_is_a_warning(env, aws, monkeypatch, capsys, tmp_path):
    from automation.context import Target

    monkeypatch.chdir(tmp_path)
    target = Target(env="dev", local=True, region="us-east-1", bucket=BUCKET, endpoint_url=aws.endpoint_url)
    from instance.protocol.aws import client

    put_json(client("s3", target.aws), BUCKET, Layout("dev").training_record(RUN), RECORD)
    with pytest.raises(SystemExit) as done:
        run_commands._follow(target, FinalizeFails(), RUN, download=True, as_json=True)
    assert done.value.code == 0, "a completed run stays completed"
    out, err = capsys.readouterr()
    assert json.loads(out)["final_status"] == "completed"
    assert "warning: the run's stack record stays" in err and "verify-cleanup --fix" in err
    assert "model downloaded to" in err


# -- output that is not a terminal -------------------------------------------------------------------
def test_non_interactive_output_never_cuts_ids_or_uris(env, aws):
    from instance.protocol.aws import client

    put_json(client("s3", aws), BUCKET, Layout("dev").training_record(RUN), RECORD)
    narrow = {**env, "COLUMNS": "40"}
    runs = run_cli(narrow, "--local", "runs")
    assert runs.returncode == 0 and RUN in runs.stdout and "…" not in runs.stdout
    report = run_cli(narrow, "--local", "monitor", RUN)
    assert report.returncode == 0, report.stderr
    for uri in RECORD["artifacts"].values():
        assert uri in report.stdout
    assert "…" not in report.stdout
