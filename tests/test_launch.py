"""launch's own promises, in-process against moto: a failed provisioning tears down, releases
the lock and records why (quota and capacity told apart); the estimate is shown first."""
from __future__ import annotations

import pytest
import yaml

from automation.context import Target
from automation.errors import ChronosError
from automation.executors.base import ProvisionError
from automation.runs.launch import estimate, launch, plan
from automation.sandbox.control import SandboxInfo, seed
from instance.protocol.artifacts import get_json
from instance.protocol.layout import Layout
from instance.protocol.runconfig import parse_config
from instance.protocol.state import StateStore
from tests.agent_fixtures import parquet_bytes, run_config, synthetic_frame


class RefusingExecutor:
    name = "ec2"

    def __init__(self, kind: str, message: str):
        self.error = ProvisionError(message, kind=kind)
        self.finalized: list[str] = []

    def provision(self, req):
        raise self.error

    def terminate(self, run_id, instance_id):
        pass

    def finalize(self, run_id):
        self.finalized.append(run_id)

    def leftover_stacks(self):
        return []


@pytest.fixture
def target(aws, s3):
    info = SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None)
    seed(info, "dev")
    bucket = info.bucket("dev")
    s3.put_object(Bucket=bucket, Key="cached-datasets/2026/11/a.parquet",
                  Body=parquet_bytes(synthetic_frame(n_items=3, length=64)))
    return Target(env="dev", local=False, region=aws.region, bucket=bucket, endpoint_url=aws.endpoint_url)


@pytest.mark.parametrize("kind,message", [
    ("quota", "AWS refused Auto Scaling CreateAutoScalingGroup (LimitExceeded): the account's quota of Auto "
              "Scaling groups in us-east-1 is used up"),
    ("permissions", "AWS refused EC2 CreateLaunchTemplate (UnauthorizedOperation): these credentials need the "
                    "environment's operator policy"),
])
def test_failed_provisioning_releases_the_lock_and_records_the_kind(target, tmp_path, kind, message):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config()))
    with pytest.raises(ChronosError) as err:
        launch(target, plan(target, cfg), RefusingExecutor(kind, message))
    assert "was not started" in str(err.value) and message in str(err.value)
    assert StateStore(target.s3, target.bucket, "dev").read() is None
    run_id = str(err.value).split()[1]
    record = get_json(target.s3, target.bucket, Layout("dev").training_record(run_id))
    assert record["final_status"] == "failed" and record["reason"] == f"provision_{kind}"
    assert record["error"]["phase"] == "launch"


def test_estimate_names_hourly_and_worst_case():
    cfg = parse_config(run_config() | {"instance": {"type": "g5.xlarge", "spot": True, "max_runtime_minutes": 120}})
    est = estimate(cfg, local=False)
    assert est.spot and 0.4 < est.hourly_usd < 0.5 and est.worst_case_usd == round(est.hourly_usd * 2, 2)
    assert "spot" in est.sentence() and "worst case" in est.sentence() and "120-minute" in est.sentence()
    assert estimate(cfg, local=True).sentence().startswith("local run: $0.00")
    assert "training on" not in est.sentence()  # one GPU: nothing more to say


def test_estimate_of_a_multi_gpu_type_bills_the_whole_machine():
    every = estimate(parse_config(run_config() | {"instance": {"type": "p4d.24xlarge"}}), local=False)
    assert every.gpus == 8 and every.hourly_usd > 32 and "(8x A100 40 GB, training on all 8: $4.098 per training GPU-hour)" in every.sentence()
    some = estimate(parse_config(run_config() | {"instance": {"type": "g5.12xlarge", "gpus": 2}}), local=False)
    assert some.hourly_usd == round(5.672 + 100 * 0.08 / 730, 4)  # the machine, whatever trains on it
    assert "training on 2 of 4, all billed: $2.841 per training GPU-hour" in some.sentence()


class InstantExecutor(RefusingExecutor):
    """Provisions a machine whose run is over before launch notes the instance id."""

    def __init__(self, target):
        super().__init__("other", "")
        self.target = target

    def provision(self, req):
        from automation.executors.base import Provisioned

        store = StateStore(self.target.s3, self.target.bucket, "dev")
        lease = store.read()
        store.release(store.move(store.move(lease, "failed"), "cleanup"))
        return Provisioned(instance_id="i-0fast")


def test_a_run_that_ends_before_launch_notes_its_instance_is_not_an_error(target, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config()))
    launched = launch(target, plan(target, cfg), InstantExecutor(target))
    assert launched.instance_id == "i-0fast" and StateStore(target.s3, target.bucket, "dev").read() is None
