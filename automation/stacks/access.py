"""Who may do what: the instance's role (one inline least-privilege policy, one instance profile)
and the operator's customer managed policy, to attach to the people or CI roles that run
`chronos-train`."""
from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from .persistent_config import PersistentConfig
from .policies import assume_role_policy, instance_policy, operator_policy


class Access(pulumi.ComponentResource):
    instance_profile: pulumi.Output[str]
    instance_profile_arn: pulumi.Output[str]
    operator_policy_arn: pulumi.Output[str]

    def __init__(self, name: str, cfg: PersistentConfig, bucket_arn: pulumi.Input[str],
                 account: pulumi.Input[str], vpc_id: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("chronos:persistent:Access", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        role = aws.iam.Role(
            f"{name}-instance",
            description=f"Chronos training instance ({cfg.environment})",
            assume_role_policy=json.dumps(assume_role_policy()),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-instance",
            role=role.id,
            policy=pulumi.Output.all(bucket_arn, account).apply(
                lambda args: json.dumps(instance_policy(args[0], cfg.environment, cfg.region, args[1]))
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-instance", role=role.name, opts=child)
        operator = aws.iam.Policy(
            f"{name}-operator",
            description=f"Launch, watch, kill and verify chronos-train runs ({cfg.environment})",
            policy=pulumi.Output.all(bucket_arn, account, vpc_id, role.arn, profile.arn).apply(
                lambda args: json.dumps(operator_policy(args[0], cfg.environment, cfg.region, args[1], args[2],
                                                        args[3], args[4], cfg.ami_ssm_parameter))
            ),
            opts=child,
        )

        self.instance_profile = profile.name
        self.instance_profile_arn = profile.arn
        self.operator_policy_arn = operator.arn
        self.register_outputs({"instance_profile": profile.name, "instance_profile_arn": profile.arn,
                               "operator_policy_arn": operator.arn})
