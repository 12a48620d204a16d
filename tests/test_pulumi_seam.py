"""The real seam (PulumiStackOps and the Automation API) against a stand-in Pulumi CLI
(tests/fake_pulumi.py) whose backend and machines live in the moto server: what the CLI is given
(environment, work dir), what comes back (engine events), and Ctrl-C in the middle of `up`.

The shell here holds a wrong PULUMI_BACKEND_URL, PULUMI_CONFIG_PASSPHRASE and
PULUMI_CONFIG_PASSPHRASE_FILE (docs/deploy.md suggests exporting them for the persistent stack):
every call must see the run stacks' own values instead.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from automation.executors.base import ProvisionError
from automation.executors.ec2 import Ec2Executor
from automation.executors.run_stacks import PulumiStackOps, StackCommandFailed
from automation.sandbox import motoserver
from automation.sandbox.control import REGION, SandboxInfo, instance_role_name, put_operator_policy, seed
from automation.sandbox.strictmoto import OPERATORS
from automation.stacks.policies import operator_policy
from automation.stacks.run import RunStackConfig
from instance.protocol.artifacts import get_json
from instance.protocol.aws import AwsTarget, client
from instance.protocol.ec2 import instance_state, instances_by_tag
from instance.protocol.group import describe_group, failed_launches
from instance.protocol.layout import Layout, bucket_name
from tests.agent_fixtures import DATA_PREFIX, parquet_bytes, run_config, synthetic_frame
from tests.cli_helpers import REPO, cli_env, wait_until

RUN_ID = "run-20261128-203700-1a2b"
ENV = "dev"
BUCKET = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
WRONG_SHELL = {"PULUMI_BACKEND_URL": "s3://someone-elses-state-bucket", "PULUMI_CONFIG_PASSPHRASE": "persistent-secret",
               "PULUMI_CONFIG_PASSPHRASE_FILE": "/nonexistent/passphrase.txt"}


def install_fake_pulumi(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wrapper = folder / "pulumi"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{REPO / "tests" / "fake_pulumi.py"}" "$@"\n')
    wrapper.chmod(0o755)
    return folder


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def seeded(aws):
    """What the backend needs: the bucket (a test module may override this fixture)."""
    return seed(SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), ENV)


@pytest.fixture
def fake(aws, seeded, tmp_path, monkeypatch):
    """The fake CLI first on PATH, the shell's Pulumi variables wrong, temp files in a folder of
    our own (to see what is left behind), moto as the fake's AWS."""
    bin_dir = install_fake_pulumi(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "pulumi-calls.jsonl"
    monkeypatch.setenv("FAKE_PULUMI_LOG", str(log))
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint_url)
    for name, value in WRONG_SHELL.items():
        monkeypatch.setenv(name, value)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return log, scratch


@pytest.fixture
def operator(aws, seeded) -> AwsTarget:
    """Whom `up`, `destroy` and the executor act as: the operator, by the target's credentials."""
    return AwsTarget(REGION, aws.endpoint_url, OPERATORS[ENV].credentials)


def stack_config(infra, types: tuple[str, ...] = ("g4dn.xlarge", "g5.xlarge"), spot: bool = False) -> RunStackConfig:
    """The run stack over the seeded environment (its subnets, security group, profile, AMI)."""
    return RunStackConfig(run_id=RUN_ID, env=ENV, region=REGION, instance_types=types, spot=spot,
                          subnet_ids=tuple(infra.subnets.values()), security_group_id=infra.security_group_id,
                          instance_profile=infra.instance_profile, ami_ssm_parameter=infra.ami_ssm_parameter,
                          user_data="#!/bin/bash\n")


def on_aws(infra):
    """The seeded environment as a deployed one (the EC2 executor refuses the sandbox's)."""
    return infra.__class__(**{**infra.__dict__, "extra": {}})


def left_of_the_run(aws) -> dict:
    """What AWS still holds of the run: its group, its launch template, its live machines."""
    autoscaling, ec2 = client("autoscaling", aws), client("ec2", aws)
    return {"group": describe_group(autoscaling, RUN_ID),
            "templates": [t["LaunchTemplateName"] for t in ec2.describe_launch_templates()["LaunchTemplates"]],
            "machines": [i["InstanceId"] for i in instances_by_tag(ec2, {"RunId": RUN_ID})]}


# The run stack as the engine names it: the component's children carry its type in their URN.
STACK_STEPS = [
    ("pulumi:pulumi:Stack", f"urn:pulumi:{RUN_ID}::chronos-run::pulumi:pulumi:Stack::chronos-run-{RUN_ID}"),
    ("pulumi:providers:aws", f"urn:pulumi:{RUN_ID}::chronos-run::pulumi:providers:aws::{RUN_ID}-aws"),
    ("chronos:run:Machines", f"urn:pulumi:{RUN_ID}::chronos-run::chronos:run:Machines::{RUN_ID}"),
    ("aws:ec2/launchTemplate:LaunchTemplate",
     f"urn:pulumi:{RUN_ID}::chronos-run::chronos:run:Machines$aws:ec2/launchTemplate:LaunchTemplate::{RUN_ID}"),
    ("aws:autoscaling/group:Group",
     f"urn:pulumi:{RUN_ID}::chronos-run::chronos:run:Machines$aws:autoscaling/group:Group::{RUN_ID}"),
]


def test_every_call_gets_our_backend_passphrase_and_its_own_work_dir(aws, seeded, fake, operator, monkeypatch):
    log, scratch = fake
    # The shell holds someone else's keys: the Pulumi CLI acts as the target's, the operator.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIASHELLSOMEONEELSE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-operators")
    lines: list[str] = []
    ops = PulumiStackOps(BUCKET, ENV, REGION, target=operator, progress=lines.append)
    outputs = ops.up(RUN_ID, stack_config(seeded))
    assert outputs["group"] == RUN_ID and outputs["launch_template"].startswith("lt-")
    [machine] = left_of_the_run(aws)["machines"]
    lt, group = "aws:ec2/launchTemplate:LaunchTemplate", "aws:autoscaling/group:Group"
    assert lines == [f"pulumi: create pulumi:providers:aws {RUN_ID}-aws", f"pulumi: create pulumi:providers:aws {RUN_ID}-aws done",
                     f"pulumi: create chronos:run:Machines {RUN_ID}",
                     f"pulumi: create {lt} {RUN_ID}", f"pulumi: create {lt} {RUN_ID} done",
                     f"pulumi: create {group} {RUN_ID}", f"pulumi: create {group} {RUN_ID} done",
                     f"pulumi: create chronos:run:Machines {RUN_ID} done"], "what a launch shows while Pulumi works"
    assert ops.list_stacks() == [RUN_ID], "the stack is in the bucket's backend, where list_stacks looks"
    ops.refresh(RUN_ID)
    ops.destroy(RUN_ID)
    ops.remove_stack(RUN_ID)
    assert ops.list_stacks() == []
    assert instance_state(client("ec2", aws), machine) == "terminated"
    assert left_of_the_run(aws) == {"group": None, "templates": [], "machines": []}
    seen = calls(log)
    assert {c["argv"][1] for c in seen} >= {"stack", "up", "refresh", "destroy"}
    for call in seen:
        assert call["env"]["PULUMI_BACKEND_URL"] == f"s3://{BUCKET}/dev/pulumi?region=us-east-1", call["argv"]
        assert call["env"]["PULUMI_CONFIG_PASSPHRASE"] == "" and call["env"]["PULUMI_CONFIG_PASSPHRASE_FILE"] == ""
        assert call["env"]["PULUMI_AUTOMATION_API"] == "true"
        assert call["env"]["AWS_ACCESS_KEY_ID"] == OPERATORS[ENV].access_key_id, call["argv"]
    work_dirs = {c["cwd"] for c in seen}
    assert len(work_dirs) == 4, "one work dir per Automation call"
    assert not [d for d in work_dirs if Path(d).exists()]
    assert list(scratch.iterdir()) == [], "no automation-* (or other) folder left in the temp dir"


def test_up_makes_what_the_program_declares_and_the_group_launches_its_machine(aws, seeded, fake, operator):
    """The template and the group are the program's (types in order, every zone's subnet, the
    run's tags); the group's machine is tagged through the template's tag specifications, as on AWS."""
    PulumiStackOps(BUCKET, ENV, REGION, target=operator).up(RUN_ID, stack_config(seeded))
    group = describe_group(client("autoscaling", aws), RUN_ID)
    assert (group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (0, 1, 1)
    assert sorted(group["VPCZoneIdentifier"].split(",")) == sorted(seeded.subnets.values())
    policy = group["MixedInstancesPolicy"]
    assert [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]] == ["g4dn.xlarge", "g5.xlarge"]
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    [machine] = [i for r in client("ec2", aws).describe_instances(
        Filters=[{"Name": "tag:RunId", "Values": [RUN_ID]}])["Reservations"] for i in r["Instances"]]
    tags = {t["Key"]: t["Value"] for t in machine["Tags"]}
    assert {k: tags[k] for k in ("Project", "Environment", "CostCenter", "RunId")} == {
        "Project": "Chronos-Training", "Environment": ENV, "CostCenter": "train", "RunId": RUN_ID}
    assert tags["aws:ec2launchtemplate:id"] == policy["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"]
    assert machine["InstanceType"] == "g4dn.xlarge", "the first listed type"
    [activity] = client("autoscaling", aws).describe_scaling_activities(AutoScalingGroupName=RUN_ID)["Activities"]
    assert (activity["StatusCode"], activity["Description"]) == ("Successful", f"Launching a new EC2 instance: "
                                                                              f"{machine['InstanceId']}")


def test_a_failed_up_carries_the_providers_error_diagnostic_on_the_groups_urn(aws, seeded, fake, operator, monkeypatch):
    monkeypatch.setenv("FAKE_PULUMI_UP", "fail:CreateAutoScalingGroup:LimitExceeded")
    ops = PulumiStackOps(BUCKET, ENV, REGION, target=operator)
    with pytest.raises(StackCommandFailed) as err:
        ops.up(RUN_ID, stack_config(seeded))
    failure = err.value
    assert failure.aws_error_codes == ["LimitExceeded"]
    assert failure.aws_operations == ["Auto Scaling CreateAutoScalingGroup"]
    assert [(d.severity, d.urn) for d in failure.diagnostics] == [("error", STACK_STEPS[4][1]),
                                                                   ("error", STACK_STEPS[0][1])]
    text = str(failure)
    assert text.startswith(f"creating Auto Scaling Group ({RUN_ID}): operation error Auto Scaling: CreateAutoScalingGroup")
    assert "AutoScalingGroup limit exceeded" in text and "sdk-v2" not in text and "provider=aws" not in text
    assert "\n" not in text
    assert left_of_the_run(aws)["templates"] == [RUN_ID], "the template was made before the group was refused"


@pytest.mark.parametrize("refusal,kind,says", [
    ("CreateAutoScalingGroup:LimitExceeded", "quota", "Auto Scaling groups per region"),
    pytest.param("CreateAutoScalingGroup:AccessDenied", "permissions", "operator policy",
                 marks=pytest.mark.reliability),
    pytest.param("CreateLaunchTemplate:UnauthorizedOperation", "permissions", "ec2:CreateLaunchTemplate",
                 marks=pytest.mark.reliability),
    pytest.param("CreateAutoScalingGroup:ServiceLinkedRoleFailure", "other", "launch again in a minute",
                 marks=pytest.mark.reliability),
])
def test_a_refused_up_through_the_real_seam_says_what_to_do_and_leaves_nothing(aws, seeded, fake, operator,
                                                                               monkeypatch, refusal, kind, says):
    from tests.test_ec2_executor import Renderer, request

    monkeypatch.setenv("FAKE_PULUMI_UP", f"fail:{refusal}")
    ex = Ec2Executor(ENV, BUCKET, REGION, target=operator, render_user_data=Renderer())
    with pytest.raises(ProvisionError) as err:
        ex.provision(request(infra=on_aws(seeded)))
    operation, code = refusal.split(":")
    assert err.value.kind == kind and f"({code})" in str(err.value) and operation in str(err.value)
    assert says in str(err.value) and "\n" not in str(err.value)
    ups = [c for c in calls(fake[0]) if c["argv"][1] == "up"]
    assert len(ups) == 1, "one up: the group spans the zones"
    assert ex.leftover_stacks() == []
    assert left_of_the_run(aws) == {"group": None, "templates": [], "machines": []}


def test_a_missing_grant_in_the_operator_policy_shows_as_the_refusal_of_its_call(aws, seeded, fake, monkeypatch):
    """`up` acts with the credentials the CLI was given: an operator policy without the group
    statement is refused by the sandbox (IAM enforced), and the user is told which call."""
    from tests.test_ec2_executor import Renderer, request

    policy = operator_policy(f"arn:aws:s3:::{BUCKET}", ENV, REGION, motoserver.SANDBOX_ACCOUNT, seeded.vpc_id,
                             f"arn:aws:iam::{motoserver.SANDBOX_ACCOUNT}:role/{instance_role_name(ENV)}",
                             seeded.instance_profile_arn, seeded.ami_ssm_parameter)
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "CreateTaggedRunGroups"]
    put_operator_policy(aws, ENV, policy)
    for name, value in OPERATORS[ENV].env().items():
        monkeypatch.setenv(name, value)
    operator = AwsTarget(REGION, aws.endpoint_url, OPERATORS[ENV].credentials)
    ex = Ec2Executor(ENV, BUCKET, REGION, target=operator, render_user_data=Renderer())
    with pytest.raises(ProvisionError) as err:
        ex.provision(request(infra=on_aws(seeded)))
    assert err.value.kind == "permissions"
    assert "AWS refused Auto Scaling CreateAutoScalingGroup (AccessDenied)" in str(err.value)
    assert left_of_the_run(aws) == {"group": None, "templates": [], "machines": []}


@pytest.mark.parametrize("conditions,words", [
    ({"vcpu_quotas": {"L-DB2E81BA": 0}}, "You have requested more vCPU capacity than your current vCPU limit of 0"),
    ({"no_capacity": ["g5.xlarge"]}, "We currently do not have sufficient g5.xlarge capacity"),
], ids=["quota", "capacity"])
def test_a_group_that_cannot_launch_is_a_started_run_waiting_for_its_machine(aws, seeded, fake, operator, conditions,
                                                                             words):
    """`up` succeeds whatever EC2 then says: the group records the failed launch in its scaling
    activities, and provisioning returns no machine yet, with AWS's words, at once."""
    from tests.test_ec2_executor import Renderer, request

    motoserver.set_launch_conditions(aws.endpoint_url, **conditions)
    ex = Ec2Executor(ENV, BUCKET, REGION, target=operator, render_user_data=Renderer())
    began = time.monotonic()
    done = ex.provision(request(infra=on_aws(seeded)))
    assert done.instance_id is None and words in done.last_failed_launch
    assert time.monotonic() - began < ex.first_machine_wait, "no need to wait: the group said why"
    left = left_of_the_run(aws)
    assert left["group"]["DesiredCapacity"] == 1 and left["group"]["Instances"] == [] and left["machines"] == []
    assert failed_launches(client("autoscaling", aws), RUN_ID)[0].endswith("Launching EC2 instance failed.")
    ex.finalize(RUN_ID)
    assert left_of_the_run(aws) == {"group": None, "templates": [], "machines": []}


def test_preview_runs_in_a_throwaway_backend_and_writes_nothing_to_the_bucket(aws, seeded, fake, operator):
    log, scratch = fake
    s3 = client("s3", aws)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    preview = PulumiStackOps(BUCKET, ENV, REGION, target=operator).preview(stack_config(seeded))
    after = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert after == before
    assert [(s.op, s.type, s.name) for s in preview.steps] == [("create", t, u.rsplit("::", 1)[1]) for t, u in STACK_STEPS]
    assert preview.changes == {"create": 5}
    template = preview.steps[3].inputs
    assert (template["instanceType"], template["imageId"]) == ("g4dn.xlarge", client("ssm", aws).get_parameter(
        Name=seeded.ami_ssm_parameter)["Parameter"]["Value"])
    assert left_of_the_run(aws) == {"group": None, "templates": [], "machines": []}, "a preview makes nothing"
    backends = {c["env"]["PULUMI_BACKEND_URL"] for c in calls(log)}
    assert len(backends) == 1 and next(iter(backends)).startswith("file://")
    assert not Path(next(iter(backends)).removeprefix("file://")).exists()
    assert list(scratch.iterdir()) == []


# -- Ctrl-C during `up`, through the real CLI ------------------------------------------------------
@pytest.fixture
def aws_target_env(aws, tmp_path):
    """The real AWS path of the CLI pointed at moto (AWS_ENDPOINT_URL, CHRONOS_BUCKET), with
    infrastructure that is not the sandbox's, a dataset in the bucket and the fake Pulumi CLI."""
    info = SandboxInfo(aws.endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None)
    record = seed(info, ENV)
    s3 = client("s3", aws)
    doc = json.loads(record.to_json())
    doc["extra"] = {}
    s3.put_object(Bucket=BUCKET, Key=Layout(ENV).infra, Body=json.dumps(doc).encode())
    s3.put_object(Bucket=BUCKET, Key=DATA_PREFIX + "train.parquet", Body=parquet_bytes(synthetic_frame(4, 96)))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config()))
    bin_dir = install_fake_pulumi(tmp_path / "bin")
    # The AWS path as a person holding the operator policy (docs/deploy.md) runs it.
    env = cli_env(aws.endpoint_url, tmp_path / "home", AWS_ENDPOINT_URL=aws.endpoint_url, CHRONOS_BUCKET=BUCKET,
                  PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_PULUMI_LOG=str(tmp_path / "calls.jsonl"),
                  **OPERATORS[ENV].env(), **WRONG_SHELL)
    env.pop("CHRONOS_SANDBOX_URL")
    return env, config, s3


def test_ctrl_c_during_up_cancels_destroys_removes_releases_and_exits_130(aws, aws_target_env, tmp_path):
    env, config, s3 = aws_target_env
    mark = tmp_path / "up-started"
    env = {**env, "FAKE_PULUMI_UP": "hang", "FAKE_PULUMI_MARK": str(mark)}
    # Its own process group, as a terminal's foreground job: Ctrl-C goes to the whole group.
    proc = subprocess.Popen([sys.executable, "-m", "automation.cli", "launch", str(config)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # A terminal's job hears Ctrl-C even when these tests run as a background
                            # job (whose shell set SIGINT to ignored, which a child would inherit).
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: mark.exists() and mark.read_text(), timeout=120,
                   what="the fake `pulumi up` to create the group and its machine")
        instance = mark.read_text()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: run" in err and "Traceback" not in err
    run_id = err.split("interrupted: run ", 1)[1].split()[0]

    seen = calls(tmp_path / "calls.jsonl")
    ups = [c for c in seen if c["argv"][1] == "up"]
    assert max(c["sigints"] for c in ups) == 1, "the CLI got exactly one SIGINT: its graceful cancel"
    after_up = [c["argv"][1] for c in seen[seen.index(ups[0]) + 1:] if c["argv"][1] != "up"]
    assert "destroy" in after_up and "stack" in after_up
    assert instance_state(client("ec2", aws), instance) == "terminated"
    assert instances_by_tag(client("ec2", aws), {"RunId": run_id}) == [], "nor a replacement the group launched"
    assert describe_group(client("autoscaling", aws), run_id) is None
    assert client("ec2", aws).describe_launch_templates()["LaunchTemplates"] == []
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="dev/pulumi/").get("Contents", [])}
    assert not [k for k in keys if "/stacks/" in k or "/locks/" in k], keys
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=Layout(ENV).state), "the lock is released"
    record = get_json(s3, BUCKET, Layout(ENV).training_record(run_id))
    assert (record["final_status"], record["reason"], record["error"]["phase"]) == ("failed", "interrupted", "launch")


def test_the_stand_in_engine_fails_the_update_and_unlocks_when_the_language_host_fails_its_run(tmp_path):
    """The SDK's automation server can fail its Run RPC itself (a RunError raised while it cancels
    the program's pending calls, seen under load after the monitor refused a resource). The engine
    takes that as the program's error; the stand-in must too, or it dies holding the stack's lock."""
    from concurrent import futures

    import grpc

    from pulumi.runtime.proto import language_pb2_grpc
    from tests import fake_pulumi

    class FailingHost(language_pb2_grpc.LanguageRuntimeServicer):
        def Run(self, request, context):
            context.abort(grpc.StatusCode.UNKNOWN, "Resource monitor has terminated, shutting down")

    host = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(FailingHost(), host)
    port = host.add_insecure_port("127.0.0.1:0")
    host.start()
    try:
        backend = fake_pulumi.Backend(f"file://{tmp_path}")
        events = fake_pulumi.Events(None)
        code = fake_pulumi.deploy("up", RUN_ID, ["--stack", RUN_ID, "--client", f"127.0.0.1:{port}"],
                                  {"resources": [], "outputs": {}}, backend, events)
    finally:
        host.stop(grace=None)
    assert code != 0
    assert backend.list(fake_pulumi.lock_prefix(RUN_ID)) == []
    said = [e["diagnosticEvent"]["message"] for e in events.sent if "diagnosticEvent" in e]
    assert any("Resource monitor has terminated" in m for m in said) and "update failed" in said
