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


def test_one_client_per_service_where_and_as_whom_made_once_and_reused():
    here = AwsTarget(region="us-east-1", endpoint_url="http://127.0.0.1:1")
    s3 = client("s3", here)
    assert client("s3", here) is s3, "the same client again, not a new one"
    assert client("ec2", here) is not s3
    assert client("s3", AwsTarget(region="us-east-1", endpoint_url="http://127.0.0.1:2")) is not s3
    assert client("s3", AwsTarget("us-east-1", "http://127.0.0.1:1", ("AKIA1", "secret", None))) is not s3
    slow = client("s3", here, read_timeout=300)
    assert slow is not s3 and slow.meta.config.read_timeout == 300 and s3.meta.config.read_timeout == READ_TIMEOUT_S


def test_clients_made_from_many_threads_at_once_are_one():
    import threading

    here = AwsTarget(region="us-east-1", endpoint_url="http://127.0.0.1:3")
    made, go = [], threading.Barrier(8)

    def make():
        go.wait()
        made.append(client("ec2", here))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and all(c is made[0] for c in made)


def test_a_forked_child_makes_its_own_client():
    """The parent's pooled connections are not the child's to use."""
    import os

    here = AwsTarget(region="us-east-1", endpoint_url="http://127.0.0.1:4")
    parent = client("s3", here)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"own" if client("s3", here) is not parent else b"shared")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"own"


def test_the_identity_follows_the_aws_environment(aws, monkeypatch):
    """A --local command switches its environment to the operator before acting: the clients it
    makes then act as the operator, not as whoever the first client was made for."""
    from automation.sandbox.strictmoto import OPERATORS

    ambient = AwsTarget(aws.region, aws.endpoint_url)  # no credentials named: the environment's

    def caller():
        return client("sts", ambient).get_caller_identity()["Arn"]

    for name, value in OPERATORS["stage"].env().items():  # a shell left as another env's operator
        monkeypatch.setenv(name, value)
    as_before = caller()
    for name, value in OPERATORS["dev"].env().items():
        monkeypatch.setenv(name, value)
    as_operator = caller()
    assert as_before.endswith(f"/{OPERATORS['stage'].user}") and as_operator.endswith(f"/{OPERATORS['dev'].user}")
