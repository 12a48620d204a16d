"""The bucket: private, encrypted, TLS only, and emptying itself of what ages out."""
from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from instance.protocol.layout import bucket_name

from .persistent_config import PersistentConfig, lifecycle_rules
from .policies import tls_only_bucket_policy


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
