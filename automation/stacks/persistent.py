"""The persistent stack (`pulumi up` once per environment): everything free at rest.

`build_persistent_stack` is the whole program; `__main__.py` only reads the config and exports
what this returns. The same values land in `{env}/infra.json`, which is how the CLI finds the
subnets, security group and instance profile without the Pulumi CLI.
"""
from __future__ import annotations

import pulumi
import pulumi_aws as aws

from instance.protocol.layout import PROJECT_TAG, Layout

from ..infra_record import InfraRecord
from .access import Access
from .network import Network
from .persistent_config import PersistentConfig, StackConfigError
from .storage import Storage


def default_tags(cfg: PersistentConfig) -> dict[str, str]:
    return {"Project": PROJECT_TAG, "Environment": cfg.environment, "CostCenter": cfg.cost_center}


def _zones(cfg: PersistentConfig, provider: aws.Provider) -> tuple[str, ...]:
    if cfg.availability_zones is not None:
        return cfg.availability_zones
    # Only the region's regular zones: Local and Wavelength Zones (opt-in) rarely offer GPUs.
    found = aws.get_availability_zones(
        state="available",
        filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
        opts=pulumi.InvokeOptions(provider=provider),
    )
    if not found.names:
        raise StackConfigError(f"aws:region {cfg.region} reports no available zone; check the region name")
    return tuple(sorted(found.names))


def build_persistent_stack(cfg: PersistentConfig) -> dict[str, pulumi.Output]:
    """Declare every resource of the environment; returns the stack outputs (= infra.json)."""
    name = f"chronos-{cfg.environment}"
    # One explicit provider carries the tags, so every resource is tagged without repeating them.
    provider = aws.Provider(name, region=cfg.region, default_tags={"tags": default_tags(cfg)})
    scoped = pulumi.ResourceOptions(providers=[provider])
    account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=provider)).account_id

    network = Network(f"{name}-network", cfg, _zones(cfg, provider), opts=scoped)
    storage = Storage(f"{name}-storage", cfg, account, opts=scoped)
    access = Access(f"{name}-access", cfg, storage.bucket_arn, account, network.vpc_id, opts=scoped)

    outputs: dict[str, pulumi.Output] = {
        "env": pulumi.Output.from_input(cfg.environment),
        "region": pulumi.Output.from_input(cfg.region),
        "account": account,
        "bucket": storage.bucket,
        "vpc_id": network.vpc_id,
        "subnets": pulumi.Output.from_input(network.subnets),
        "security_group_id": network.security_group_id,
        "instance_profile": access.instance_profile,
        "instance_profile_arn": access.instance_profile_arn,
        "operator_policy_arn": access.operator_policy_arn,
        "ami_ssm_parameter": pulumi.Output.from_input(cfg.ami_ssm_parameter),
    }
    aws.s3.BucketObjectv2(
        f"{name}-infra-record",
        bucket=storage.bucket,
        key=Layout(cfg.environment).infra,
        content=pulumi.Output.all(**outputs).apply(lambda values: InfraRecord(**values).to_json()),
        content_type="application/json",
        # Written after default encryption is in place, so even the first version is SSE-S3.
        opts=pulumi.ResourceOptions(parent=storage, depends_on=[storage.encryption]),
    )
    return outputs
