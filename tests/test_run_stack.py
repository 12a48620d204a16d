"""The run stack's program under Pulumi mocks: a launch template (one machine, locked down, ending
itself) and an Auto Scaling group of at most one machine over every zone and listed type.

Security tests carry the AWS Foundational Security Best Practices control in their name.
"""
from __future__ import annotations

import base64

import pytest

from automation.infra_record import DEFAULT_AMI_PARAMETER
from automation.stacks.run import PROVIDER_MAX_RETRIES, RunStackConfig, build_run_stack
from tests.pulumi_harness import AMI_ID, ROOT_DEVICE, run_program

TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
COMPONENT = "chronos:run:Machines"
RUN_ID = "run-20261128-203700-1a2b"
SUBNETS = ("subnet-0aaa", "subnet-0bbb", "subnet-0ccc")
TYPES = ("g6.xlarge", "g5.xlarge", "g4dn.xlarge")


def config(**overrides) -> RunStackConfig:
    values = dict(
        run_id=RUN_ID, env="dev", region="us-east-1", instance_types=TYPES, spot=True,
        subnet_ids=SUBNETS, security_group_id="sg-0bbb",
        instance_profile="chronos-dev-access-instance-1a2b3c", ami_ssm_parameter=DEFAULT_AMI_PARAMETER,
        user_data="#!/bin/bash\necho bootstrap\n", tags={"Name": f"chronos-{RUN_ID}"},
    )
    values.update(overrides)
    return RunStackConfig(**values)


def launch(cfg: RunStackConfig):
    run = run_program(lambda: build_run_stack(cfg), project="chronos-run", stack=cfg.run_id,
                      ssm={DEFAULT_AMI_PARAMETER: AMI_ID})
    return run, run.one(TEMPLATE), run.one(GROUP)


@pytest.fixture(scope="module")
def spot() -> tuple:
    return launch(config())


@pytest.fixture(scope="module")
def on_demand() -> tuple:
    return launch(config(spot=False, instance_types=("g4dn.2xlarge",)))


def test_the_stack_holds_a_template_and_a_group_and_nothing_billable_at_rest(spot):
    run, _, _ = spot
    assert sorted(r.typ for r in run.resources) == sorted([TEMPLATE, GROUP, COMPONENT, "pulumi:providers:aws"])
    component = run.one(COMPONENT)
    for r in (run.one(TEMPLATE), run.one(GROUP)):
        assert r.parent == component.urn, r.fail("not a child of the run's component")


def test_at_most_one_machine_over_every_zone(spot):
    _, _, group = spot
    inputs = group.inputs
    assert (inputs["minSize"], inputs["maxSize"], inputs["desiredCapacity"]) == (0, 1, 1), group.fail("not one machine")
    assert inputs["vpcZoneIdentifiers"] == list(SUBNETS), group.fail("not every zone's subnet")
    assert inputs["name"] == RUN_ID, group.fail("the agent and the CLI find the group by the run id")
    assert inputs["waitForCapacityTimeout"] == "0", group.fail("up waits for capacity")
    assert inputs["healthCheckType"] == "EC2" and inputs["forceDelete"] is True


def test_spot_over_every_listed_type_in_the_users_order_without_rebalance(spot):
    """The types in the user's order, honoured for spot as far as capacity allows; capacity
    rebalancing off (in a group of one it ends the training machine with no notice)."""
    _, template, group = spot
    policy = group.inputs["mixedInstancesPolicy"]
    assert [o["instanceType"] for o in policy["launchTemplate"]["overrides"]] == list(TYPES)
    dist = policy["instancesDistribution"]
    assert dist["onDemandPercentageAboveBaseCapacity"] == 0 and dist["onDemandBaseCapacity"] == 0, \
        group.fail("spot asked, on-demand launched")
    assert dist["spotAllocationStrategy"] == "capacity-optimized-prioritized", group.fail("the order is ignored")
    assert group.inputs["capacityRebalance"] is False, group.fail("capacity rebalance on a group of one")
    assert "instanceMarketOptions" not in template.inputs, template.fail("market options belong to the group")


def test_on_demand_follows_the_listed_order_without_rebalance(on_demand):
    _, _, group = on_demand
    dist = group.inputs["mixedInstancesPolicy"]["instancesDistribution"]
    assert dist["onDemandPercentageAboveBaseCapacity"] == 100 and dist["onDemandAllocationStrategy"] == "prioritized"
    assert group.inputs["capacityRebalance"] is False


def test_the_group_may_take_half_an_hour_to_delete(spot):
    """The biggest GPU machines take longer to end than the provider's default 10 minutes."""
    _, template, group = spot
    assert group.timeouts == {"delete": "30m"}, group.fail(f"delete timeout {group.timeouts}")


def test_the_group_launches_the_stacks_own_template(spot):
    _, template, group = spot
    spec = group.inputs["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]
    assert spec["launchTemplateId"] == f"{RUN_ID}-id", group.fail("another template")


def test_ami_comes_from_the_ssm_parameter_and_the_root_volume_is_its_root_device(spot):
    run, template, _ = spot
    assert ("aws:ssm/getParameter:getParameter", DEFAULT_AMI_PARAMETER) in [
        (token, args.get("name")) for token, args in run.calls]
    assert template.inputs["imageId"] == AMI_ID, template.fail("AMI is not the SSM parameter's value")
    [disk] = template.inputs["blockDeviceMappings"]
    assert disk["deviceName"] == ROOT_DEVICE, template.fail("a second disk instead of the root volume")


def test_fsbp_ec2_8_imdsv2_required(spot):
    _, template, _ = spot
    assert template.inputs["metadataOptions"]["httpTokens"] == "required", template.fail("IMDSv1 allowed")


def test_fsbp_ec2_3_root_volume_encrypted_gp3_100gb_deleted_with_instance(spot):
    _, template, _ = spot
    ebs = template.inputs["blockDeviceMappings"][0]["ebs"]
    assert ebs["encrypted"] == "true", template.fail("root volume not encrypted")
    assert ebs["volumeType"] == "gp3" and ebs["volumeSize"] == 100, template.fail(f"root volume {ebs}")
    assert ebs["deleteOnTermination"] == "true", template.fail("root volume outlives the instance")


def test_os_shutdown_terminates_the_instance(spot):
    _, template, _ = spot
    assert template.inputs["instanceInitiatedShutdownBehavior"] == "terminate", template.fail(
        "an OS shutdown would leave a stopped instance and its volume")


def test_tags_name_the_run_on_machines_volumes_template_and_group(spot):
    _, template, group = spot
    specs = {t["resourceType"]: t["tags"] for t in template.inputs["tagSpecifications"]}
    assert set(specs) == {"instance", "volume"}, template.fail("machines or volumes untagged")
    group_tags = {t["key"]: t["value"] for t in group.inputs["tags"]}
    assert all(t["propagateAtLaunch"] for t in group.inputs["tags"]), group.fail("tags not propagated")
    for where, tags in (*specs.items(), ("template", template.inputs["tags"]), ("group", group_tags)):
        assert tags["RunId"] == RUN_ID, f"{where} lacks RunId"
        assert tags["CostCenter"] == "train" and tags["Project"] == "Chronos-Training", f"{where}: {tags}"
        assert tags["Environment"] == "dev" and tags["Name"] == f"chronos-{RUN_ID}", f"{where}: {tags}"


def test_required_tags_cannot_be_overridden():
    _, template, _ = launch(config(tags={"RunId": "someone-else", "CostCenter": "serve"}))
    assert template.inputs["tags"]["RunId"] == RUN_ID, template.fail("caller replaced RunId")
    assert template.inputs["tags"]["CostCenter"] == "train", template.fail("caller replaced CostCenter")


def test_profile_security_group_and_user_data(spot):
    _, template, _ = spot
    inputs = template.inputs
    assert inputs["vpcSecurityGroupIds"] == ["sg-0bbb"], template.fail("wrong security groups")
    assert inputs["iamInstanceProfile"] == {"name": "chronos-dev-access-instance-1a2b3c"}, template.fail("profile")
    assert base64.b64decode(inputs["userData"]).decode().startswith("#!/bin/bash"), template.fail("user data")
    assert inputs["instanceType"] == TYPES[0]


def test_region_is_the_configured_one_and_retries_are_bounded(spot):
    run, template, group = spot
    provider = run.one("pulumi:providers:aws")
    assert provider.inputs["region"] == "us-east-1", provider.fail("wrong region")
    # Provider inputs reach the engine as strings, as every provider config value does.
    assert int(provider.inputs["maxRetries"]) == PROVIDER_MAX_RETRIES <= 5, provider.fail("unbounded retries")
    for r in (template, group):
        assert r.provider.startswith(provider.urn), r.fail("not on the run's provider")


def test_exports_the_group(spot):
    run, _, _ = spot
    assert run.outputs == {"group": RUN_ID, "launch_template": f"{RUN_ID}-id"}


def test_no_public_ingress_path_is_declared_here(spot):
    """FSBP EC2.18/EC2.19: the run stack adds no security group or rule of its own."""
    run, _, _ = spot
    assert not [r.urn for r in run.resources if "securityGroup" in r.typ]


def test_no_deprecated_resource_or_argument(spot):
    run, _, _ = spot
    assert run.warnings == []
