"""Ending a run never depends on Pulumi; records that cost nothing are not leftovers; a lock is
stale only by S3's clock; the CLI's records never replace the agent's.

The EC2 path of the CLI's functions runs against moto with the real Pulumi seam (PulumiStackOps):
without any Pulumi CLI on PATH, or with the stand-in of tests/fake_pulumi.py.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import yaml

from automation.context import Target
from automation.executors.base import Provisioned
from automation.executors.ec2 import Ec2Executor
from automation.runs.ending import force_end, kill
from automation.runs.launch import launch, plan
from automation.runs.records import record_end_from_cli
from automation.runs.verify import verify
from automation.sandbox import motoserver
from automation.sandbox.control import REGION, SandboxInfo, seed
from instance.protocol.artifacts import get_json, get_json_versioned, put_json
from instance.protocol.aws import client
from instance.protocol.ec2 import instance_state, run_tags
from instance.protocol.group import describe_group
from instance.protocol.layout import Layout, bucket_name
from instance.protocol.status import Status
from instance.protocol.timeutil import utcnow
from tests.agent_fixtures import DATA_PREFIX, parquet_bytes, run_config, synthetic_frame
from tests.conftest import as_the_machine
from tests.faultproxy import CONFLICT, FaultProxy
from tests.fake_pulumi import recorded
from tests.test_pulumi_seam import fake  # noqa: F401 - the fixture

ENV = "dev"
RUN = "run-20261128-080000-dead"
BUCKET = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
LAYOUT = Layout(ENV)
STACK_KEY = f"dev/pulumi/.pulumi/stacks/chronos-run/{RUN}.json"


@pytest.fixture
def target(aws, tmp_path, monkeypatch):
    """The AWS path (not --local) against moto, with infrastructure that is not the sandbox's."""
    monkeypatch.setenv("CHRONOS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHRONOS_LAUNCH_GRACE_SECONDS", "0")
    record = seed(SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV)
    s3 = client("s3", aws)
    put_json(s3, BUCKET, LAYOUT.infra, {**json.loads(record.to_json()), "extra": {}})
    s3.put_object(Bucket=BUCKET, Key=DATA_PREFIX + "train.parquet", Body=parquet_bytes(synthetic_frame(4, 96)))
    return Target(env=ENV, local=False, region=REGION, bucket=BUCKET, endpoint_url=aws.endpoint_url)


@pytest.fixture
def seeded(target):
    """For the fake Pulumi CLI's fixture: the target has seeded moto already."""
    return target


@pytest.fixture
def no_pulumi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "no-pulumi-here"))


def ec2_executor(target, progress=None) -> Ec2Executor:
    return Ec2Executor.for_target(target, render_user_data=lambda **kw: "#!/bin/bash\n", progress=progress)


def run_machine(target, run_id: str = RUN) -> str:
    image = target.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return target.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="g4dn.xlarge",
                                    TagSpecifications=[{"ResourceType": "instance",
                                                        "Tags": run_tags(run_id, ENV, "ec2")}])["Instances"][0]["InstanceId"]


def running_run(target) -> tuple[str, str]:
    """A run in training on EC2: its lock names one instance, a second one carries only its tag
    (a replacement the lock never heard of), and its stack record is in the backend."""
    named, tagged = run_machine(target), run_machine(target)
    store = target.state_store()
    lease = store.acquire(RUN, executor="ec2", instance_type="g4dn.xlarge", instance_id=named)
    store.move(store.move(lease, Status.DATA_SYNC), Status.TRAINING)
    target.s3.put_object(Bucket=BUCKET, Key=STACK_KEY, Body=json.dumps(recorded(RUN)).encode())
    return named, tagged


def stack_records(target) -> list[str]:
    return ec2_executor(target).leftover_stacks()


# -- ending never depends on Pulumi ----------------------------------------------------------------
def test_kill_force_without_a_pulumi_cli_ends_the_machines_releases_and_records_first(target, no_pulumi):
    named, tagged = running_run(target)
    result = kill(target, ec2_executor(target), RUN, force=True, wait=False)
    assert result.forced and result.final_status == "killed"
    assert "Pulumi CLI" in result.stack_left, "the stack that could not be removed is reported"
    assert {instance_state(target.ec2, i) for i in (named, tagged)} == {"terminated"}, "both, by the RunId tag"
    assert target.state_store().read() is None
    record = get_json(target.s3, BUCKET, LAYOUT.training_record(RUN))
    assert (record["final_status"], record["reason"], record["recorded_by"]) == ("killed", "killed_by_user", "cli")
    steps = get_json(target.s3, BUCKET, LAYOUT.cleanup_status(RUN))["steps"]
    assert [s["result"] for s in steps if s["action"] == "terminate"] == ["done", "done"]
    assert stack_records(target) == [RUN], "only the record is left, and it costs nothing"


def test_kill_force_releases_a_lock_the_dying_agent_moved_on_meanwhile(target, no_pulumi):
    """The agent saw the kill and moved its run to cleanup just before its machine ended: the
    forced end must release the lock from what S3 holds then, not from what it read first."""
    running_run(target)
    executor = ec2_executor(target)
    store = target.state_store()
    terminate = executor.terminate

    def agent_writes_last_then_dies(run_id, instance_id):
        lease = store.read()
        if lease is not None and lease.status is Status.KILLED:
            store.move(lease, Status.CLEANUP)
        terminate(run_id, instance_id)

    executor.terminate = agent_writes_last_then_dies
    result = kill(target, executor, RUN, force=True, wait=False)
    assert result.forced and result.final_status == "killed"
    assert target.state_store().read() is None, "the lock is released, not left to go stale"


def test_verify_lists_a_stack_record_without_a_machine_as_costing_nothing(target, no_pulumi):
    running_run(target)
    force_end(target, ec2_executor(target), RUN, "failed", "lost")
    report = verify(target, ec2_executor(target), do_fix=False)
    assert report.clean and report.leftovers == []
    assert [(f.kind, f.id, f.billable) for f in report.records] == [("stack", RUN, False)]
    assert "its instance is gone" in report.records[0].detail
    # --fix without the CLI cannot remove it and says why; it is still no reason for exit 6.
    fixed = verify(target, ec2_executor(target), do_fix=True)
    assert fixed.clean and "Pulumi CLI" in fixed.not_fixed[RUN]


def test_verify_fix_removes_the_record_once_the_cli_is_there(target, fake):  # noqa: F811
    # What kill --force left without a CLI: no lock, no machine, the stack record.
    target.s3.put_object(Bucket=BUCKET, Key=STACK_KEY, Body=json.dumps(recorded(RUN)).encode())
    fixed = verify(target, ec2_executor(target), do_fix=True)
    assert fixed.clean and fixed.records == [] and [f.kind for f in fixed.fixed] == ["stack"]
    assert stack_records(target) == []


def test_a_destroy_that_times_out_leaves_a_record_verify_cleanup_lists(target, fake, monkeypatch,  # noqa: F811
                                                                     tmp_path):
    """The group's delete may outlast even its 30-minute timeout (the biggest machines end
    slowly): the run is over and billed nothing more, its stack record and a group of no machine
    stay, verify-cleanup lists the record and --fix says why it could not remove it."""
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config()))
    launched = launch(target, plan(target, config), ec2_executor(target))  # the real stack: template, group, machine
    monkeypatch.setenv("FAKE_PULUMI_DESTROY", "timeout")
    ended = force_end(target, ec2_executor(target), launched.run_id, "failed", "lost")
    assert f"deleting Auto Scaling Group ({launched.run_id})" in ended.stack_left and "timeout" in ended.stack_left
    assert instance_state(target.ec2, launched.instance_id) == "terminated"
    group = describe_group(target.autoscaling, launched.run_id)
    assert (group["DesiredCapacity"], group["MaxSize"], group["Instances"]) == (0, 0, []), "it can launch nothing"
    report = verify(target, ec2_executor(target), do_fix=True)
    assert report.clean, "nothing bills: the machine ended before the destroy"
    assert [(f.kind, f.id) for f in report.records] == [("stack", launched.run_id)]
    assert "timeout" in report.not_fixed[launched.run_id], report.not_fixed


def test_billable_leftovers_and_records_are_told_apart(target, no_pulumi):
    orphan = run_machine(target, "run-20261128-070000-beef")
    target.s3.put_object(Bucket=BUCKET, Key=STACK_KEY, Body=json.dumps(recorded(RUN)).encode())
    report = verify(target, ec2_executor(target), do_fix=False)
    assert not report.clean
    assert [(f.kind, f.id) for f in report.leftovers] == [("instance", orphan)]
    assert [(f.kind, f.id) for f in report.records] == [("stack", RUN)]
    doc = report.to_json()
    assert {(f["kind"], f["billable"]) for f in doc["findings"]} == {("instance", True), ("stack", False)}


def test_the_next_launch_removes_ended_runs_stack_records(target, fake, tmp_path):  # noqa: F811
    target.s3.put_object(Bucket=BUCKET, Key=STACK_KEY, Body=json.dumps(recorded(RUN)).encode())
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config()))
    lines: list[str] = []
    launched = launch(target, plan(target, config), ec2_executor(target, lines.append), progress=lines.append)
    assert stack_records(target) == [launched.run_id], "the ended run's record is gone; the new run's stays"
    assert f"removed the stack record of ended run {RUN}" in lines
    assert f"pulumi: create aws:autoscaling/group:Group {launched.run_id} done" in lines, \
        "the launch says what Pulumi does while it works"
    assert launched.instance_id in [i["InstanceId"] for i in describe_group(target.autoscaling, launched.run_id)["Instances"]]


# -- staleness by S3's clock ------------------------------------------------------------------------
class SlowExecutor:
    """An executor whose provisioning takes `seconds` (a slow `pulumi up`), with a probe run
    `probe_at` seconds into it."""

    name = "ec2"

    def __init__(self, seconds: float, during=None, probe_at: float = 0.0):
        self.seconds, self.during, self.probe_at, self.seen = seconds, during, probe_at, []

    def provision(self, req):
        began = time.monotonic()
        if self.during:
            time.sleep(self.probe_at)
            self.seen.append(self.during(req.run_id))
        time.sleep(max(0.0, self.seconds - (time.monotonic() - began)))
        return Provisioned(instance_id="i-0123456789abcdef0", zone="us-east-1a")

    def terminate(self, run_id, instance_id):
        pass

    def reconcile(self):
        return []

    def finalize(self, run_id):
        pass

    def leftover_stacks(self):
        return []

    def preview(self, req):
        return None


@pytest.mark.parametrize("limit_s,up_s,probe_s", [
    pytest.param(3, 6, 4.2, id="6-minute-up-at-scale"),
    pytest.param(300, 360, 330, id="6-minute-up-real-time", marks=pytest.mark.reliability),
])
def test_a_long_up_keeps_its_lock_fresh_so_verify_fix_leaves_it_alone(target, monkeypatch, tmp_path, limit_s, up_s,
                                                                       probe_s):
    """A 6-minute `up` against the 5-minute limit (in make test at scale: a 3 s limit and a 6 s
    provisioning). verify-cleanup --fix runs once the launch is older than the limit: the lock is
    in initialization and has no instance id yet, and must not read as dead."""
    monkeypatch.setenv("CHRONOS_STALE_SECONDS", str(limit_s))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config()))
    ages: list[timedelta] = []

    def verify_meanwhile(run_id):
        lease = target.state_store().read()
        ages.append(lease.age)
        return verify(target, SlowExecutor(0), do_fix=True)

    slow = SlowExecutor(up_s, during=verify_meanwhile, probe_at=probe_s)
    launched = launch(target, plan(target, config), slow)
    report = slow.seen[0]
    assert report.active_run == launched.run_id and report.clean and report.fixed == []
    assert ages[0] < timedelta(seconds=limit_s), "the keeper wrote the lock within the limit"
    lease = target.state_store().read()
    assert lease.run_id == launched.run_id and lease.state["instance_id"] == "i-0123456789abcdef0"
    assert lease.seq >= 4, "the lock was written while provisioning"


@pytest.mark.parametrize("skew", [timedelta(minutes=10), -timedelta(minutes=10)], ids=["writer+10min", "writer-10min"])
def test_a_skewed_writer_neither_hides_a_dead_run_nor_kills_a_live_one(target, monkeypatch, skew):
    monkeypatch.setenv("CHRONOS_STALE_SECONDS", "1")
    store = target.state_store()
    lease = store.acquire(RUN, executor="ec2", now=utcnow() + skew)  # initialization, no instance yet
    store.update(lease, lambda s: s, now=lambda: utcnow() + skew)
    assert verify(target, ec2_executor(target), do_fix=False).active_run == RUN, "just written: alive"
    time.sleep(2.1)  # whole-second headers: at least 1 s old by S3's clock now
    report = verify(target, ec2_executor(target), do_fix=False)
    assert [f.kind for f in report.findings] == ["stale_lock"], "silent for the limit by S3's clock: lost"


# -- the CLI's records -------------------------------------------------------------------------------
AGENT_FINAL = {"run_id": RUN, "final_status": "completed", "reason": None, "phases": {"training": {}},
               "started_at": "2026-11-28T08:00:00.000Z", "by": "agent"}


def test_an_agents_final_records_are_never_replaced(target):
    put_json(target.s3, BUCKET, LAYOUT.training_record(RUN), AGENT_FINAL)
    put_json(target.s3, BUCKET, LAYOUT.cleanup_status(RUN), {"run_id": RUN, "by": "agent", "steps": []})
    etags = [get_json_versioned(target.s3, BUCKET, k)[1] for k in (LAYOUT.training_record(RUN),
                                                                   LAYOUT.cleanup_status(RUN))]
    record = record_end_from_cli(target, RUN, "failed", "lost", {}, [])
    assert record == AGENT_FINAL
    assert [get_json_versioned(target.s3, BUCKET, k)[1] for k in (LAYOUT.training_record(RUN),
                                                                  LAYOUT.cleanup_status(RUN))] == etags


def test_an_agents_interim_record_is_closed_keeping_what_it_holds(target):
    put_json(target.s3, BUCKET, LAYOUT.training_record(RUN), {**AGENT_FINAL, "final_status": None})
    record = record_end_from_cli(target, RUN, "failed", "lost", {"executor": "ec2"}, [])
    assert (record["final_status"], record["reason"], record["recorded_by"]) == ("failed", "lost", "cli")
    assert record["phases"] == {"training": {}}
    assert get_json(target.s3, BUCKET, LAYOUT.cleanup_status(RUN))["by"] == "cli"


def test_an_agent_that_finishes_while_the_cli_closes_the_record_wins(target):
    """The agent's final write lands between the CLI's read and its write: the CLI's conditional
    write is refused (412), it reads again, finds a final record and leaves it."""
    key = LAYOUT.training_record(RUN)
    put_json(target.s3, BUCKET, key, {**AGENT_FINAL, "final_status": None})
    # The agent is another process, on its machine, with the instance role's session (a client
    # of its own: the factory gives one process one client per target).
    agent_s3 = client("s3", as_the_machine(target.aws, run_machine(target), ENV))
    assert agent_s3 is not target.s3
    raced = threading.Event()

    def agent_writes_first(params, **kwargs):
        if params.get("Key") == key and not raced.is_set():
            raced.set()
            put_json(agent_s3, BUCKET, key, AGENT_FINAL)

    hook = "before-parameter-build.s3.PutObject"
    target.s3.meta.events.register(hook, agent_writes_first, unique_id="agent-writes-first")
    try:
        record = record_end_from_cli(target, RUN, "killed", "killed_by_user", {}, [])
    finally:
        target.s3.meta.events.unregister(hook, unique_id="agent-writes-first")
    assert raced.is_set() and record == AGENT_FINAL == get_json(target.s3, BUCKET, key)


def test_the_cli_closes_records_through_409s(target, aws):
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=(CONFLICT,), paths=(LAYOUT.logs(RUN),), max_faults=2) as proxy:
        via_proxy = Target(env=ENV, local=False, region=REGION, bucket=BUCKET, endpoint_url=proxy.url)
        record = record_end_from_cli(via_proxy, RUN, "failed", "lost", {}, [])
    assert record["final_status"] == "failed" and proxy.stats[CONFLICT] == 2
    assert get_json(target.s3, BUCKET, LAYOUT.cleanup_status(RUN))["by"] == "cli"

