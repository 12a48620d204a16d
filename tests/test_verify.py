"""verify-cleanup finds billable leftovers by tag and by listing, and --fix is idempotent."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest

from automation.context import Target
from automation.executors.local import LocalExecutor
from automation.runs.verify import verify
from automation.sandbox.control import SandboxInfo, seed
from automation.sandbox.strictmoto import OPERATORS
from instance.protocol.artifacts import get_json
from instance.protocol.ec2 import run_tags
from instance.protocol.layout import Layout
from instance.protocol.state import StateStore

RUN = "run-20261128-080000-dead"


@pytest.fixture
def target(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("CHRONOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHRONOS_LAUNCH_GRACE_SECONDS", "0")
    info = SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None)
    seed(info, "dev")
    # verify-cleanup acts as the operator, as `chronos-train --local verify-cleanup` does.
    return Target(env="dev", local=True, region=aws.region, bucket=info.bucket("dev"), endpoint_url=aws.endpoint_url,
                  credentials=OPERATORS["dev"].credentials)


@pytest.fixture
def deployer(aws, target):
    """What plants the leftovers (machines nobody ended, a volume, a stop EC2 made): the deployer."""
    return replace(target, credentials=aws.credentials)


@pytest.fixture
def executor(target):
    return LocalExecutor(target.aws, "dev", target.bucket)


def _orphan_instance(target, run_id=RUN, executor_tag="ec2") -> str:
    resp = target.ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                                    TagSpecifications=[{"ResourceType": "instance",
                                                        "Tags": run_tags(run_id, "dev", executor_tag)}])
    return resp["Instances"][0]["InstanceId"]


def test_clean_sandbox_reports_storage_by_prefix(target, executor):
    target.s3.put_object(Bucket=target.bucket, Key="cached-datasets/2026/11/a.parquet", Body=b"x" * 1000)
    report = verify(target, executor, do_fix=False)
    assert report.clean
    prefixes = report.storage["prefixes"]
    assert prefixes["cached-datasets/"]["bytes"] == 1000 and "dev/" in prefixes
    assert report.storage["runs_and_logs_usd_per_month"] < 0.05


def test_orphans_found_by_tag_then_fixed_idempotently(target, deployer, executor):
    instance = _orphan_instance(deployer)
    volume = deployer.ec2.create_volume(AvailabilityZone="us-east-1a", Size=100, VolumeType="gp3", TagSpecifications=[
        {"ResourceType": "volume", "Tags": [{"Key": "Project", "Value": "Chronos-Training"}]}])["VolumeId"]
    upload = target.s3.create_multipart_upload(Bucket=target.bucket, Key=f"dev/{RUN}/models/model.safetensors")

    report = verify(target, executor, do_fix=False)
    found = {(f.kind, f.id) for f in report.findings}
    assert found == {("instance", instance), ("volume", volume), ("multipart_upload", upload["UploadId"])}

    fixed = verify(target, executor, do_fix=True)
    assert fixed.clean and {(f.kind, f.id) for f in fixed.fixed} == found
    state = target.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"
    record = get_json(target.s3, target.bucket, Layout("dev").training_record(RUN))
    assert record["final_status"] == "failed" and record["reason"] == "lost"
    again = verify(target, executor, do_fix=True)
    assert again.clean and again.fixed == []


def test_a_stopped_machine_is_a_leftover_that_fix_terminates(target, deployer, executor, monkeypatch):
    """A machine that powered off may be stopped, not terminated: it runs nothing, its volume
    bills. No grace window (it is not starting), and --fix ends it and records its run."""
    monkeypatch.setenv("CHRONOS_LAUNCH_GRACE_SECONDS", "600")
    instance = _orphan_instance(deployer)
    deployer.ec2.stop_instances(InstanceIds=[instance])
    report = verify(target, executor, do_fix=False)
    assert [(f.kind, f.id, f.run_id) for f in report.findings] == [("instance", instance, RUN)]
    assert "stopped with no active run" in report.findings[0].detail and report.starting == []
    fixed = verify(target, executor, do_fix=True)
    assert fixed.clean and [f.id for f in fixed.fixed] == [instance]
    state = target.ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"


def test_a_stopped_former_machine_of_a_live_run_is_ended_and_the_run_goes_on(target, deployer, executor):
    running, stopped = _orphan_instance(deployer), _orphan_instance(deployer)
    deployer.ec2.stop_instances(InstanceIds=[stopped])
    store = StateStore(target.s3, target.bucket, "dev")
    lease = store.acquire(RUN, executor="ec2", instance_id=running)
    report = verify(target, executor, do_fix=False)
    assert report.active_run == RUN and [(f.kind, f.id) for f in report.findings] == [("instance", stopped)]
    assert "a former machine of the active run" in report.findings[0].detail
    fixed = verify(target, executor, do_fix=True)
    assert fixed.clean and fixed.active_run == RUN and store.read().etag == lease.etag  # the run untouched
    states = {i: target.ec2.describe_instances(InstanceIds=[i])["Reservations"][0]["Instances"][0]["State"]["Name"]
              for i in (running, stopped)}
    assert states == {running: "running", stopped: "terminated"}


def test_just_created_instance_gets_a_grace_window(target, deployer, executor, monkeypatch):
    monkeypatch.setenv("CHRONOS_LAUNCH_GRACE_SECONDS", "600")
    instance = _orphan_instance(deployer)
    report = verify(target, executor, do_fix=False)
    assert report.clean and report.starting == [instance]


def test_stale_lock_is_released_and_recorded_lost(target, executor, monkeypatch):
    monkeypatch.setenv("CHRONOS_STALE_SECONDS", "1")
    store = StateStore(target.s3, target.bucket, "dev")
    lease = store.acquire(RUN, executor="local", instance_id=None)
    store.update(lease, lambda s: {**s, "status": "training"}, heartbeat=False)
    assert verify(target, executor, do_fix=False).clean, "written a moment ago by S3's clock: not stale yet"
    time.sleep(2.1)  # S3's LastModified and Date have one-second resolution: at least 1 s old now
    report = verify(target, executor, do_fix=False)
    assert [f.kind for f in report.findings] == ["stale_lock"] and RUN in report.findings[0].detail
    fixed = verify(target, executor, do_fix=True)
    assert fixed.clean and store.read() is None
    record = get_json(target.s3, target.bucket, Layout("dev").training_record(RUN))
    assert (record["final_status"], record["reason"]) == ("failed", "lost")
    assert get_json(target.s3, target.bucket, Layout("dev").cleanup_status(RUN))["by"] == "cli"


def test_fresh_lock_of_a_live_run_is_not_a_leftover(target, deployer, executor):
    instance = _orphan_instance(deployer)
    StateStore(target.s3, target.bucket, "dev").acquire(RUN, executor="ec2", instance_id=instance)
    report = verify(target, executor, do_fix=False)
    assert report.clean and report.active_run == RUN


def test_follower_rides_out_a_few_failed_polls(target, executor, monkeypatch):
    from automation.cli import follow as follow_mod
    from automation.runs.records import RunView

    record = {"run_id": RUN, "final_status": "completed", "phases": {}}
    from instance.protocol.artifacts import put_json

    put_json(target.s3, target.bucket, Layout("dev").training_record(RUN), record)
    calls = {"n": 0}
    real = follow_mod._poll

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] <= follow_mod.MAX_FAILED_POLLS - 1:
            raise ConnectionError("endpoint unreachable")
        return real(*args)

    monkeypatch.setattr(follow_mod, "_poll", flaky)
    final = follow_mod.follow(target, executor, RUN, lambda v: None, interval=0.01)
    assert isinstance(final, RunView) and final.final_status == "completed"

    calls["n"] = 0
    monkeypatch.setattr(follow_mod, "_poll", lambda *a: (_ for _ in ()).throw(ConnectionError("down")))
    with pytest.raises(ConnectionError):
        follow_mod.follow(target, executor, RUN, lambda v: None, interval=0.01)
