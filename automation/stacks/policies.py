"""IAM and bucket policy documents of the persistent stack, as plain dicts (no Pulumi here).

Kept apart from the resources so the tests can read exactly what a statement grants.
"""
from __future__ import annotations

from instance.protocol.layout import DATASETS_PREFIX, PYTHON_ENV_PREFIX, PROJECT_TAG

# The instance may terminate only the instance it runs on. `${ec2:InstanceID}` resolves to the
# instance whose role credentials sign the request, so both the target (Resource) and the
# request's origin (ec2:SourceInstanceARN) must be that instance; credentials copied elsewhere
# terminate nothing. Every end path calls it first (after leaving the group); the OS power-off
# comes last and may only stop a group's machine (Auto Scaling may ignore the template's
# shutdown behaviour), which its group then replaces: docs/reliability.md.
SELF_INSTANCE_ARN = "arn:aws:ec2:*:*:instance/${ec2:InstanceID}"


def group_arn(region: str, account: str, name: str) -> str:
    """An Auto Scaling group's ARN; the group's UUID in it is matched by `*`."""
    return f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{name}"


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


def _objects(bucket_arn: str, *patterns: str) -> list[str]:
    return [f"{bucket_arn}/{p}" for p in patterns]


def run_prefixes(env: str) -> tuple[str, ...]:
    """The keys a run writes: the lock, its logs and records, its outputs. Never infra.json
    (the persistent stack's) nor pulumi/ (the run stacks' state, which names the profile)."""
    return (f"{env}/system-state.json", f"{env}/logs/*", f"{env}/run-*")


def instance_policy(bucket_arn: str, env: str, region: str, account: str) -> dict:
    """What the agent does and nothing more: read datasets, save the environment cache, write its
    run's state, records and outputs, end itself."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadDatasets",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": _objects(bucket_arn, f"{DATASETS_PREFIX}*"),
            },
            {
                # The first run on a new requirements file builds the environment and saves it.
                "Sid": "SaveEnvironmentCache",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": _objects(bucket_arn, f"{PYTHON_ENV_PREFIX}*"),
            },
            {
                "Sid": "ReadWriteRuns",
                "Effect": "Allow",
                # AbortMultipartUpload lets a failed large upload clean up after itself.
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": _objects(bucket_arn, *run_prefixes(env)),
            },
            {
                # Without ListBucket on the bucket, S3 answers a GET or HEAD of a missing key with
                # 403, not 404 (the agent probes for its own records, checkpoints and the
                # environment cache before they exist). A GET carries no s3:prefix, so a grant
                # limited by prefix may not count (reports differ): this one has no condition. It
                # reveals key names in this env's bucket, never their contents.
                "Sid": "ListBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket_arn],
            },
            {
                # Ending a run takes its group's desired capacity to 0 first (the machine leaves
                # its group), or the group would replace the machine. Only project groups.
                "Sid": "EndOwnRunGroup",
                "Effect": "Allow",
                "Action": ["autoscaling:DetachInstances", "autoscaling:UpdateAutoScalingGroup"],
                "Resource": [group_arn(region, account, "run-*")],
                "Condition": {"StringEquals": {"aws:ResourceTag/Project": PROJECT_TAG}},
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


# Describe calls cannot be scoped to a resource on AWS: they are authorised against "*". What
# the CLI reads (verify, monitor, kill) and what the run program's aws.ec2.Instance reads while it
# creates, refreshes and destroys the machine (terraform-provider-aws ec2_instance.go: create
# looks up the AMI's root device; read describes the type, tags, volumes, VPC, four instance
# attributes and, for spot, the request).
OPERATOR_DESCRIBE_ACTIONS = (
    "ec2:DescribeInstances",
    "ec2:DescribeInstanceAttribute",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeImages",
    "ec2:DescribeTags",
    "ec2:DescribeVolumes",
    "ec2:DescribeVpcs",
    "ec2:DescribeSpotInstanceRequests",
    # A spot launch records what AWS charges now per type and zone, for the run's cost.
    "ec2:DescribeSpotPriceHistory",
    # `chronos-train doctor` checks that the infrastructure infra.json names exists.
    "ec2:DescribeSubnets",
    "ec2:DescribeSecurityGroups",
    # The run's launch template and Auto Scaling group (create, refresh, destroy; monitor reads
    # the group's scaling activities to tell capacity from quota).
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeLaunchTemplateVersions",
    "autoscaling:DescribeAutoScalingGroups",
    "autoscaling:DescribeScalingActivities",
    # `doctor`: the key the root volume is encrypted with (a customer managed key must let Auto
    # Scaling use it).
    "ec2:GetEbsDefaultKmsKeyId",
)


def operator_policy(bucket_arn: str, env: str, region: str, account: str, vpc_id: str,
                    instance_role_arn: str, instance_profile_arn: str, ami_parameter: str) -> dict:
    """What a person (or their CI role) needs to launch, watch, kill and verify runs, including
    the calls the run stack's Automation API makes. Attach it to that user or role."""
    ec2 = f"arn:aws:ec2:{region}:{account}"
    project_resource = {"StringEquals": {"aws:ResourceTag/Project": PROJECT_TAG}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                # The bucket is this environment's own: listing it whole feeds verify's storage
                # report, and without ListBucket S3 answers 403 instead of 404 for a missing key,
                # which the Pulumi backend and the lock protocol rely on.
                "Sid": "ListBucket",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
                "Resource": [bucket_arn],
            },
            {
                "Sid": "DoctorReadsBucketSettings",
                "Effect": "Allow",
                "Action": ["s3:GetEncryptionConfiguration", "s3:GetLifecycleConfiguration"],
                "Resource": [bucket_arn],
            },
            {
                "Sid": "DoctorReadsQuotasAndProfile",
                "Effect": "Allow",
                "Action": ["servicequotas:GetServiceQuota", "iam:GetInstanceProfile"],
                "Resource": [f"arn:aws:servicequotas:{region}:{account}:ec2/*", instance_profile_arn],
            },
            {
                "Sid": "DoctorReadsTheEbsKey",
                "Effect": "Allow",
                "Action": ["kms:DescribeKey", "kms:GetKeyPolicy"],
                "Resource": [f"arn:aws:kms:{region}:{account}:key/*"],
            },
            {
                "Sid": "ReadEnvironmentAndDatasets",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": _objects(bucket_arn, f"{env}/*", f"{DATASETS_PREFIX}*"),
            },
            {
                "Sid": "WriteRunsAndRunStacks",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": _objects(bucket_arn, *run_prefixes(env), f"{env}/pulumi/*"),
            },
            {
                "Sid": "UploadDatasets",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": _objects(bucket_arn, f"{DATASETS_PREFIX}????/??/*"),
            },
            {
                # verify-cleanup --fix ends a machine's interrupted save of the environment cache
                # (its parts bill until the lifecycle rule removes them); it writes nothing there.
                "Sid": "AbortEnvironmentUploads",
                "Effect": "Allow",
                "Action": ["s3:AbortMultipartUpload"],
                "Resource": _objects(bucket_arn, f"{PYTHON_ENV_PREFIX}*"),
            },
            {
                "Sid": "Describe",
                "Effect": "Allow",
                "Action": list(OPERATOR_DESCRIBE_ACTIONS),
                "Resource": ["*"],
            },
            {
                "Sid": "LaunchTaggedMachines",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
                "Condition": {"StringEquals": {"aws:RequestTag/Project": PROJECT_TAG}},
            },
            {
                "Sid": "LaunchIntoOwnNetwork",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": [f"{ec2}:subnet/*", f"{ec2}:security-group/*", f"{ec2}:network-interface/*"],
                "Condition": {"ArnEquals": {"ec2:Vpc": f"{ec2}:vpc/{vpc_id}"}},
            },
            {
                "Sid": "LaunchFromAmazonImages",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances"],
                "Resource": [f"arn:aws:ec2:{region}::image/*", f"arn:aws:ec2:{region}::snapshot/*"],
            },
            {
                "Sid": "LaunchSpot",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CancelSpotInstanceRequests"],
                "Resource": [f"{ec2}:spot-instances-request/*"],
            },
            {
                "Sid": "TagOnLaunchOnly",
                "Effect": "Allow",
                "Action": ["ec2:CreateTags"],
                "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
                "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}},
            },
            {
                # Pulumi sets the shutdown behaviour after launch; verify --fix ends leftovers.
                "Sid": "ManageProjectMachines",
                "Effect": "Allow",
                "Action": ["ec2:ModifyInstanceAttribute", "ec2:TerminateInstances", "ec2:DeleteVolume"],
                "Resource": [f"{ec2}:instance/*", f"{ec2}:volume/*"],
                "Condition": project_resource,
            },
            {
                "Sid": "CreateTaggedLaunchTemplates",
                "Effect": "Allow",
                "Action": ["ec2:CreateLaunchTemplate", "ec2:CreateTags"],
                "Resource": [f"{ec2}:launch-template/*"],
                "Condition": {"StringEquals": {"aws:RequestTag/Project": PROJECT_TAG}},
            },
            {
                # The group launches from the template with the caller's permissions checked
                # (RunInstances on the template); destroy removes it.
                "Sid": "UseAndDeleteProjectLaunchTemplates",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:DeleteLaunchTemplate", "ec2:CreateLaunchTemplateVersion",
                           "ec2:ModifyLaunchTemplate"],
                "Resource": [f"{ec2}:launch-template/*"],
                "Condition": project_resource,
            },
            {
                "Sid": "CreateTaggedRunGroups",
                "Effect": "Allow",
                "Action": ["autoscaling:CreateAutoScalingGroup", "autoscaling:CreateOrUpdateTags"],
                "Resource": [group_arn(region, account, "run-*")],
                "Condition": {"StringEquals": {"aws:RequestTag/Project": PROJECT_TAG}},
            },
            {
                # kill and verify-cleanup --fix set a run's group to 0 machines before ending them.
                "Sid": "ManageProjectRunGroups",
                "Effect": "Allow",
                "Action": ["autoscaling:UpdateAutoScalingGroup", "autoscaling:DeleteAutoScalingGroup",
                           "autoscaling:SetDesiredCapacity", "autoscaling:DetachInstances",
                           "autoscaling:TerminateInstanceInAutoScalingGroup"],
                "Resource": [group_arn(region, account, "run-*")],
                "Condition": {"StringEquals": {"aws:ResourceTag/Project": PROJECT_TAG}},
            },
            {
                # The first group of an account creates Auto Scaling's service-linked role.
                "Sid": "CreateAutoScalingServiceRole",
                "Effect": "Allow",
                "Action": ["iam:CreateServiceLinkedRole"],
                "Resource": [f"arn:aws:iam::{account}:role/aws-service-role/autoscaling.amazonaws.com/*"],
                "Condition": {"StringEquals": {"iam:AWSServiceName": "autoscaling.amazonaws.com"}},
            },
            {
                "Sid": "PassInstanceRoleToEc2",
                "Effect": "Allow",
                "Action": ["iam:PassRole"],
                "Resource": [instance_role_arn],
                "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
            },
            {
                # A spot request needs EC2's service-linked role; the first spot launch creates it.
                "Sid": "CreateSpotServiceRole",
                "Effect": "Allow",
                "Action": ["iam:CreateServiceLinkedRole"],
                "Resource": [f"arn:aws:iam::{account}:role/aws-service-role/spot.amazonaws.com/*"],
                "Condition": {"StringEquals": {"iam:AWSServiceName": "spot.amazonaws.com"}},
            },
            {
                "Sid": "ReadAmiParameter",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter"],
                # Public parameters (/aws/service/...) have an empty account field; `*` matches it.
                "Resource": [f"arn:aws:ssm:{region}:*:parameter/{ami_parameter.lstrip('/')}"],
            },
        ],
    }
