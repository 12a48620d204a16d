"""The one place boto3 clients are made: endpoint, region, timeouts and botocore's retries."""
from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

# Retries are botocore's (standard mode: exponential backoff with jitter on throttling, 5xx and
# connection errors). 5 retries = 6 attempts, as Terraform's S3 backend: at a 20 % fault rate
# 4 attempts lose about 1 call in 1,500 (~1 run in 10 failed or lost its follower), 6 attempts
# about 1 in 60,000 (docs/reliability.md). Timeouts keep a dead endpoint from hanging a run.
RETRIES = {"total_max_attempts": 6, "mode": "standard"}
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
# As many pooled connections as transfer.py keeps requests in flight (a pool opens them lazily).
MAX_POOL_CONNECTIONS = 64


@dataclass(frozen=True)
class ConflictBackoff:
    """Waits between tries of a conditional write that S3 answered with 409.

    The one hand-written retry: botocore retries throttling, 5xx and lost connections, but not
    a 409 ConditionalRequestConflict (not in its retryable codes), and a conflict is not a blind
    retry anyway: the caller re-reads the object and decides (write again, busy, or fenced).
    Full jitter, so racing writers spread out; 8 tries wait at most ~9 s in all. At a 20 %
    conflict rate, 8 conflicts in a row happen once in ~400,000 writes (docs/reliability.md).
    """

    attempts: int = 8
    base_s: float = 0.05
    cap_s: float = 2.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, min(self.cap_s, self.base_s * 2 ** attempt))

    def wait(self, attempt: int) -> None:
        time.sleep(self.delay(attempt))


CONFLICT_BACKOFF = ConflictBackoff()

_lock = threading.Lock()


@dataclass(frozen=True)
class AwsTarget:
    """Where AWS calls go: the real endpoints (endpoint_url None) or a sandbox; as whom:
    `credentials` (access key, secret, session token or None), else boto3's usual chain."""

    region: str | None = None
    endpoint_url: str | None = None
    credentials: tuple[str, str, str | None] | None = None

    @classmethod
    def from_env(cls, region: str | None = None, endpoint_url: str | None = None) -> "AwsTarget":
        return cls(
            region=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        )


def client(service: str, target: AwsTarget | None = None, **config: Any):
    import boto3
    from botocore.config import Config

    target = target or AwsTarget.from_env()
    cfg = Config(
        retries=dict(RETRIES),
        connect_timeout=config.pop("connect_timeout", CONNECT_TIMEOUT_S),
        read_timeout=config.pop("read_timeout", READ_TIMEOUT_S),
        max_pool_connections=config.pop("max_pool_connections", MAX_POOL_CONNECTIONS),
        **config,
    )
    # boto3.Session is not thread-safe to create clients from concurrently.
    keys = {}
    if target.credentials:
        keys = dict(zip(("aws_access_key_id", "aws_secret_access_key", "aws_session_token"), target.credentials))
    with _lock:
        session = boto3.session.Session()
        made = session.client(
            service, region_name=target.region, endpoint_url=target.endpoint_url, config=cfg, **keys
        )
    made.meta.events.register("after-call", _name_the_action)
    return made


def _name_the_action(parsed=None, model=None, **_) -> None:
    """Every error response carries the IAM action that was refused or failed (`ec2:DeleteVolume`):
    a sentence about an AccessDenied names it instead of guessing the service."""
    if isinstance(parsed, dict) and "Error" in parsed and model is not None:
        parsed["Error"].setdefault("Action", f"{model.service_model.signing_name}:{model.name}")


def refused_action(exc: BaseException) -> str | None:
    """The IAM action of a failed call (`s3:GetObject`), when the client factory made its client."""
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Action")


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def is_precondition_failed(exc: BaseException) -> bool:
    return http_status(exc) == 412 or error_code(exc) in ("PreconditionFailed", "412")


def is_not_found(exc: BaseException) -> bool:
    return http_status(exc) == 404 or error_code(exc) in ("NoSuchKey", "404", "NotFound")


def is_conditional_conflict(exc: BaseException) -> bool:
    """S3's 409 ConditionalRequestConflict: a conditional request on this key raced another
    operation on it and was not applied. botocore does not retry it; the S3 API reference says
    to fetch the object's ETag and try again (PutObject, If-Match / If-None-Match)."""
    return error_code(exc) == "ConditionalRequestConflict"


def is_write_conflict(exc: BaseException) -> bool:
    """A conditional write that did not apply because of someone else: 412 (the condition no
    longer holds) or 409 (a concurrent request on the key). Either way: re-read, then decide."""
    return is_precondition_failed(exc) or is_conditional_conflict(exc)


def server_time(response: dict) -> datetime | None:
    """The `Date` header of a response: S3's clock, not ours."""
    value = (response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}).get("date")
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).astimezone(timezone.utc)
    except (TypeError, ValueError):
        return None
