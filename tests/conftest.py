"""Shared fixtures: one moto server process per test session, reached over real HTTP, with IAM
enforced. Test code itself acts as the sandbox's deployer (an administrator, as whoever runs
`pulumi up`); the CLI runs as the operator and the agent as the instance role, as on AWS."""
from __future__ import annotations

import os

import pytest

from automation.sandbox import motoserver
from automation.sandbox.strictmoto import DEPLOYER
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import bucket_name

REGION = "us-east-1"
ENV = "dev"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    os.environ.update(DEPLOYER.env())
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ["AWS_DEFAULT_REGION"] = REGION
    port = motoserver.free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = motoserver.start(port, log_path=log)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws(moto_endpoint) -> AwsTarget:
    """A fresh, empty moto for this test, with test code acting as the deployer again (an
    in-process CLI command switches this process to the operator, as it should)."""
    motoserver.reset(moto_endpoint)
    os.environ.update(DEPLOYER.env())
    os.environ.pop("AWS_SESSION_TOKEN", None)
    return AwsTarget(region=REGION, endpoint_url=moto_endpoint)


@pytest.fixture
def s3(aws):
    return client("s3", aws)


@pytest.fixture
def bucket(s3) -> str:
    name = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
    s3.create_bucket(Bucket=name)
    return name
