"""A failure in each phase ends `failed`, with the error recorded, cleanup done and nothing left:
no lock, no model, the sandbox instance terminated. The agent runs as a real subprocess."""
from __future__ import annotations

import pandas as pd
import pytest

from instance.agent.main import EXIT_FAILED
from instance.protocol.state import StateStore
from tests.agent_fixtures import (
    get_json,
    instance_state,
    keys_under,
    launch,
    parquet_bytes,
    run_agent,
    run_config,
    synthetic_frame,
    upload_dataset,
)
from tests.conftest import ENV

pytestmark = pytest.mark.slow


def _good_data():
    return {"a.parquet": parquet_bytes(synthetic_frame(n_items=4, length=64))}


CASES = {
    # name: (files under the dataset prefix, config overrides, agent env, failing phase, error class)
    "missing_dataset_prefix": (None, {"dataset": "cached-datasets/2099/01/"}, {}, "data_sync", "DatasetNotFound"),
    "corrupt_parquet": ({"a.parquet": b"PAR1 this is not parquet"}, {}, {}, "data_sync", "DataValidationError"),
    "bad_schema": (
        {"a.parquet": parquet_bytes(synthetic_frame(n_items=2, length=64).drop(columns=["target"]))},
        {}, {}, "data_sync", "DataValidationError",
    ),
    # The cleanup fault makes the first release of the lock fail: the agent's retry must finish it.
    "exception_in_training": (
        _good_data(), {}, {"CHRONOS_FAULT": "training,cleanup:lock"}, "training", "InjectedFault",
    ),
    "exception_in_results_sync": (_good_data(), {}, {"CHRONOS_FAULT": "results_sync"}, "results_sync", "InjectedFault"),
    # No time left: the soft deadline stops the run at the first check, and it reads as a failure.
    "soft_deadline": (_good_data(), {}, {"CHRONOS_DEADLINE_SECONDS": "0"}, "data_sync", "MaxRuntimeExceeded"),
}
REASONS = {"MaxRuntimeExceeded": "max_runtime_exceeded"}


@pytest.mark.parametrize("case", list(CASES))
def test_failure_in_a_phase_is_recorded_and_cleaned_up(case, s3, bucket, aws, tmp_path):
    files, overrides, env, phase, error_class = CASES[case]
    if files:
        upload_dataset(s3, bucket, files)
    config = run_config()
    config.update(overrides)
    run = launch(s3, bucket, aws, ENV, config)

    proc = run_agent(run, tmp_path, **env)

    assert proc.returncode == EXIT_FAILED, proc.stderr[-3000:]
    record = get_json(s3, bucket, run.layout.training_record(run.run_id))
    assert record["final_status"] == "failed"
    assert record["reason"] == REASONS.get(error_class, error_class)
    assert record["error"]["class"] == error_class and record["error"]["phase"] == phase and record["error"]["message"]
    assert record["phases"][phase]["result"] == "failed"
    assert record["phases"]["cleanup"]["result"] == "ok"
    status = get_json(s3, bucket, run.layout.cleanup_status(run.run_id))
    assert status and all(s["result"] in ("done", "not_found") for s in status["steps"]), status
    assert StateStore(s3, bucket, ENV).read() is None
    assert instance_state(aws, run.instance_id) == "terminated"
    assert not keys_under(s3, bucket, run.layout.models(run.run_id))
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    if case == "exception_in_training":
        assert "trying the failed steps once more" in proc.stderr
    if case == "bad_schema":
        assert "column 'target'" in record["error"]["message"] and "a.parquet" in record["error"]["message"]


def test_a_too_short_series_is_named_in_the_error(s3, bucket, aws, tmp_path):
    frame = synthetic_frame(n_items=3, length=64)
    short = pd.concat([frame[frame.item_id != "item-1"], frame[frame.item_id == "item-1"].head(20)])
    upload_dataset(s3, bucket, {"a.parquet": parquet_bytes(short)})
    run = launch(s3, bucket, aws, ENV, run_config())
    proc = run_agent(run, tmp_path)
    assert proc.returncode == EXIT_FAILED
    message = get_json(s3, bucket, run.layout.training_record(run.run_id))["error"]["message"]
    assert "item 'item-1'" in message and "has 20 points but needs at least 48" in message
