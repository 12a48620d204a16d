"""Every boto3 client comes from one factory: endpoint, region, timeouts and botocore's retries."""
from instance.protocol.aws import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, RETRIES, AwsTarget, client


def test_factory_sets_endpoint_region_timeouts_and_standard_retries():
    s3 = client("s3", AwsTarget(region="eu-west-1", endpoint_url="http://127.0.0.1:1"))
    cfg = s3.meta.config
    assert s3.meta.endpoint_url == "http://127.0.0.1:1" and s3.meta.region_name == "eu-west-1"
    assert cfg.retries["mode"] == "standard" and cfg.retries["total_max_attempts"] == RETRIES["total_max_attempts"]
    assert RETRIES["total_max_attempts"] >= 4  # at least 3 retries with backoff
    assert (cfg.connect_timeout, cfg.read_timeout) == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)


def test_target_from_env(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert AwsTarget.from_env() == AwsTarget("us-west-2", "http://127.0.0.1:9")
    assert AwsTarget.from_env(region="ap-south-1").region == "ap-south-1"
