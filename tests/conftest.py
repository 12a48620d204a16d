"""Shared fixtures: one moto server process per test session, reached over real HTTP, with IAM
enforced. The deployer (an administrator, as whoever runs `pulumi up`) only seeds, and only by
naming its credentials (the `aws` fixture's target); whatever the tests build without naming an
identity (a Target, an executor, an in-process CLI command) acts as the operator, the agent as
the instance role, as on AWS. Putting the deployer's keys in the environment, or in a
subprocess's, fails the test at that line (`_refuse_the_deployer_s_keys`)."""
from __future__ import annotations

import contextlib
import os
import sys

import pytest

from automation.sandbox import motoserver
from automation.sandbox.control import SandboxInfo, instance_credentials, seed
from automation.sandbox.strictmoto import DEPLOYER, OPERATORS
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import bucket_name

REGION = "us-east-1"
ENV = "dev"


def act_as_operator() -> None:
    """The process's own AWS environment: the operator of ENV, as the CLI's shell holds on AWS."""
    os.environ.update(OPERATORS[ENV].env())
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    os.environ["AWS_DEFAULT_REGION"] = REGION


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    act_as_operator()
    port = motoserver.free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = motoserver.start(port, log_path=log)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws(moto_endpoint) -> AwsTarget:
    """A fresh, empty moto for this test, and the deployer's target to seed it with (its
    credentials named here, never in the environment)."""
    motoserver.reset(moto_endpoint)
    act_as_operator()  # an in-process --local command of another env may have switched it
    return AwsTarget(region=REGION, endpoint_url=moto_endpoint, credentials=DEPLOYER.credentials)


class DeployerKeysInAnEnvironment(AssertionError):
    pass


_DEPLOYER_KEY = frozenset({DEPLOYER.access_key_id, DEPLOYER.access_key_id.encode()})
# Where a process's environment is set or handed on (os.environ, monkeypatch.setenv and
# subprocess all end in one of these), with the position of the environment in the event's args.
_ENVIRONMENT_EVENTS = {"os.putenv": 1, "subprocess.Popen": 3, "os.posix_spawn": 2, "os.exec": 2}
_administrator_shells: list[str] = []


def _refuse_the_deployer_s_keys(event: str, args: tuple) -> None:
    """The check, as an audit hook: the deployer's access key set in this process's environment
    (even for a moment, even by monkeypatch) or handed to a subprocess fails the test at that
    line. The deployer seeds through its named credentials only; the CLI, the agent and whatever
    a test reads with acts as the operator or the instance role."""
    at = _ENVIRONMENT_EVENTS.get(event)
    if at is None or _administrator_shells:
        return
    env = args[at]
    values = (env,) if event == "os.putenv" else () if env is None else env.values()
    if any(isinstance(v, (str, bytes)) and v in _DEPLOYER_KEY for v in values):
        where = "this process's environment" if event == "os.putenv" else "a subprocess's environment"
        raise DeployerKeysInAnEnvironment(
            f"the deployer's keys went into {where}: act as the operator (the environment's) or the instance role "
            "(instance_credentials); name the deployer's keys only to seed (AwsTarget(..., credentials=DEPLOYER.credentials))")


sys.addaudithook(_refuse_the_deployer_s_keys)


@contextlib.contextmanager
def administrator_shell(why: str):
    """The one named exception: a subprocess whose shell holds administrator keys (the deployer's)
    because the case is a person holding them, not the operator; `why` says which."""
    _administrator_shells.append(why)
    try:
        yield
    finally:
        _administrator_shells.pop()


def deploy(endpoint_url: str, env: str = ENV):
    """What `pulumi up` leaves for `env`, seeded by the deployer: the bucket and its infra.json,
    the VPC, the instance role holding the instance policy, the operator holding the operator
    policy. For tests whose operator or agent reads what a bare bucket would refuse them."""
    return seed(SandboxInfo(endpoint_url, REGION, motoserver.SANDBOX_ACCOUNT, None), env)


def as_the_machine(base, instance_id: str, env: str = ENV) -> AwsTarget:
    """Where `base` (a target or SandboxInfo) points, as the agent on `instance_id` acts: the
    instance role's session IMDS gives that machine."""
    creds = instance_credentials(base, env, instance_id)
    return AwsTarget(base.region, base.endpoint_url,
                     (creds["AWS_ACCESS_KEY_ID"], creds["AWS_SECRET_ACCESS_KEY"], creds["AWS_SESSION_TOKEN"]))


@pytest.fixture
def deployed(aws):
    return deploy(aws.endpoint_url)


@pytest.fixture
def s3(aws):
    return client("s3", aws)


@pytest.fixture
def bucket(s3) -> str:
    name = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
    s3.create_bucket(Bucket=name)
    return name
