"""The bucket: private, encrypted, TLS only, and emptying itself of what ages out."""
from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from instance.protocol.layout import bucket_name

from .persistent_config import MULTIPART_ABORT_DAYS, PersistentConfig
from .policies import tls_only_bucket_policy


def lifecycle_rules(cfg: PersistentConfig) -> list[dict]:
    """Rules by prefix; `cached-datasets/` has none, so datasets stay until deleted by hand."""
    env = cfg.environment
    return [
        {
            "id": "expire-logs",
            "status": "Enabled",
            "filter": {"prefix": f"{env}/logs/"},
            "expiration": {"days": cfg.log_retention_days},
        },
        {
            "id": "age-run-outputs",
            "status": "Enabled",
            "filter": {"prefix": f"{env}/run-"},
            # 30 days is S3's minimum before STANDARD_IA: the seed's 7 days is refused by S3.
            "transitions": [{"days": cfg.run_transition_days, "storage_class": "STANDARD_IA"}],
            "expiration": {"days": cfg.run_expiration_days},
        },
        {
            # Parts of an interrupted upload are billed but invisible in a listing; whole bucket.
            "id": "abort-incomplete-uploads",
            "status": "Enabled",
            "filter": {},
            "abort_incomplete_multipart_upload": {"days_after_initiation": MULTIPART_ABORT_DAYS},
        },
    ]


class Storage(pulumi.ComponentResource):
    bucket: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]

    def __init__(self, name: str, cfg: PersistentConfig, account: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("chronos:persistent:Storage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # No force_destroy: `pulumi destroy` must not silently delete trained models.
        bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket=pulumi.Output.from_input(account).apply(
                lambda acct: bucket_name(cfg.environment, acct, cfg.region)),
            opts=child,
        )
        self.encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse",
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}, opts=child
        )
        aws.s3.BucketPolicy(
            f"{name}-tls-only",
            bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: json.dumps(tls_only_bucket_policy(arn))),
            # S3 rejects a policy write racing the public access block on a new bucket.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[block]),
        )
        aws.s3.BucketLifecycleConfiguration(f"{name}-lifecycle", bucket=bucket.id, rules=lifecycle_rules(cfg),
                                            opts=child)

        self.bucket = bucket.bucket
        self.bucket_arn = bucket.arn
        self.register_outputs({"bucket": bucket.bucket, "bucket_arn": bucket.arn})
