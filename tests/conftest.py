"""Shared fixtures: one moto server process per test session, reached over real HTTP."""
from __future__ import annotations

import os

import pytest

from automation import motoserver
from instance.protocol.aws import AwsTarget, client
from instance.protocol.layout import bucket_name

REGION = "us-east-1"
ENV = "dev"


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    for name, value in motoserver.SANDBOX_CREDENTIALS.items():
        os.environ[name] = value
    os.environ["AWS_DEFAULT_REGION"] = REGION
    port = motoserver.free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = motoserver.start(port, log_path=log)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def aws(moto_endpoint) -> AwsTarget:
    """A fresh, empty moto for this test."""
    motoserver.reset(moto_endpoint)
    return AwsTarget(region=REGION, endpoint_url=moto_endpoint)


@pytest.fixture
def s3(aws):
    return client("s3", aws)


@pytest.fixture
def bucket(s3) -> str:
    name = bucket_name(ENV, motoserver.SANDBOX_ACCOUNT, REGION)
    s3.create_bucket(Bucket=name)
    return name
