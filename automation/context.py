"""Where a command acts: the sandbox (--local) or real AWS, resolved once per command.

Resolving is cheap on purpose (monitor must be fast): no STS call when the bucket is known
from CHRONOS_BUCKET or from the small cache written after the first lookup.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from instance.protocol.aws import AwsTarget, client, error_code, refused_action
from instance.protocol.layout import Layout, LayoutError, bucket_name, check_env

from .errors import BadInput, ChronosError
from .settings import home, settings


class ChronosConnectionError(ChronosError):
    """The endpoint (AWS or the sandbox) does not answer."""


class AwsFailing(ChronosError):
    """AWS answered with server errors or throttling until botocore's retries ran out."""


# What botocore retries (its "transient" and "throttling" kinds) and so what is left when its
# attempts are spent: the service is failing, not the caller's request.
_SERVER_SIDE_CODES = frozenset({"InternalError", "InternalFailure", "ServiceUnavailable", "SlowDown", "Throttling",
                                "ThrottlingException", "RequestLimitExceeded", "RequestTimeout"})


@dataclass(frozen=True)
class Target:
    env: str
    local: bool
    region: str
    bucket: str
    endpoint_url: str | None = None
    # As whom: (access key, secret, session token); None: boto3's chain (AWS: the user's shell).
    # The sandbox's is its operator's, so a command acts as the operator however it is called.
    credentials: tuple[str, str, str | None] | None = None

    @property
    def aws(self) -> AwsTarget:
        return AwsTarget(region=self.region, endpoint_url=self.endpoint_url, credentials=self.credentials)

    @property
    def layout(self) -> Layout:
        return Layout(self.env)

    @cached_property
    def s3(self):
        return client("s3", self.aws)

    @cached_property
    def ec2(self):
        return client("ec2", self.aws)

    @cached_property
    def autoscaling(self):
        return client("autoscaling", self.aws)

    def state_store(self):
        from instance.protocol.state import StateStore

        return StateStore(self.s3, self.bucket, self.env)

    def infra(self):
        """The infra record the persistent stack (or the sandbox) wrote."""
        from .infra_record import InfraRecord

        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.layout.infra)["Body"].read()
        except Exception as exc:
            # A missing bucket is a 404 too: only NoSuchKey means "bucket here, no record".
            if error_code(exc) != "NoSuchKey":
                raise translate_aws_error(exc, self) from None
            raise BadInput(
                f"infrastructure for env {self.env} is not deployed (no {self.layout.infra} in "
                f"bucket {self.bucket}); run `pulumi up` first, or use --local"
            ) from None
        try:
            return InfraRecord.from_dict(json.loads(body))
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{self.layout.infra} is invalid: {exc}") from None


# How each service says "not allowed": S3, IAM and Auto Scaling; KMS and SSM; EC2; an S3 HEAD.
DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccessDeniedException", "UnauthorizedOperation", "403"})


def translate_aws_error(exc: Exception, target: Target) -> Exception:
    """Turn the usual environment problems into one sentence and exit code 2."""
    name = type(exc).__name__
    code = error_code(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError") or code in (
        "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidClientTokenId"
    ):
        return BadInput("no valid AWS credentials found; run `aws configure` (or set AWS_PROFILE), or use --local")
    if code == "NoSuchBucket" and target.local:
        return BadInput(f"the sandbox has no bucket for env {target.env} (was it reset?); "
                        "`chronos-train sandbox start` seeds it again")
    if code == "NoSuchBucket":
        return BadInput(
            f"infrastructure for env {target.env} is not deployed (no bucket {target.bucket}); "
            "run `pulumi up` first, or use --local"
        )
    if code in DENIED_CODES:
        # The refused action comes with the error (the client factory names it): never a guess.
        action = refused_action(exc)
        what = f"{action} on bucket {target.bucket}" if action and action.startswith("s3:") else action or "a call"
        return BadInput(f"AWS refused {what} to these credentials ({code}); give this identity the operator "
                        "policy (docs/deploy.md) and check the region")
    meta = (getattr(exc, "response", None) or {}).get("ResponseMetadata") or {}
    status = int(meta.get("HTTPStatusCode") or 0)
    if code in _SERVER_SIDE_CODES or status >= 500:
        attempts = int(meta.get("RetryAttempts") or 0) + 1
        return AwsFailing(f"AWS answered {refused_action(exc) or 'a call'} with {code or 'an error'} (HTTP {status}) "
                          f"{attempts} time(s) in a row, its retries spent; try again in a few minutes"
                          + ("" if target.local else " (https://health.aws.amazon.com shows a degraded service)"))
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):
        where = target.endpoint_url or f"AWS in {target.region}"
        hint = "; start it with `chronos-train sandbox start`" if target.local else ""
        return ChronosConnectionError(f"cannot reach {where}{hint}")
    return exc


def resolve(env: str, local: bool, verify: bool = False) -> Target:
    """`verify`: a --local command that builds on the sandbox's seeding (launch) has the sandbox
    asked whether `env` is seeded (and seeded again if not); the others trust its record."""
    try:
        check_env(env)
    except LayoutError as exc:
        raise BadInput(str(exc)) from None
    if local:
        from .sandbox import control as sandbox

        info = sandbox.start((env,)) if verify else sandbox.ensure_running(env)
        sandbox.export_credentials(env)
        return Target(env=env, local=True, region=info.region, bucket=bucket_name(env, info.account, info.region),
                      endpoint_url=info.endpoint_url, credentials=sandbox.OPERATORS[env].credentials)
    knobs = settings()
    region = aws_region()
    bucket = knobs.bucket or _cached_bucket(env, region) or _discover_bucket(env, region)
    return Target(env=env, local=False, region=region, bucket=bucket, endpoint_url=knobs.endpoint_url)


def aws_region() -> str:
    """The region AWS calls go to: the environment, else the AWS config; bad input without one."""
    region = settings().region
    if region:
        return region
    from instance.protocol.aws import session

    region = session().region_name
    if not region:
        raise BadInput("no AWS region configured; set AWS_REGION or run `aws configure`, or use --local")
    return region


def _cache_path() -> Path:
    return home() / "targets.json"


def _cache_key(env: str, region: str) -> str:
    return f"{settings().profile}/{env}/{region}"


def _cached_bucket(env: str, region: str) -> str | None:
    try:
        return json.loads(_cache_path().read_text()).get(_cache_key(env, region))
    except (OSError, ValueError):
        return None


def _discover_bucket(env: str, region: str) -> str:
    sts = client("sts", AwsTarget(region=region))
    try:
        account = sts.get_caller_identity()["Account"]
    except Exception as exc:
        raise translate_aws_error(exc, Target(env, False, region, "?")) from None
    name = bucket_name(env, account, region)
    from instance.protocol.artifacts import write_json_atomic

    try:
        cache = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        cache = {}
    cache[_cache_key(env, region)] = name
    write_json_atomic(_cache_path(), cache)
    return name
