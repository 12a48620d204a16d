"""Cleanup is idempotent: after a partial cleanup, running it again reaches the same end state as
one clean pass, and a third run changes nothing. In-process, against moto server."""
from __future__ import annotations

from pathlib import Path

import pytest

from instance.agent.cleanup import Cleanup, Outcome
from instance.agent.context import AgentContext
from instance.agent.lockholder import LockHolder
from instance.protocol.aws import client
from instance.protocol.record import RunRecord
from instance.protocol.state import Fenced, StateStore
from instance.protocol.status import Status
from tests.agent_fixtures import get_json, instance_state
from tests.agent_hooks import EnvFaults
from tests.conftest import ENV

RID = "run-20261128-120000-abcd"
FAILED = Outcome("failed", "InjectedFault", {"class": "InjectedFault", "message": "boom", "phase": "training"})


def _context(s3, bucket, aws, tmp_path: Path, run_id: str = RID, hooks: EnvFaults | None = None) -> AgentContext:
    instance_id = client("ec2", aws).run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    store = StateStore(s3, bucket, ENV)
    lease = store.acquire(run_id, instance_id=instance_id, instance_type="g4dn.xlarge", spot=False)
    holder = LockHolder(store, lease)
    holder.move(Status.DATA_SYNC)
    holder.move(Status.TRAINING)
    holder.move(Status.FAILED, error=FAILED.error)
    record = RunRecord(run_id=run_id, env=ENV, started_at=lease.state["started_at"],
                       host={"instance_id": instance_id, "executor": "local", "instance_type": "g4dn.xlarge"})
    work = tmp_path / "work"
    for sub in ("train/checkpoint-3", "staging", "data"):
        (work / sub).mkdir(parents=True)
        (work / sub / "file.bin").write_bytes(b"x" * 10)
    (work / "agent.log").write_text("log line\n")
    return AgentContext(
        env=ENV, bucket=bucket, run_id=run_id, target=aws, local=True, instance_id=instance_id,
        work_dir=work, owns_work_dir=True, s3=s3, holder=holder, record=record, hooks=hooks or EnvFaults({}),
    )


def _upload_log(ctx):
    def upload():
        ctx.guard()
        s3 = ctx.s3
        s3.put_object(Bucket=ctx.bucket, Key=ctx.layout.agent_log(ctx.run_id), Body=ctx.log_path.read_bytes())
    return upload


def _end_state(ctx):
    s3, bucket, layout = ctx.s3, ctx.bucket, ctx.layout
    record = get_json(s3, bucket, layout.training_record(ctx.run_id))
    status = get_json(s3, bucket, layout.cleanup_status(ctx.run_id))
    return {
        "lock": StateStore(s3, bucket, ENV).read(),
        "final_status": record and record["final_status"],
        "reason": record and record["reason"],
        "ended_at": record and record["ended_at"],
        "steps": status and [(s["resource"].split(" ")[0], s["action"], s["result"]) for s in status["steps"]],
        "instance": instance_state(ctx.target, ctx.instance_id),
        "work": sorted(p.name for p in ctx.work_dir.iterdir()),
        "log": s3.get_object(Bucket=bucket, Key=layout.agent_log(ctx.run_id))["Body"].read(),
    }


def test_partial_cleanup_then_again_equals_one_clean_pass(s3, bucket, aws, tmp_path):
    # Reference: one clean pass.
    clean = _context(s3, bucket, aws, tmp_path / "clean", run_id="run-20261128-110000-0001")
    assert Cleanup(clean, upload_log=_upload_log(clean)).run(FAILED).ok
    reference = _end_state(clean)

    ctx = _context(s3, bucket, aws, tmp_path / "partial", hooks=EnvFaults({"CHRONOS_FAULT": "cleanup:lock,cleanup:log"}))
    cleanup = Cleanup(ctx, upload_log=_upload_log(ctx))
    first = cleanup.run(FAILED)
    assert not first.ok
    errors = {(s.resource, s.action) for s in first.steps if s.result == "error"}
    assert errors == {("lock", "release"), ("agent log", "upload")}
    assert StateStore(s3, bucket, ENV).read() is not None  # the lock is still there

    second = cleanup.run(FAILED)
    assert second.ok
    after_second = _end_state(ctx)
    for field in ("lock", "final_status", "reason", "steps", "instance", "work", "log"):
        assert after_second[field] == reference[field], field
    assert after_second["lock"] is None and after_second["instance"] == "terminated"
    assert after_second["work"] == ["agent.log"]

    third = cleanup.run(FAILED)
    assert third.ok
    assert _end_state(ctx) == after_second


def test_killed_run_moves_from_killed_to_cleanup(s3, bucket, aws, tmp_path):
    ctx = _context(s3, bucket, aws, tmp_path)
    # Simulate a run killed while training: the CLI's write, then the agent adopts it.
    StateStore(s3, bucket, ENV).release(ctx.holder.lease)
    lease = StateStore(s3, bucket, ENV).acquire(RID, instance_id=ctx.instance_id)
    ctx.holder = LockHolder(ctx.holder.store, lease)
    StateStore(s3, bucket, ENV).request_kill(RID, requested_by="test")
    ctx.holder.poll()
    assert ctx.holder.killed
    report = Cleanup(ctx, upload_log=_upload_log(ctx)).run(Outcome.killed())
    assert report.ok and report.outcome.final_status == "killed"
    record = get_json(s3, bucket, ctx.layout.training_record(RID))
    assert record["final_status"] == "killed" and record["kill"]["requested_by"] == "test"
    assert report.steps[0].detail == "killed -> cleanup"


def test_fenced_cleanup_writes_nothing_but_still_ends_the_instance(s3, bucket, aws, tmp_path):
    ctx = _context(s3, bucket, aws, tmp_path)
    store = StateStore(s3, bucket, ENV)
    store.release(store.read())  # kill --force released the lock
    report = Cleanup(ctx, upload_log=_upload_log(ctx)).run(FAILED)
    assert report.fenced and not report.ok
    assert get_json(s3, bucket, ctx.layout.training_record(RID)) is None
    assert get_json(s3, bucket, ctx.layout.cleanup_status(RID)) is None
    assert instance_state(aws, ctx.instance_id) == "terminated"


def test_a_record_written_by_someone_else_is_never_overwritten(s3, bucket, aws, tmp_path):
    ctx = _context(s3, bucket, aws, tmp_path)
    # Writing the same bytes again is not a conflict: a retried request whose first reply was lost.
    other = ctx.layout.cleanup_status(RID)
    ctx.write_record(other, {"a": 1})
    ctx._etags[other] = None
    ctx.write_record(other, {"a": 1})
    assert get_json(s3, bucket, other) == {"a": 1}

    key = ctx.layout.training_record(RID)
    ctx.write_record(key, {"final_status": None, "by": "agent"})
    s3.put_object(Bucket=bucket, Key=key, Body=b'{"final_status": "failed", "reason": "lost", "by": "cli"}')
    with pytest.raises(Fenced):
        ctx.write_record(key, {"final_status": "completed", "by": "agent"})
    assert get_json(s3, bucket, key)["by"] == "cli"
    with pytest.raises(Fenced):  # and once fenced, no record at all
        ctx.write_record(other, {"a": 2})
    assert get_json(s3, bucket, other) == {"a": 1}
