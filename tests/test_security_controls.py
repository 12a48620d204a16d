"""Security properties across the two stacks, under Pulumi mocks.

tests/test_persistent_stack.py and tests/test_run_stack.py check each stack alone, one FSBP
control per test. What they cannot see is the hand-over: the machine that actually runs is made by
the run stack from the persistent stack's infra.json, through the EC2 executor. Here the persistent
stack is built from the dev stack file, its infra.json goes through `Ec2Executor.provision` (a
recording StackOps stands in for the Automation API) and the run stack is built from exactly what
the executor asked for. The controls are then checked on the machines its launch template makes:
- IAM (no `*` action, self-only terminate): the run stack declares no IAM of its own, and the
  instance profile it attaches is the persistent one, whose only EC2 right is terminating itself;
- EC2.18/EC2.19: the machines sit only in the persistent egress-only group, in persistent subnets;
- EC2.8 and EC2.3 for every launch the executor makes, spot included.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from automation.executors.base import ProvisionRequest
from automation.executors.ec2 import Ec2Executor
from automation.infra_record import InfraRecord
from automation.stacks.policies import SELF_INSTANCE_ARN
from automation.stacks.run import build_run_stack
from instance.protocol.aws import AwsTarget
from instance.protocol.runconfig import parse_config
from tests.conftest import deploy
from tests.pulumi_harness import AMI_ID, policy_doc, run_program, stack_config_file
from tests.test_persistent_stack import GROUP, OBJECT, PROFILE, ROLE, ROLE_POLICY, SUBNET, run_main

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
ASG = "aws:autoscaling/group:Group"
RUN_ID = "run-20261128-203700-5ec0"


class RecordingOps:
    """The StackOps seam: remembers the run stack config the executor asks Pulumi for."""

    def __init__(self):
        self.configs = []

    def up(self, stack, cfg):
        self.configs.append(cfg)
        return {"group": stack, "launch_template": f"{stack}-id"}


@pytest.fixture(scope="module")
def persistent():
    return run_main(stack_config_file(ROOT / "Pulumi.dev.yaml"))


@pytest.fixture(scope="module")
def infra(persistent) -> InfraRecord:
    return InfraRecord.from_dict(json.loads(persistent.one(OBJECT).inputs["content"]))


def launched(infra: InfraRecord, spot: bool, endpoint: str):
    """The run stack built from what the executor asks for, given the persistent infra.json.
    (The executor then looks for the group's first machine in EC2: moto's, where there is none.)"""
    ops = RecordingOps()
    config = parse_config({"dataset": "cached-datasets/2026/11/", "instance": {"type": "g5.xlarge", "spot": spot}})
    deploy(endpoint)  # moto's dev deployed, so the operator's policy is in force there
    executor = Ec2Executor("dev", infra.bucket, infra.region, ops=ops, render_user_data=lambda **_: "#!/bin/bash\n",
                           target=AwsTarget(infra.region, endpoint), first_machine_wait=0)  # the operator
    executor.provision(ProvisionRequest(RUN_ID, "dev", config, infra))
    (cfg,) = ops.configs
    run = run_program(lambda: build_run_stack(cfg), project="chronos-run", stack=RUN_ID,
                      ssm={infra.ami_ssm_parameter: AMI_ID})
    return run, run.one(TEMPLATE), run.one(ASG)


@pytest.fixture(scope="module", params=[False, True], ids=["on-demand", "spot"])
def machine(request, infra, moto_endpoint):
    return launched(infra, request.param, moto_endpoint)


def _allow_statements(resource) -> list[dict]:
    statements = policy_doc(resource.inputs["policy"])["Statement"]
    return [s for s in (statements if isinstance(statements, list) else [statements]) if s["Effect"] == "Allow"]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def test_fsbp_iam_run_machine_gets_no_wildcard_and_may_terminate_only_itself(machine, persistent, infra):
    run, template, _ = machine
    assert not [r.urn for r in run.resources if r.typ.startswith("aws:iam/")], "the run stack grants IAM of its own"
    assert template.inputs["iamInstanceProfile"] == {"name": infra.instance_profile}, template.fail("not the persistent profile")
    profile, role, policy = persistent.one(PROFILE), persistent.one(ROLE), persistent.one(ROLE_POLICY)
    assert infra.instance_profile.startswith(profile.name), profile.fail("infra.json names another profile")
    assert profile.inputs["role"].startswith(role.name) and policy.inputs["role"] == f"{role.name}-id"
    allows = _allow_statements(policy)
    actions = [a for s in allows for a in _as_list(s["Action"])]
    assert not [a for a in actions if "*" in a], policy.fail(f"wildcard actions {actions}")
    ec2 = [s for s in allows if any(a.startswith("ec2:") for a in _as_list(s["Action"]))]
    assert [s["Action"] for s in ec2] == [["ec2:TerminateInstances"]], policy.fail(f"EC2 rights {ec2}")
    assert ec2[0]["Condition"] == {"ArnEquals": {"ec2:SourceInstanceARN": SELF_INSTANCE_ARN}}, policy.fail(ec2)


def test_fsbp_ec2_18_ec2_19_run_machine_sits_only_in_the_egress_only_group(machine, persistent, infra):
    _, template, asg = machine
    group = persistent.one(GROUP)
    assert template.inputs["vpcSecurityGroupIds"] == [f"{group.name}-id"] == [infra.security_group_id], \
        template.fail(f"security groups {template.inputs['vpcSecurityGroupIds']}")
    assert group.inputs["ingress"] == [], group.fail("ingress on the machine's group")
    assert [(r["protocol"], r["fromPort"], r["toPort"]) for r in group.inputs["egress"]] == [("tcp", 443, 443)]
    subnets = {f"{s.name}-id" for s in persistent.of_type(SUBNET)}
    assert set(asg.inputs["vpcZoneIdentifiers"]) == subnets, asg.fail("machines outside the persistent subnets")
    assert "networkInterfaces" not in template.inputs, template.fail("an interface could name other groups")


def test_fsbp_ec2_8_ec2_3_every_launch_requires_imdsv2_and_encrypts_its_volume(machine):
    _, template, _ = machine
    assert template.inputs["metadataOptions"]["httpTokens"] == "required", template.fail("IMDSv1 allowed")
    assert template.inputs["metadataOptions"]["httpPutResponseHopLimit"] == 1, template.fail("IMDS reachable off-host")
    [root] = template.inputs["blockDeviceMappings"]
    assert root["ebs"]["encrypted"] == "true" and root["ebs"]["deleteOnTermination"] == "true", \
        template.fail(f"root volume {root}")
