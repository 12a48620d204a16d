"""EC2 executor orchestration through a fake StackOps seam, plus the real seam's CLI-free parts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from automation.executors.base import ProvisionError, ProvisionRequest
from automation.executors.ec2 import Ec2Executor, classify
from automation.executors.run_stacks import Diagnostic, PulumiStackOps, StackCommandFailed, StackMissing
from automation.infra_record import InfraRecord
from instance.protocol.aws import client
from instance.protocol.ec2 import instance_state
from instance.protocol.runconfig import parse_config

RUN_ID = "run-20261128-203700-1a2b"
INSTANCE_ID = "i-0123456789abcdef0"


MACHINES = f"urn:pulumi:{RUN_ID}::chronos-run::chronos:run:Machines"
TEMPLATE_URN = f"{MACHINES}$aws:ec2/launchTemplate:LaunchTemplate::{RUN_ID}"
GROUP_URN = f"{MACHINES}$aws:autoscaling/group:Group::{RUN_ID}"
STACK_URN = f"urn:pulumi:{RUN_ID}::chronos-run::pulumi:pulumi:Stack::chronos-run-{RUN_ID}"
# What `up` can be refused with now (it creates a launch template, then the group, and returns):
# (operation, HTTP status, AWS's message). RunInstances' refusals come later, from the group.
REFUSED = {
    "UnauthorizedOperation": ("CreateLaunchTemplate", 403, "You are not authorized to perform this operation. User: "
                              "arn:aws:iam::123456789012:user/ci is not authorized to perform: ec2:CreateLaunchTemplate "
                              "on resource: arn:aws:ec2:us-east-1:123456789012:launch-template/* because no "
                              "identity-based policy allows the ec2:CreateLaunchTemplate action. Encoded authorization "
                              "failure message: 3kq9..."),
    "InvalidParameterValue": ("CreateLaunchTemplate", 400, "Value (ami-0unknown) for parameter imageId is invalid."),
    "AccessDenied": ("CreateAutoScalingGroup", 403, "You are not authorized to use launch template: lt-0abc"),
    "ValidationError": ("CreateAutoScalingGroup", 400, "You must use a valid fully-formed launch template. Value "
                        "(chronos-training-dev-instance) for parameter iamInstanceProfile.name is invalid. Invalid IAM "
                        "Instance Profile name"),
    "LimitExceeded": ("CreateAutoScalingGroup", 400, "AutoScalingGroup limit exceeded - You may only have 500 Auto "
                      "Scaling groups"),
    "ServiceLinkedRoleFailure": ("CreateAutoScalingGroup", 500, "The service-linked role is not yet ready for use."),
}
KIND = {"UnauthorizedOperation": "permissions", "AccessDenied": "permissions", "LimitExceeded": "quota",
        "InvalidParameterValue": "other", "ValidationError": "other", "ServiceLinkedRoleFailure": "other"}


def up_failed(code: str, message: str | None = None) -> StackCommandFailed:
    """A failed `up` as the seam reports it: the engine's error diagnostics, as pulumi-aws 7 emits
    them for a refused create (the AWS SDK for Go v2's error inside the Terraform bridge's framing),
    then the engine's own summary diagnostic on the stack."""
    operation, status, words = REFUSED[code]
    what, service, urn = (("EC2 Launch Template", "EC2", TEMPLATE_URN) if operation == "CreateLaunchTemplate"
                          else ("Auto Scaling Group", "Auto Scaling", GROUP_URN))
    sdk = (f"operation error {service}: {operation}, https response error StatusCode: {status}, "
           f"RequestID: 5f1c2e4a-0b7d-4c8e-9f61-2a3b4c5d6e7f, api error {code}: {message or words}")
    return StackCommandFailed("error: update failed", [
        Diagnostic("error", f"sdk-v2/provider2.go:572: sdk.helper_schema: creating {what} ({RUN_ID}): {sdk}: "
                            f"provider=aws@7.51.1", urn),
        Diagnostic("error", "update failed", STACK_URN),
    ])


class FakeOps:
    """Remembers stacks and calls like a backend would; `failure` is what `up` raises. A
    successful `up` makes the group's first machine in moto's EC2 (tagged with the run) unless
    `capacity` is False (the group finds none yet)."""

    def __init__(self, failure: Exception | None = None, capacity: bool = True):
        self.failure = failure
        self.capacity = capacity
        self.stacks: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.configs = []

    def up(self, stack, cfg):
        self.calls.append(("up", stack))
        self.configs.append(cfg)
        self.stacks.add(stack)
        if self.failure is not None:
            raise self.failure
        if self.capacity:
            ec2 = client("ec2", MOTO["target"])
            image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
            ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType=cfg.instance_types[0],
                              Placement={"AvailabilityZone": "us-east-1b"},
                              TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "RunId", "Value": stack}]}])
        return {"group": stack, "launch_template": "lt-1"}

    def _existing(self, op: str, stack: str) -> None:
        self.calls.append((op, stack))
        if stack not in self.stacks:
            raise StackMissing(stack)

    def refresh(self, stack):
        self._existing("refresh", stack)

    def destroy(self, stack):
        self._existing("destroy", stack)

    def remove_stack(self, stack):
        self._existing("remove_stack", stack)
        self.stacks.discard(stack)

    def list_stacks(self):
        return sorted(self.stacks)

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]


INFRA = InfraRecord(
    env="dev", region="us-east-1", account="123456789012", bucket="chronos-training-dev-123456789012-us-east-1",
    vpc_id="vpc-1", subnets={"us-east-1b": "subnet-b", "us-east-1a": "subnet-a"}, security_group_id="sg-1",
    instance_profile="chronos-dev-access-instance-1a2b3c",
)


def request(spot: bool = False, infra: InfraRecord = INFRA, **extra) -> ProvisionRequest:
    cfg = parse_config({"dataset": "cached-datasets/2026/11/",
                        "instance": {"type": "g5.xlarge", "spot": spot, "max_runtime_minutes": 90}})
    return ProvisionRequest(run_id=RUN_ID, env="dev", config=cfg, infra=infra, **extra)


class Renderer:
    def __init__(self):
        self.kwargs = None

    def __call__(self, **kwargs) -> str:
        self.kwargs = kwargs
        return f"#!/bin/bash\n# bootstrap for {kwargs['run_id']}\n"


MOTO: dict = {}


@pytest.fixture(autouse=True)
def _moto(aws, request):
    """The executor looks for the group's machine in EC2: moto's, empty of this run's before each test."""
    MOTO["target"] = aws
    ec2 = client("ec2", aws)
    old = [i["InstanceId"] for r in ec2.describe_instances(Filters=[{"Name": "tag:RunId", "Values": [RUN_ID]}])
           ["Reservations"] for i in r["Instances"]]
    if old:
        ec2.terminate_instances(InstanceIds=old)


def executor(ops: FakeOps, renderer: Renderer | None = None) -> Ec2Executor:
    return Ec2Executor("dev", INFRA.bucket, INFRA.region, target=MOTO["target"], ops=ops,
                       render_user_data=renderer or Renderer(), first_machine_wait=0)


def test_provision_brings_the_stack_up_and_returns_the_groups_first_machine():
    ops, renderer = FakeOps(), Renderer()
    result = executor(ops, renderer).provision(request())
    assert result.instance_id.startswith("i-") and result.zone == "us-east-1b"
    assert ops.calls == [("up", RUN_ID)], "one up: the group spans every zone"
    assert renderer.kwargs == {"env": "dev", "bucket": INFRA.bucket, "run_id": RUN_ID, "region": "us-east-1",
                               "max_runtime_minutes": 90}


def test_the_run_stack_gets_everything_from_infra_and_config():
    ops = FakeOps()
    executor(ops).provision(request(spot=True))
    cfg = ops.configs[0]
    assert (cfg.run_id, cfg.env, cfg.region) == (RUN_ID, "dev", "us-east-1")
    assert (cfg.instance_types, cfg.spot) == (("g5.xlarge",), True)
    assert cfg.subnet_ids == ("subnet-a", "subnet-b"), "every zone's subnet"
    assert (cfg.security_group_id, cfg.instance_profile) == ("sg-1", INFRA.instance_profile)
    assert cfg.ami_ssm_parameter == INFRA.ami_ssm_parameter
    assert cfg.user_data.startswith("#!/bin/bash")
    assert cfg.instance_tags()["RunId"] == RUN_ID and cfg.instance_tags()["CostCenter"] == "train"


def test_the_account_group_quota_cleans_up_and_says_which_quota_to_raise():
    ops = FakeOps(up_failed("LimitExceeded"))
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "quota"
    assert ops.ops() == ["up", "destroy", "remove_stack"]
    assert ops.stacks == set()
    message = str(err.value)
    assert message.startswith("AWS refused Auto Scaling CreateAutoScalingGroup (LimitExceeded)")
    assert "\"Auto Scaling groups per region\" in Service Quotas" in message and "us-east-1" in message
    assert "\n" not in message


def test_no_capacity_yet_is_a_started_run_waiting_for_its_machine():
    """Capacity is the group's to find, in every zone and listed type: `up` succeeds, and the run
    waits (the lock says so) rather than failing the launch."""
    ops = FakeOps(capacity=False)
    result = executor(ops).provision(request())
    assert result.instance_id is None and ops.stacks == {RUN_ID}


@pytest.mark.parametrize("code", ["UnauthorizedOperation", "AccessDenied"])
def test_permission_error_cleans_up_and_names_the_refused_call(code):
    ops = FakeOps(up_failed(code))
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "permissions"
    assert ops.ops() == ["up", "destroy", "remove_stack"]
    operation = {"UnauthorizedOperation": "EC2 CreateLaunchTemplate",
                 "AccessDenied": "Auto Scaling CreateAutoScalingGroup"}[code]
    assert str(err.value).startswith(f"AWS refused {operation} ({code}): these credentials need")
    assert "iam:PassRole" in str(err.value) and "operator policy" in str(err.value)


def test_other_errors_show_the_providers_error_without_its_framing():
    ops = FakeOps(up_failed("ValidationError"))
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "other"
    message = str(err.value)
    assert f"creating Auto Scaling Group ({RUN_ID}): operation error Auto Scaling: CreateAutoScalingGroup" in message
    assert "ValidationError: You must use a valid fully-formed launch template" in message
    assert "sdk-v2" not in message and "provider=aws" not in message
    assert ops.stacks == set()


def test_a_group_made_while_aws_creates_its_service_role_says_launch_again():
    ops = FakeOps(up_failed("ServiceLinkedRoleFailure"))
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "other" and "launch again in a minute" in str(err.value)
    assert "(ServiceLinkedRoleFailure)" in str(err.value) and ops.stacks == set()


def test_quota_wins_over_permission_codes_and_run_instances_codes_are_not_ups():
    assert classify(["AccessDenied", "LimitExceeded"]) == ("quota", "LimitExceeded")
    assert classify([]) == ("other", "")
    assert classify(["UnsupportedOperation"]) == ("other", "UnsupportedOperation")
    # The group's launches report these in its scaling activities; `up` itself never does.
    for code in ("VcpuLimitExceeded", "InsufficientInstanceCapacity", "MaxSpotInstanceCountExceeded"):
        assert classify([code]) == ("other", code)


@pytest.mark.parametrize("code", list(REFUSED))
def test_the_kind_comes_from_the_code_in_the_resources_error_diagnostic(code):
    failure = up_failed(code)
    assert failure.aws_error_codes == [code]
    assert failure.aws_operations == [("EC2 " if REFUSED[code][0] == "CreateLaunchTemplate" else "Auto Scaling ")
                                      + REFUSED[code][0]]
    assert classify(failure.aws_error_codes) == (KIND[code], code)


@pytest.mark.parametrize("diagnostics", [
    pytest.param([Diagnostic("warning", "api error LimitExceeded: AutoScalingGroup limit exceeded", GROUP_URN)],
                 id="a warning, not an error"),
    pytest.param([Diagnostic("error", "update failed", STACK_URN),
                  Diagnostic("info", "LimitExceeded AccessDenied UnauthorizedOperation", GROUP_URN)],
                 id="the words in an info line"),
    pytest.param([Diagnostic("error", "creating Auto Scaling Group (x): operation error Auto Scaling: "
                             "CreateAutoScalingGroup, https response error StatusCode: 400, RequestID: 1, api error "
                             "ValidationError: Invalid value; not LimitExceeded nor AccessDenied", GROUP_URN)],
                 id="the words inside another code's message"),
    pytest.param([Diagnostic("error", "LimitExceeded: the engine refused the plan (AccessDenied)", "")],
                 id="an error with no resource"),
    pytest.param([Diagnostic("error", "creating Auto Scaling Group: LimitExceeded", GROUP_URN)],
                 id="the word LimitExceeded without an api error code"),
])
def test_text_that_merely_contains_the_words_is_not_classified(diagnostics):
    failure = StackCommandFailed("error: update failed (LimitExceeded AccessDenied)", diagnostics)
    kind, _ = classify(failure.aws_error_codes)
    assert kind == "other"
    ops = FakeOps(failure)
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "other" and ops.ops() == ["up", "destroy", "remove_stack"]


def test_a_failed_cleanup_keeps_the_original_error():
    class StuckOps(FakeOps):
        def destroy(self, stack):
            raise StackCommandFailed("error: the stack is currently locked by 1 lock(s)")

    ops = StuckOps(up_failed("LimitExceeded"))
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "quota"
    assert ops.stacks == {RUN_ID}, "an undestroyed stack stays for verify-cleanup to find"


def test_tooling_error_from_the_seam_is_kind_tooling():
    from automation.executors.run_stacks import INSTALL_HINT, ToolingMissing

    class NoCli(FakeOps):
        def up(self, stack, cfg):
            raise ToolingMissing(INSTALL_HINT)

    ops = NoCli()
    with pytest.raises(ProvisionError) as err:
        executor(ops).provision(request())
    assert err.value.kind == "tooling" and ops.calls == []


def test_without_the_pulumi_cli_launch_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProvisionError) as err:
        Ec2Executor("dev", INFRA.bucket, INFRA.region, render_user_data=Renderer()).provision(request())
    message = str(err.value)
    assert err.value.kind == "tooling"
    assert "curl -fsSL https://get.pulumi.com | sh" in message and "--local" in message
    assert "\n" not in message


def test_a_too_old_pulumi_cli_is_a_tooling_error(monkeypatch, tmp_path):
    fake = tmp_path / "pulumi"
    fake.write_text("#!/bin/sh\necho v2.0.0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK", raising=False)
    with pytest.raises(ProvisionError) as err:
        Ec2Executor("dev", INFRA.bucket, INFRA.region, render_user_data=Renderer()).provision(request())
    assert err.value.kind == "tooling" and "upgrade" in str(err.value)


def test_the_sandbox_is_not_a_place_for_ec2_runs():
    sandbox = InfraRecord(**{**INFRA.__dict__, "extra": {"sandbox": True}})
    with pytest.raises(ProvisionError, match="--local"):
        executor(FakeOps()).provision(request(infra=sandbox))


def test_an_infra_record_without_subnets_asks_for_pulumi_up():
    empty = InfraRecord(**{**INFRA.__dict__, "subnets": {}})
    with pytest.raises(ProvisionError, match="pulumi up"):
        executor(FakeOps()).provision(request(infra=empty))


def test_finalize_refreshes_destroys_removes_and_is_idempotent():
    ops = FakeOps()
    ex = executor(ops)
    ex.provision(request())
    ex.finalize(RUN_ID)
    assert ops.ops() == ["up", "refresh", "destroy", "remove_stack"] and ops.stacks == set()
    ex.finalize(RUN_ID)
    assert ops.ops() == ["up", "refresh", "destroy", "remove_stack"], "a removed stack needs no Pulumi call"


def test_finalize_tolerates_a_stack_removed_meanwhile():
    """Listed, then gone by the time refresh asks (another cleaner removed it): done, no error,
    and nothing more is asked of Pulumi."""
    class Racing(FakeOps):
        def list_stacks(self):
            return [RUN_ID]

    ops = Racing()
    assert executor(ops).finalize(RUN_ID) is None
    assert ops.calls == [("refresh", RUN_ID)]


def test_finalize_failure_names_the_stack_and_keeps_it():
    class Denied(FakeOps):
        def destroy(self, stack):
            raise StackCommandFailed("error: update failed", [Diagnostic(
                "error", f"sdk-v2/provider2.go:572: sdk.helper_schema: deleting Auto Scaling Group ({RUN_ID}): "
                "operation error Auto Scaling: DeleteAutoScalingGroup, https response error StatusCode: 403, "
                "RequestID: 9, api error AccessDenied: User: arn:aws:iam::123456789012:user/ci is not authorized "
                "to perform: autoscaling:DeleteAutoScalingGroup: provider=aws@7.51.1", GROUP_URN)])

    ops = Denied()
    ops.stacks.add(RUN_ID)
    with pytest.raises(ProvisionError) as err:
        executor(ops).finalize(RUN_ID)
    assert err.value.kind == "permissions" and RUN_ID in str(err.value) and "verify-cleanup" in str(err.value)
    assert ops.stacks == {RUN_ID}


def test_leftover_stacks_are_the_backends_stacks():
    ops = FakeOps()
    ops.stacks = {"run-20261128-203700-ffff", RUN_ID}
    assert executor(ops).leftover_stacks() == [RUN_ID, "run-20261128-203700-ffff"]


# --- against the moto server: EC2 termination and the backend listing --------------------------

def test_terminate_ends_the_instance_through_ec2_and_never_calls_pulumi(aws, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no Pulumi CLI anywhere
    ec2 = client("ec2", aws)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "RunId", "Value": RUN_ID}]}]
    named, tagged = (ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="g5.xlarge",
                                       TagSpecifications=tags)["Instances"][0]["InstanceId"] for _ in range(2))
    ops = FakeOps()
    ops.stacks.add(RUN_ID)
    ex = Ec2Executor("dev", INFRA.bucket, INFRA.region, ops=ops, target=aws)
    ex.terminate(RUN_ID, named)
    assert instance_state(ec2, named) in ("shutting-down", "terminated")
    assert instance_state(ec2, tagged) == "running", "an id given: only that one"
    ex.terminate(RUN_ID, None)  # no id: every instance tagged with the run
    assert instance_state(ec2, tagged) in ("shutting-down", "terminated")
    assert ops.calls == [] and ops.stacks == {RUN_ID}, "the stack record is finalize's, later"


def _backend(s3, bucket: str, keys: list[str]) -> None:
    for key in keys:
        s3.put_object(Bucket=bucket, Key=f"dev/pulumi/.pulumi/{key}", Body=b"{}")


def test_real_seam_lists_stacks_from_the_bucket_without_the_cli(aws, s3, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    _backend(s3, bucket, [
        "meta.yaml",
        f"stacks/chronos-run/{RUN_ID}.json",
        f"stacks/chronos-run/{RUN_ID}.json.bak",
        "stacks/chronos-run/run-20261128-210000-beef.json.gz",
        f"history/chronos-run/{RUN_ID}/{RUN_ID}-1.history.json",
        "locks/chronos-run/x.json",
    ])
    ops = PulumiStackOps(bucket, "dev", aws.region, target=aws)
    assert ops.backend_url == f"s3://{bucket}/dev/pulumi?region=us-east-1"
    ex = Ec2Executor("dev", bucket, aws.region, ops=ops, target=aws)
    assert ex.leftover_stacks() == [RUN_ID, "run-20261128-210000-beef"]
    ex.finalize("run-20261128-220000-0000")  # absent: nothing to do, so no CLI needed


def test_finalize_of_a_present_stack_without_the_cli_is_a_tooling_error(aws, s3, bucket, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    _backend(s3, bucket, [f"stacks/chronos-run/{RUN_ID}.json"])
    ex = Ec2Executor.for_target(SimpleNamespace(env="dev", bucket=bucket, region=aws.region, aws=aws))
    with pytest.raises(ProvisionError) as err:
        ex.finalize(RUN_ID)
    assert err.value.kind == "tooling"


def test_importing_the_executor_does_not_import_pulumi():
    code = ("import sys, json; import automation.executors.ec2, automation.executors.run_stacks; "
            "print(json.dumps([m for m in sys.modules if m.split('.')[0] in ('pulumi', 'pulumi_aws')]))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == []
