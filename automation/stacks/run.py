"""The per-run stack (Automation API, inline program): one GPU instance that ends itself.

Everything the instance needs (subnet, security group, instance profile) already exists in the
persistent stack; this program only adds the machine, so a destroy leaves nothing billable.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from instance.protocol.layout import PROJECT_TAG

ROOT_VOLUME_GB = 100
RUN_COST_CENTER = "train"
# The provider retries a throttled or failed AWS call up to this many times in all. Its default
# (25, terraform-provider-aws) also applies to InsufficientInstanceCapacity, which it marks
# retryable for RunInstances: with backoff that is ~50 minutes before a capacity error comes
# back (hashicorp/terraform-provider-aws#43193, #37568), and the zone fallback never gets its
# turn. 5 tries give up within a minute or so; throttling on one RunInstances is rare enough.
PROVIDER_MAX_RETRIES = 5
# An instance is created and running in 1-3 minutes; past this the create fails rather than
# holding the launch for the provider's default 10 minutes (aws_instance `timeouts`).
INSTANCE_CREATE_TIMEOUT = "8m"
INSTANCE_DELETE_TIMEOUT = "20m"


@dataclass(frozen=True)
class RunStackConfig:
    run_id: str
    env: str
    region: str
    instance_type: str
    spot: bool
    subnet_id: str
    zone: str
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


def _market_options(spot: bool) -> dict | None:
    if not spot:
        return None
    # One-time: an interrupted spot machine is gone, never restarted behind the agent's back;
    # the agent's state file records the run as spot_interrupted.
    return {
        "market_type": "spot",
        "spot_options": {"spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"},
    }


def build_run_stack(cfg: RunStackConfig) -> None:
    """Declare the run's instance and export its id and zone."""
    provider = aws.Provider(f"{cfg.run_id}-aws", region=cfg.region, max_retries=PROVIDER_MAX_RETRIES)
    ami = aws.ssm.get_parameter_output(
        name=cfg.ami_ssm_parameter, opts=pulumi.InvokeOutputOptions(provider=provider)
    ).value
    tags = cfg.instance_tags()
    instance = aws.ec2.Instance(
        cfg.run_id,
        ami=ami,
        instance_type=cfg.instance_type,
        subnet_id=cfg.subnet_id,
        availability_zone=cfg.zone,
        vpc_security_group_ids=[cfg.security_group_id],
        iam_instance_profile=cfg.instance_profile,
        user_data=cfg.user_data,
        # The bootstrap's dead-man switch and the agent's cleanup end the run with an OS
        # shutdown; "terminate" makes that shutdown stop the billing instead of parking the
        # instance (and its volume) in "stopped".
        instance_initiated_shutdown_behavior="terminate",
        instance_market_options=_market_options(cfg.spot),
        metadata_options={"http_tokens": "required", "http_endpoint": "enabled", "http_put_response_hop_limit": 1},
        root_block_device={
            "volume_size": ROOT_VOLUME_GB,
            "volume_type": "gp3",
            "encrypted": True,
            "delete_on_termination": True,
        },
        tags=tags,
        volume_tags=tags,  # so verify-cleanup can find a volume that outlived its instance
        opts=pulumi.ResourceOptions(
            provider=provider,
            custom_timeouts=pulumi.CustomTimeouts(create=INSTANCE_CREATE_TIMEOUT, delete=INSTANCE_DELETE_TIMEOUT),
        ),
    )
    pulumi.export("instance_id", instance.id)
    pulumi.export("zone", instance.availability_zone)
