"""IAM and bucket policy documents of the persistent stack, as plain dicts (no Pulumi here).

Kept apart from the resources so the tests can read exactly what a statement grants.
"""
from __future__ import annotations

from instance.protocol.layout import DATASETS_PREFIX

# The instance may terminate only the instance it runs on. `${ec2:InstanceID}` resolves to the
# instance whose role credentials sign the request, so both the target (Resource) and the
# request's origin (ec2:SourceInstanceARN) must be that instance; credentials copied elsewhere
# terminate nothing. The OS-level fallback (`shutdown -h now` with instance-initiated shutdown =
# terminate) needs no permission at all, so a refused call here still ends the machine.
SELF_INSTANCE_ARN = "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"


def assume_role_policy() -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def instance_policy(bucket_arn: str, env: str, region: str, account: str) -> dict:
    """What the agent does and nothing more: read datasets, read/write its environment, end itself."""
    env_prefix = f"{env}/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadDatasets",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{bucket_arn}/{DATASETS_PREFIX}*"],
            },
            {
                "Sid": "ReadWriteEnvironment",
                "Effect": "Allow",
                # AbortMultipartUpload lets a failed large upload clean up after itself.
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": [f"{bucket_arn}/{env_prefix}*"],
            },
            {
                "Sid": "ListOwnPrefixes",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket_arn],
                "Condition": {"StringLike": {"s3:prefix": [f"{DATASETS_PREFIX}*", f"{env_prefix}*"]}},
            },
            {
                "Sid": "TerminateItselfOnly",
                "Effect": "Allow",
                "Action": ["ec2:TerminateInstances"],
                "Resource": [f"arn:aws:ec2:{region}:{account}:instance/${{ec2:InstanceID}}"],
                "Condition": {"ArnEquals": {"ec2:SourceInstanceARN": SELF_INSTANCE_ARN}},
            },
        ],
    }


def tls_only_bucket_policy(bucket_arn: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [bucket_arn, f"{bucket_arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }
        ],
    }
