"""The run stack's program under Pulumi mocks: one instance, locked down, ending itself.

Security tests carry the AWS Foundational Security Best Practices control in their name.
"""
from __future__ import annotations

import pytest

from automation.infra_record import DEFAULT_AMI_PARAMETER
from automation.stacks.run import INSTANCE_CREATE_TIMEOUT, PROVIDER_MAX_RETRIES, RunStackConfig, build_run_stack
from tests.pulumi_harness import AMI_ID, run_program

INSTANCE = "aws:ec2/instance:Instance"
RUN_ID = "run-20261128-203700-1a2b"


def config(**overrides) -> RunStackConfig:
    values = dict(
        run_id=RUN_ID, env="dev", region="us-east-1", instance_type="g4dn.2xlarge", spot=False,
        subnet_id="subnet-0aaa", zone="us-east-1b", security_group_id="sg-0bbb",
        instance_profile="chronos-dev-access-instance-1a2b3c", ami_ssm_parameter=DEFAULT_AMI_PARAMETER,
        user_data="#!/bin/bash\necho bootstrap\n", tags={"Name": f"chronos-{RUN_ID}"},
    )
    values.update(overrides)
    return RunStackConfig(**values)


def launch(cfg: RunStackConfig):
    run = run_program(lambda: build_run_stack(cfg), project="chronos-run", stack=cfg.run_id,
                      ssm={DEFAULT_AMI_PARAMETER: AMI_ID})
    return run, run.one(INSTANCE)


@pytest.fixture(scope="module")
def on_demand() -> tuple:
    return launch(config())


def test_the_stack_holds_one_instance_and_nothing_else(on_demand):
    run, _ = on_demand
    assert sorted(r.typ for r in run.resources) == [INSTANCE, "pulumi:providers:aws"]


def test_ami_comes_from_the_ssm_parameter(on_demand):
    run, instance = on_demand
    assert ("aws:ssm/getParameter:getParameter", {"name": DEFAULT_AMI_PARAMETER}) in [
        (token, {"name": args.get("name")}) for token, args in run.calls
    ]
    assert instance.inputs["ami"] == AMI_ID, instance.fail("AMI is not the SSM parameter's value")


def test_fsbp_ec2_8_imdsv2_required(on_demand):
    _, instance = on_demand
    assert instance.inputs["metadataOptions"]["httpTokens"] == "required", instance.fail("IMDSv1 allowed")


def test_fsbp_ec2_3_root_volume_encrypted_gp3_100gb_deleted_with_instance(on_demand):
    _, instance = on_demand
    root = instance.inputs["rootBlockDevice"]
    assert root["encrypted"] is True, instance.fail("root volume not encrypted")
    assert root["volumeType"] == "gp3", instance.fail(f"root volume type {root['volumeType']}")
    assert root["volumeSize"] == 100, instance.fail(f"root volume {root['volumeSize']} GB")
    assert root["deleteOnTermination"] is True, instance.fail("root volume outlives the instance")


def test_os_shutdown_terminates_the_instance(on_demand):
    _, instance = on_demand
    assert instance.inputs["instanceInitiatedShutdownBehavior"] == "terminate", instance.fail(
        "an OS shutdown would leave a stopped instance and its volume")


def test_on_demand_has_no_spot_options(on_demand):
    _, instance = on_demand
    assert "instanceMarketOptions" not in instance.inputs, instance.fail("spot options on an on-demand run")


def test_spot_is_one_time_and_terminates_on_interruption():
    _, instance = launch(config(spot=True))
    market = instance.inputs.get("instanceMarketOptions")
    assert market and market["marketType"] == "spot", instance.fail("spot asked, not requested")
    assert market["spotOptions"] == {"spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"}, \
        instance.fail(f"spot options {market['spotOptions']}")


def test_tags_name_the_run_and_bill_training(on_demand):
    _, instance = on_demand
    for key in ("tags", "volumeTags"):
        tags = instance.inputs[key]
        assert tags["RunId"] == RUN_ID, instance.fail(f"{key} lack RunId")
        assert tags["CostCenter"] == "train", instance.fail(f"{key} CostCenter {tags.get('CostCenter')}")
        assert tags["Project"] == "Chronos-Training", instance.fail(f"{key} lack Project")
        assert tags["Environment"] == "dev", instance.fail(f"{key} lack Environment")
        assert tags["Name"] == f"chronos-{RUN_ID}", instance.fail(f"{key} lost the caller's tags")


def test_required_tags_cannot_be_overridden():
    _, instance = launch(config(tags={"RunId": "someone-else", "CostCenter": "serve"}))
    assert instance.inputs["tags"]["RunId"] == RUN_ID, instance.fail("caller replaced RunId")
    assert instance.inputs["tags"]["CostCenter"] == "train", instance.fail("caller replaced CostCenter")


def test_placement_profile_group_and_user_data(on_demand):
    _, instance = on_demand
    inputs = instance.inputs
    assert inputs["subnetId"] == "subnet-0aaa", instance.fail("wrong subnet")
    assert inputs["availabilityZone"] == "us-east-1b", instance.fail("wrong zone")
    assert inputs["vpcSecurityGroupIds"] == ["sg-0bbb"], instance.fail("wrong security groups")
    assert inputs["iamInstanceProfile"] == "chronos-dev-access-instance-1a2b3c", instance.fail("wrong profile")
    assert inputs["userData"].startswith("#!/bin/bash"), instance.fail("user data is not the bootstrap")
    assert inputs["instanceType"] == "g4dn.2xlarge", instance.fail("wrong instance type")


def test_region_is_the_configured_one(on_demand):
    run, instance = on_demand
    provider = run.one("pulumi:providers:aws")
    assert provider.inputs["region"] == "us-east-1", provider.fail("wrong region")
    assert instance.provider.startswith(provider.urn), instance.fail("instance not on the run's provider")


def test_exports_instance_id_and_zone(on_demand):
    run, _ = on_demand
    assert run.outputs == {"instance_id": f"{RUN_ID}-id", "zone": "us-east-1b"}


def test_provider_retries_are_bounded_so_a_capacity_error_comes_back_in_minutes(on_demand):
    """The provider's default (25 tries with backoff) retries InsufficientInstanceCapacity for
    about 50 minutes; bounded, the error returns and the executor tries the next zone."""
    run, instance = on_demand
    provider = run.one("pulumi:providers:aws")
    # Provider inputs reach the engine as strings, as every provider config value does.
    assert int(provider.inputs["maxRetries"]) == PROVIDER_MAX_RETRIES <= 5, provider.fail("unbounded provider retries")
    assert instance.timeouts.get("create") == INSTANCE_CREATE_TIMEOUT, instance.fail(f"timeouts {instance.timeouts}")
    minutes = int(INSTANCE_CREATE_TIMEOUT.rstrip("m"))
    assert 3 <= minutes <= 10, instance.fail("a create timeout shorter than a GPU instance's start, or unbounded")
    assert instance.timeouts.get("delete"), instance.fail("no delete timeout")


def test_no_public_ingress_path_is_declared_here(on_demand):
    """FSBP EC2.18/EC2.19: the run stack adds no security group or rule of its own."""
    run, _ = on_demand
    assert not [r.urn for r in run.resources if "securityGroup" in r.typ]



def test_no_deprecated_resource_or_argument(on_demand):
    run, _ = on_demand
    assert run.warnings == []
