"""The one place boto3 clients are made: endpoint, region, timeouts and botocore's retries."""
from __future__ import annotations

import os
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from weakref import WeakKeyDictionary

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


class _Clients:
    """The process's sessions and clients. A boto3 Session costs little; what costs is what it
    loads: each new one resolves credentials again and reads and parses every service model it
    is asked for (EC2's is 4 MB of JSON: 0.06 to 0.2 s of a command that must answer at once).
    So one session per AWS environment of the process (credentials, profile and region come from
    the AWS_* variables, which a --local command switches to the operator's, and the tests switch
    between identities), all sharing one loader, so a model is parsed once per process; and one
    client per (service, where, as whom, config), made on first use and kept. botocore's clients
    are thread-safe; making them is not (the session's caches), hence the lock."""

    MAX_SESSIONS = 16
    MAX_CLIENTS = 64  # a process that talks to many endpoints (the tests) drops the oldest

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loader = None
        self.sessions: OrderedDict[tuple, Any] = OrderedDict()
        self.made: OrderedDict[tuple, Any] = OrderedDict()

    def session(self, environment: tuple):
        """The boto3 Session for this AWS environment (call with the lock held)."""
        found = self.sessions.get(environment)
        if found is not None:
            self.sessions.move_to_end(environment)
            return found
        import boto3
        import botocore.session

        core = botocore.session.get_session()
        if self.loader is not None:
            core.register_component("data_loader", self.loader)
        found = boto3.session.Session(botocore_session=core)
        self.loader = core.get_component("data_loader")
        # boto3 adds its own data folder to the loader for each session it wraps: once is enough.
        self.loader.search_paths[:] = list(dict.fromkeys(self.loader.search_paths))
        self.sessions[environment] = found
        if len(self.sessions) > self.MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return found

    def client(self, service: str, target: AwsTarget, config: dict[str, Any]):
        environment = _aws_environment()
        key = (service, target, environment, repr(sorted(config.items())))
        with self.lock:
            found = self.made.get(key)
            if found is not None:
                self.made.move_to_end(key)
                return found
            from botocore.config import Config

            cfg = Config(
                retries=dict(RETRIES),
                connect_timeout=config.pop("connect_timeout", CONNECT_TIMEOUT_S),
                read_timeout=config.pop("read_timeout", READ_TIMEOUT_S),
                max_pool_connections=config.pop("max_pool_connections", MAX_POOL_CONNECTIONS),
                **config,
            )
            keys = {}
            if target.credentials:
                keys = dict(zip(("aws_access_key_id", "aws_secret_access_key", "aws_session_token"),
                                target.credentials))
            found = self.session(environment).client(
                service, region_name=target.region, endpoint_url=target.endpoint_url, config=cfg, **keys)
            found.meta.events.register("after-call", _name_the_action)
            _origins[found] = (target, self.session(environment))
            self.made[key] = found
            if len(self.made) > self.MAX_CLIENTS:
                self.made.popitem(last=False)
            return found

    def default_session(self):
        with self.lock:
            return self.session(_aws_environment())


def _aws_environment() -> tuple:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


_clients = _Clients()


def _forget_in_child() -> None:
    # A forked child must not share its parent's pooled connections (nor a lock a parent's
    # thread held at the fork): it makes its own.
    global _clients
    _clients = _Clients()


os.register_at_fork(after_in_child=_forget_in_child)


def client(service: str, target: AwsTarget | None = None, **config: Any):
    """The process's client for `service` at `target` (made on first use, then the same one),
    with the project's retries, timeouts and pool size; `config` overrides botocore Config
    fields."""
    return _clients.client(service, target or AwsTarget.from_env(), config)


# Where and as whom each client the factory made talks: an object store for the same bucket
# (object_store below) is made from the same target and the same credential chain.
_origins: WeakKeyDictionary = WeakKeyDictionary()

# Credentials handed to obstore are re-read from botocore this often. botocore refreshes a role's
# temporary credentials 15 minutes before they expire and never hands out any with less than 10
# minutes left (botocore.credentials.RefreshableCredentials), so 5 minutes never outlives them;
# object_store retries a request with the credentials it was signed with, for at most its
# retry_timeout (3 minutes below): 5 + 3 stays inside the 10.
STORE_CREDENTIALS_TTL_S = 300


def object_store(s3, bucket: str):
    """obstore's S3Store for `bucket`, at the endpoint and as the identity of `s3` (a client this
    factory made), with retries and timeouts matching the clients': or None for a client made
    elsewhere. Credentials come from the same place as the client's: the target's keys, else
    boto3's chain (the instance role, the operator's profile), refreshed as botocore refreshes them."""
    origin = _origins.get(s3)
    if origin is None:
        return None
    from datetime import timedelta

    from obstore.store import S3Store

    target, boto_session = origin
    options: dict[str, Any] = {"connect_timeout": f"{CONNECT_TIMEOUT_S}s", "timeout": f"{store_timeout_s(s3)}s",
                               "pool_max_idle_per_host": str(MAX_POOL_CONNECTIONS)}
    endpoint = target.endpoint_url
    if endpoint and endpoint.startswith("http://"):
        options["allow_http"] = "true"
    # botocore's standard mode: 6 attempts with exponential backoff (RETRIES above).
    retry = {"max_retries": RETRIES["total_max_attempts"] - 1, "retry_timeout": timedelta(minutes=3),
             "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=20), "base": 2}}
    where: dict[str, Any] = {"region": target.region or s3.meta.region_name}
    if endpoint:
        where["endpoint"] = endpoint
    else:
        # On AWS, the bucket's own host name (as botocore addresses it): path-style requests are
        # the deprecated form, and the project's bucket names hold no dots.
        where["virtual_hosted_style_request"] = True
    # Always a provider: obstore also reads AWS_* variables, and keys named by the target must not
    # be mixed with a session token or profile of whoever the environment holds.
    if target.credentials:
        key, secret, token = target.credentials
        fixed = {"access_key_id": key, "secret_access_key": secret, "token": token, "expires_at": None}
        provider: Any = lambda: fixed  # noqa: E731
    else:
        from botocore.exceptions import NoCredentialsError
        from obstore.auth.boto3 import Boto3CredentialProvider

        if boto_session.get_credentials() is None:  # what botocore's first request would raise
            raise NoCredentialsError()
        provider = Boto3CredentialProvider(boto_session, ttl=timedelta(seconds=STORE_CREDENTIALS_TTL_S))
    return S3Store(bucket, client_options=options, retry_config=retry, credential_provider=provider, **where)


def store_timeout_s(s3) -> int:
    """obstore's timeout for one request of a store made from client `s3`: twice the client's read
    timeout, since obstore's (reqwest's) covers a whole request, its body included, where
    botocore's covers each read; so a client made with a short read timeout gets a store with one."""
    return round(2 * (s3.meta.config.read_timeout or READ_TIMEOUT_S))


def session():
    """The process's boto3 Session for its current AWS environment (region, profile, credentials)."""
    return _clients.default_session()


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
