"""`{env}/infra.json`: what the persistent stack (or the sandbox) leaves for launches to read.

The CLI reads it from S3, so launch/monitor/kill/verify never need the Pulumi CLI.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# Public SSM parameter of the AWS Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04).
DEFAULT_AMI_PARAMETER = (
    "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
)


@dataclass(frozen=True)
class InfraRecord:
    env: str
    region: str
    account: str
    bucket: str
    vpc_id: str
    subnets: dict[str, str]  # availability zone -> subnet id
    security_group_id: str
    instance_profile: str  # instance profile name
    instance_profile_arn: str = ""
    operator_policy_arn: str = ""  # attach to whoever runs chronos-train (docs/deploy.md)
    ami_ssm_parameter: str = DEFAULT_AMI_PARAMETER
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "InfraRecord":
        known = {f for f in cls.__dataclass_fields__}
        missing = [f for f in ("env", "region", "account", "bucket", "vpc_id", "subnets",
                               "security_group_id", "instance_profile") if f not in doc]
        if missing:
            raise ValueError(f"infra.json lacks {', '.join(missing)}; re-run `pulumi up`")
        return cls(**{k: v for k, v in doc.items() if k in known})
