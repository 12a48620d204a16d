"""What a person sees: the live panel, the final report and the runs table."""
from rich.console import Console

from automation.cli.render import final_report, run_panel, runs_table
from automation.runs.records import from_record, from_state
from instance.protocol.timeutil import iso, utcnow

STATE = {
    "run_id": "run-20261128-100000-aaaa", "status": "training", "started_at": iso(utcnow()),
    "heartbeat_at": iso(utcnow()), "executor": "ec2", "instance_type": "g4dn.xlarge", "spot": True,
    "instance_id": "i-0abc", "progress": {"step": 40, "total_steps": 100, "loss": 0.4321, "eta_seconds": 95},
    "history": [{"status": s, "at": iso()} for s in ("initialization", "data_sync", "training")],
}
RECORD = {
    "run_id": "run-20261128-090000-bbbb", "final_status": "completed", "reason": None, "duration_seconds": 3725,
    "host": {"executor": "ec2", "instance_type": "g4dn.xlarge"}, "cost": {"spot": False, "estimated_usd": 0.78},
    "metrics": {"finetuned": {"wql": 0.05, "mase": 0.8}, "zero_shot": {"wql": 0.07, "mase": 0.9},
                "seasonal_naive": {"wql": 0.1, "mase": 1.0}},
    "artifacts": {"model_uri": "s3://b/dev/run-20261128-090000-bbbb/models/"},
    "phases": {"training": {"started_at": iso()}},
}


def text(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_live_panel_shows_phase_progress_loss_eta_elapsed_and_cost():
    out = text(run_panel(from_state(STATE)))
    for expected in ("training", "initialization → data_sync → training", "step 40/100", "loss 0.4321",
                     "ETA 1m35s", "elapsed", "cost so far", "g4dn.xlarge spot", "(estimated)"):
        assert expected in out, expected


def test_final_report_has_the_three_metrics_rows_and_artifacts():
    out = text(final_report(from_record(RECORD)))
    for expected in ("completed", "fine-tuned", "zero-shot (base)", "seasonal naive", "0.0500", "1h02m05s",
                     "$0.78", "s3://b/dev/run-20261128-090000-bbbb/models/"):
        assert expected in out, expected


def test_final_report_shows_the_target_alone_rows_of_a_run_with_covariates():
    record = {**RECORD, "metrics": {**RECORD["metrics"], "finetuned_no_covariates": {"wql": 0.08, "mase": None},
                                    "zero_shot_no_covariates": {"wql": 0.09, "mase": 1.1}}}
    out = text(final_report(from_record(record)))
    assert "fine-tuned, target(s) alone" in out and "0.0800" in out and "zero-shot, target(s) alone" in out
    lines = out.splitlines()
    assert lines.index(next(x for x in lines if "fine-tuned, target(s) alone" in x)) == \
        lines.index(next(x for x in lines if "│ fine-tuned " in x)) + 1


def test_runs_table_shows_status_duration_cost_and_ratio_to_naive():
    out = text(runs_table([from_state(STATE), from_record(RECORD)]))
    assert "training (active)" in out and "completed" in out and "0.50×" in out and "$0.78" in out
