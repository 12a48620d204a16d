from datetime import datetime, timezone

import pytest

from instance.protocol.layout import Layout, LayoutError, bucket_name, check_run_id, dataset_prefix, new_run_id, run_started_at


def test_bucket_and_keys():
    assert bucket_name("dev", "123456789012", "us-east-1") == "chronos-training-dev-123456789012-us-east-1"
    lay = Layout("dev")
    rid = "run-20261128-203700-1a2b"
    assert lay.state == "dev/system-state.json"
    assert lay.infra == "dev/infra.json"
    assert lay.training_record(rid) == f"dev/logs/{rid}/training.json"
    assert lay.cleanup_status(rid) == f"dev/logs/{rid}/cleanup_status.json"
    assert lay.agent_log(rid) == f"dev/logs/{rid}/agent.log"
    assert lay.models(rid) == f"dev/{rid}/models/"
    assert lay.checkpoints(rid) == f"dev/{rid}/checkpoints/"
    assert lay.model_metadata(rid) == f"dev/{rid}/model_metadata.json"
    assert lay.run_config(rid) == f"dev/{rid}/run.yaml"
    assert lay.bundle(rid) == f"dev/{rid}/bundle.tar.gz"
    assert lay.pulumi_prefix == "dev/pulumi/"
    assert dataset_prefix("2026/11") == "cached-datasets/2026/11/"


def test_run_ids_are_sortable_and_checked():
    rid = new_run_id(datetime(2026, 11, 28, 20, 37, 1, tzinfo=timezone.utc))
    assert rid.startswith("run-20261128-203701-") and check_run_id(rid) == rid
    assert run_started_at(rid) == datetime(2026, 11, 28, 20, 37, 1, tzinfo=timezone.utc)
    for bad in ("run-1", "20261128-203701-abcd", "run-20261128-203701-ABCD", "../etc"):
        with pytest.raises(LayoutError, match="not a run id"):
            check_run_id(bad)


def test_bad_env_and_month_are_refused():
    with pytest.raises(LayoutError, match="unknown environment 'qa'"):
        Layout("qa")
    with pytest.raises(LayoutError, match="YYYY/MM"):
        dataset_prefix("2026-11")
