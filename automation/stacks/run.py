"""The per-run stack (Automation API, inline program): the run's GPU machines, one at a time.

Everything a machine needs (subnets, security group, instance profile) already exists in the
persistent stack; this program only adds a launch template and an Auto Scaling group of at most
one machine, so a destroy leaves nothing billable.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from instance.protocol.group import CAPACITY_REBALANCE, group_name, mixed_instances_policy
from instance.protocol.layout import PROJECT_TAG

ROOT_VOLUME_GB = 100
RUN_COST_CENTER = "train"
# The provider retries a throttled or failed AWS call up to this many times in all. Its default
# (25, terraform-provider-aws) retries for many minutes with backoff (hashicorp/
# terraform-provider-aws#43193, #37568); capacity is the group's to find now, so what reaches
# the provider is a refusal (quota, permissions, a bad template) that should come back at once.
PROVIDER_MAX_RETRIES = 5
GROUP_DELETE_TIMEOUT = "30m"


@dataclass(frozen=True)
class RunStackConfig:
    run_id: str
    env: str
    region: str
    instance_types: tuple[str, ...]  # in order of preference
    spot: bool
    subnet_ids: tuple[str, ...]  # every zone's: the group launches wherever there is capacity
    security_group_id: str
    instance_profile: str
    ami_ssm_parameter: str
    user_data: str
    tags: dict[str, str] = field(default_factory=dict)

    def instance_tags(self) -> dict[str, str]:
        # The tags verify-cleanup searches by win over anything passed in.
        return {
            **self.tags,
            "Project": PROJECT_TAG,
            "Environment": self.env,
            "CostCenter": RUN_COST_CENTER,
            "RunId": self.run_id,
        }


class RunMachines(pulumi.ComponentResource):
    """The run's machines: a launch template (everything one machine is) and an Auto Scaling
    group of at most one machine that replaces a lost one (spot reclaimed, hardware) in any
    zone, on any of the listed types. Both cost nothing at rest and leave with the stack.

    Every ending of the run takes the group's desired capacity to 0 before the machine ends
    (instance/protocol/group.py); the agent on each new machine decides from the lock whether
    the run goes on (instance/protocol/attempts.py)."""

    def __init__(self, name: str, cfg: RunStackConfig, ami: pulumi.Input[str], root_device: pulumi.Input[str],
                 opts: pulumi.ResourceOptions):
        super().__init__("chronos:run:Machines", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = cfg.instance_tags()
        self.template = aws.ec2.LaunchTemplate(
            name,
            name=cfg.run_id,
            image_id=ami,
            instance_type=cfg.instance_types[0],  # the group's overrides list them all
            iam_instance_profile={"name": cfg.instance_profile},
            vpc_security_group_ids=[cfg.security_group_id],
            user_data=base64.b64encode(cfg.user_data.encode()).decode(),
            # Every end path terminates the machine through EC2 first; an OS power-off is the
            # last resort, and "terminate" makes it end the billing where EC2 honours it (older
            # Auto Scaling guides say a group ignores it: the machine would be stopped and
            # replaced, which the sandbox plays).
            instance_initiated_shutdown_behavior="terminate",
            metadata_options={"http_tokens": "required", "http_endpoint": "enabled", "http_put_response_hop_limit": 1},
            block_device_mappings=[{
                "device_name": root_device,
                "ebs": {"volume_size": ROOT_VOLUME_GB, "volume_type": "gp3", "encrypted": "true",
                        "delete_on_termination": "true"},
            }],
            # So verify-cleanup finds a machine, or a volume that outlived it, by the run's tag.
            tag_specifications=[{"resource_type": kind, "tags": tags} for kind in ("instance", "volume")],
            tags=tags,
            opts=child,
        )
        policy = mixed_instances_policy(cfg.run_id, list(cfg.instance_types), cfg.spot)
        distribution = policy["InstancesDistribution"]
        self.group = aws.autoscaling.Group(
            name,
            name=group_name(cfg.run_id),
            min_size=0,
            max_size=1,
            desired_capacity=1,
            vpc_zone_identifiers=list(cfg.subnet_ids),
            capacity_rebalance=CAPACITY_REBALANCE,
            mixed_instances_policy={
                "launch_template": {
                    "launch_template_specification": {"launch_template_id": self.template.id,
                                                      "version": self.template.latest_version.apply(str)},
                    "overrides": [{"instance_type": t} for t in cfg.instance_types],
                },
                "instances_distribution": {
                    "on_demand_allocation_strategy": distribution["OnDemandAllocationStrategy"],
                    "on_demand_base_capacity": distribution["OnDemandBaseCapacity"],
                    "on_demand_percentage_above_base_capacity": distribution["OnDemandPercentageAboveBaseCapacity"],
                    "spot_allocation_strategy": distribution["SpotAllocationStrategy"],
                },
            },
            # `up` returns once the group exists: finding capacity is the group's job from then
            # on (minutes, or longer for scarce types), watched through its scaling activities.
            wait_for_capacity_timeout="0",
            # A machine is replaced when EC2 reports it gone, never for a missed ELB check.
            health_check_type="EC2",
            health_check_grace_period=600,
            # Destroy removes the group even while a machine is still in it (the run has ended).
            force_delete=True,
            tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in tags.items()],
            # The delete waits for the group's machines to end; the provider's default 10 minutes
            # is short for the biggest GPU machines' shutdown (p4d, p5). A destroy that still
            # fails leaves a stack record and a group of 0 machines: verify-cleanup lists them.
            opts=pulumi.ResourceOptions(parent=self, custom_timeouts=pulumi.CustomTimeouts(delete=GROUP_DELETE_TIMEOUT)),
        )
        self.register_outputs({"group": self.group.name})


def build_run_stack(cfg: RunStackConfig) -> None:
    """Declare the run's machines and export the group's name."""
    provider = aws.Provider(f"{cfg.run_id}-aws", region=cfg.region, max_retries=PROVIDER_MAX_RETRIES)
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    ami = aws.ssm.get_parameter_output(name=cfg.ami_ssm_parameter, opts=invoke).value
    # The root volume is the AMI's root device; a mapping under another name adds a second disk.
    root_device = aws.ec2.get_ami_output(owners=["amazon"], most_recent=True,
                                         filters=[{"name": "image-id", "values": [ami]}], opts=invoke).root_device_name
    machines = RunMachines(cfg.run_id, cfg, ami, root_device, pulumi.ResourceOptions(provider=provider))
    pulumi.export("group", machines.group.name)
    pulumi.export("launch_template", machines.template.id)
