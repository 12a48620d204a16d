"""Capacity or quota: the waiting line tells them apart by Service Quotas' numbers, not by text,
and shows AWS's own words from the group's scaling activities.

End to end through the real CLI on the AWS path (moto behind it, the operator's credentials, the
stand-in Pulumi CLI running the real run program): the sandbox's EC2 refuses the group's launch
for quota or capacity (automation/sandbox/grouplaunches.py), as AWS does after `up` succeeded.
"""
from __future__ import annotations

import json

import pytest
import yaml

from automation.context import Target
from automation.runs.capacity import quota_short, why_no_machine
from automation.sandbox import motoserver
from automation.sandbox.control import SandboxInfo, seed
from automation.sandbox.strictmoto import OPERATORS
from instance.protocol.artifacts import get_json
from instance.protocol.aws import client
from instance.protocol.ec2 import instances_by_tag
from instance.protocol.group import describe_group
from instance.protocol.layout import Layout
from tests.cli_helpers import cli_env, launched_run_id, run_cli
from tests.test_cli_flows import local_config
from tests.test_pulumi_seam import BUCKET, ENV, aws_target_env  # noqa: F401 - the fixture

TYPES = ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]  # 4 vCPUs each, family G
CAPACITY_WORDS = ("We currently do not have sufficient g4dn.xlarge capacity in the Availability Zone you requested "
                  "(us-east-1a). Our system will be working on provisioning additional capacity. Launching EC2 "
                  "instance failed.")


@pytest.mark.parametrize("quotas,spot,expected", [
    ({t: 0.0 for t in TYPES}, True,
     "the vCPU quota \"All G and VT Spot Instance Requests\" (L-3819A6DF) is 0 vCPUs and g6.xlarge needs 4: "
     "no machine can start until it is raised (`chronos-train doctor` shows the request)"),
    ({t: 0.0 for t in TYPES}, False,
     "the vCPU quota \"Running On-Demand G and VT instances\" (L-DB2E81BA) is 0 vCPUs and g6.xlarge needs 4: "
     "no machine can start until it is raised (`chronos-train doctor` shows the request)"),
    ({t: 4.0 for t in TYPES}, True, None),  # room for one machine: it is capacity
    ({**{t: 0.0 for t in TYPES}, "g4dn.xlarge": None}, True, None),  # one quota unknown: cannot say quota
], ids=["spot quota 0", "on-demand quota 0", "quota fits", "quota unknown"])
def test_quota_is_named_only_when_it_blocks_every_type(quotas, spot, expected):
    assert quota_short(quotas, TYPES, spot) == expected


@pytest.fixture
def operator(aws) -> Target:
    """The seeded sandbox as `chronos-train --local monitor` resolves it: the operator's."""
    seed(SandboxInfo(aws.endpoint_url, "us-east-1", motoserver.SANDBOX_ACCOUNT, None), ENV)
    return Target(env=ENV, local=True, region="us-east-1", bucket=BUCKET, endpoint_url=aws.endpoint_url,
                  credentials=OPERATORS[ENV].credentials)


def test_a_quota_nobody_set_is_unknown_so_the_line_says_capacity(operator):
    line = why_no_machine(operator, {"instance_types": TYPES, "spot": True}, CAPACITY_WORDS)
    assert line.startswith("waiting for capacity: the group keeps trying every listed type in every zone")
    assert line.endswith(f"the group's last failed launch: {CAPACITY_WORDS}")


def test_the_sandbox_answers_service_quotas_with_the_quota_its_ec2_enforces(aws, operator):
    """One setting drives both: the quota Service Quotas reports is the one launches are refused by."""
    motoserver.set_launch_conditions(aws.endpoint_url, vcpu_quotas={"L-3819A6DF": 0})
    quota = client("service-quotas", aws).get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")["Quota"]
    assert (quota["QuotaName"], quota["Value"], quota["QuotaArn"]) == (
        "All G and VT Spot Instance Requests", 0.0, f"arn:aws:servicequotas:us-east-1:{motoserver.SANDBOX_ACCOUNT}:ec2/L-3819A6DF")
    line = why_no_machine(operator, {"instance_types": TYPES, "spot": True}, "Could not launch ...")
    assert line.startswith("the vCPU quota \"All G and VT Spot Instance Requests\" (L-3819A6DF) is 0 vCPUs")
    motoserver.reset(aws.endpoint_url)
    with pytest.raises(Exception) as err:
        client("service-quotas", aws).get_service_quota(ServiceCode="ec2", QuotaCode="L-3819A6DF")
    assert "NoSuchResource" in str(err.value), "a reset sandbox knows no EC2 quota again"


@pytest.mark.parametrize("conditions,monitor_says", [
    pytest.param({"vcpu_quotas": {"L-DB2E81BA": 0}}, [
        "the vCPU quota \"Running On-Demand G and VT instances\" (L-DB2E81BA) is 0 vCPUs and g4dn.xlarge needs 4: "
        "no machine can start until it is raised (`chronos-train doctor` shows the request)",
        "the group's last failed launch: You have requested more vCPU capacity than your current vCPU limit of 0 "
        "allows for the instance bucket that the specified instance type belongs to. Please visit "
        "http://aws.amazon.com/contact-us/ec2-request to request an adjustment to this limit. Launching EC2 instance "
        "failed."], id="quota"),
    pytest.param({"vcpu_quotas": {"L-DB2E81BA": 8}, "no_capacity": ["g4dn.xlarge"]}, [
        "waiting for capacity: the group keeps trying every listed type in every zone (list more types in "
        "instance.types to widen the search, or end the run with `chronos-train kill`)",
        f"the group's last failed launch: {CAPACITY_WORDS}"], id="capacity"),
])
def test_a_launch_whose_group_gets_no_machine_waits_monitor_says_why_and_kill_ends_it(aws, aws_target_env,
                                                                                       conditions, monitor_says):
    env, config, s3 = aws_target_env
    motoserver.set_launch_conditions(aws.endpoint_url, **conditions)
    launched = run_cli(env, "launch", str(config))
    run_id = launched_run_id(launched)
    said = launched.stdout + launched.stderr
    assert f"run {run_id}: no machine yet; its group keeps looking for capacity (up to 30 minutes)" in said
    assert monitor_says[-1].removeprefix("the group's last failed launch: ") in said, said
    lock = json.loads(s3.get_object(Bucket=BUCKET, Key=Layout(ENV).state)["Body"].read())
    assert lock["run_id"] == run_id and lock["awaiting_machine"] and not lock.get("instance_id")

    shown = run_cli(env, "monitor", run_id)
    assert shown.returncode == 0, shown.stderr
    for words in monitor_says:
        assert words in shown.stdout, shown.stdout
    doc = json.loads(run_cli(env, "monitor", run_id, "--json").stdout)
    assert doc["active"] and doc["instance_id"] is None and monitor_says[0] in doc["waiting"]

    killed = run_cli(env, "kill", run_id)
    assert killed.returncode == 0, killed.stderr
    record = get_json(s3, BUCKET, Layout(ENV).training_record(run_id))
    assert (record["final_status"], record["reason"]) == ("killed", "killed_by_user")
    clean = run_cli(env, "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # What the operator sees afterwards: nothing of the run's left.
    seen = aws.__class__(aws.region, aws.endpoint_url, OPERATORS[ENV].credentials)
    assert describe_group(client("autoscaling", seen), run_id) is None
    assert client("ec2", seen).describe_launch_templates()["LaunchTemplates"] == []
    assert instances_by_tag(client("ec2", seen), {"RunId": run_id}) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix="dev/pulumi/.pulumi/stacks/")


@pytest.mark.parametrize("conditions,monitor_says", [
    pytest.param({"vcpu_quotas": {"L-DB2E81BA": 0}}, "the vCPU quota \"Running On-Demand G and VT instances\" "
                 "(L-DB2E81BA) is 0 vCPUs and g4dn.xlarge needs 4", id="quota"),
    pytest.param({"no_capacity": ["g4dn.xlarge"]}, "waiting for capacity: the group keeps trying", id="capacity"),
])
def test_under_local_the_sandbox_group_records_its_failed_launch_as_on_aws(aws, tmp_path, conditions, monitor_says):
    """--local plays the same group (moto's, with the sandbox's launches): the run waits with no
    agent started, monitor reads the group's activities and the quota as the operator, kill ends it."""
    env = cli_env(aws.endpoint_url, tmp_path / "home")
    motoserver.set_launch_conditions(aws.endpoint_url, **conditions)
    launched = run_cli(env, "--local", "launch", local_config(tmp_path), cwd=tmp_path)
    run_id = launched_run_id(launched)
    assert "no machine yet; its group keeps looking for capacity" in launched.stderr, launched.stderr
    assert "Launching EC2 instance failed." in launched.stderr
    shown = run_cli(env, "--local", "monitor", run_id)
    assert monitor_says in shown.stdout and "the group's last failed launch: " in shown.stdout, shown.stdout
    assert not (tmp_path / "home" / "work" / run_id / "agent.pid").exists(), "no machine, so no agent"
    assert run_cli(env, "--local", "kill", run_id).returncode == 0
    clean = run_cli(env, "--local", "verify-cleanup")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert describe_group(client("autoscaling", aws), run_id) is None
    assert client("ec2", aws).describe_launch_templates()["LaunchTemplates"] == []


QUOTA_ENDED = ("the vCPU quota \"Running On-Demand G and VT instances\" (L-DB2E81BA) is 0 vCPUs and g4dn.xlarge "
               "needs 4: no machine can start until it is raised (`chronos-train doctor` shows the request); the "
               "group's last failed launch: You have requested more vCPU capacity than your current vCPU limit of 0")


def test_a_run_that_waited_out_capacity_says_what_to_change(operator):
    """The ended run's sentence for capacity (the quota's is shown end to end below): what to try."""
    line = why_no_machine(operator, {"instance_types": ["g4dn.xlarge"], "spot": False}, CAPACITY_WORDS,
                          ended=True)
    assert line == ("AWS had no on-demand capacity for g4dn.xlarge: launch again later, list more types in "
                    f"instance.types or try spot (spot: true); the group's last failed launch: {CAPACITY_WORDS}")


def test_a_followed_run_whose_group_never_gets_a_machine_fails_no_capacity_in_one_sentence(aws, aws_target_env):
    """The wait runs out (instance.capacity_wait_minutes: 1, the shortest; the stale limit 1 s): the
    follower exits 4 (the followed run failed) with one sentence saying why, read from the group's
    scaling activities and Service Quotas as the operator; --fix records failed / no_capacity with
    it and leaves nothing behind."""
    env, config, s3 = aws_target_env
    doc = yaml.safe_load(config.read_text())
    doc["instance"] = {**doc.get("instance", {}), "capacity_wait_minutes": 1}
    config.write_text(yaml.safe_dump(doc))
    env = {**env, "CHRONOS_STALE_SECONDS": "1"}
    motoserver.set_launch_conditions(aws.endpoint_url, vcpu_quotas={"L-DB2E81BA": 0})

    followed = run_cli(env, "launch", str(config), "--follow")
    assert followed.returncode == 4, followed.stdout + followed.stderr
    run_id = followed.stdout.splitlines()[0].strip()
    last = followed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: run {run_id} failed (no_capacity): it names no machine yet: its group found no "
                           f"machine within instance.capacity_wait_minutes (60 s); {QUOTA_ENDED}"), last
    assert last.endswith(". Run `chronos-train verify-cleanup --fix` to record it and release the lock"), last

    fixed = run_cli(env, "verify-cleanup", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    record = get_json(s3, BUCKET, Layout(ENV).training_record(run_id))
    assert (record["final_status"], record["reason"]) == ("failed", "no_capacity")
    assert record["error"]["class"] == "no_capacity" and record["error"]["message"].startswith(QUOTA_ENDED), record
    shown = run_cli(env, "monitor", run_id)
    assert "no_capacity" in shown.stdout and "(L-DB2E81BA) is 0 vCPUs" in shown.stdout, shown.stdout
    assert run_cli(env, "verify-cleanup").returncode == 0
    # What the operator sees afterwards: nothing of the run's left.
    seen = aws.__class__(aws.region, aws.endpoint_url, OPERATORS[ENV].credentials)
    assert describe_group(client("autoscaling", seen), run_id) is None
    assert instances_by_tag(client("ec2", seen), {"RunId": run_id}) == []
