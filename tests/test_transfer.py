"""The one transfer path (instance/protocol/transfer.py) as the agent and the CLI meet it:
downloads through obstore (small objects whole, large ones as parallel ranged GETs), small
uploads through s3transfer and large ones through obstore's multipart upload, all as the
identity of the client they are given (its named keys or boto3's chain), all through injected
faults, never taking a body that is not the listed object for the file, never leaving a failed
upload's parts behind, and transfers to a slow server slowing down rather than failing."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from automation.sandbox.control import SandboxInfo, seed
from instance.model.datasync import sync_prefix
from instance.protocol.aws import AwsTarget, client, error_code, refused_action
from instance.protocol.datasets import list_dataset
from instance.protocol.transfer import (
    PART_SIZE,
    RANGE_SIZE,
    UPLOAD_PART_SIZE,
    Download,
    TransferFailed,
    Upload,
    download_files,
    byte_budget,
    in_flight,
    upload_files,
)
from tests.agent_fixtures import ROOT
from tests.faultproxy import FAILING_FAULTS, FaultProxy

PREFIX = "cached-datasets/2026/12/sales-0a1b2c3d/"


@pytest.fixture
def bucket(aws) -> str:
    """The seeded sandbox's bucket: the operator's policy applies (the deployer only plants)."""
    info = SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None)
    seed(info, "dev")
    return info.bucket("dev")


def _plant(aws, bucket: str, prefix: str, bodies: dict[str, bytes]) -> None:
    deployer = client("s3", aws)
    for name, body in bodies.items():
        deployer.put_object(Bucket=bucket, Key=prefix + name, Body=body)


def _nothing_in(folder) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def test_downloads_act_as_the_chain_identity_and_a_refusal_names_its_key_and_action(aws, bucket, tmp_path):
    bodies = {f"part-{i}.parquet": os.urandom(1000 + i) for i in range(5)}
    _plant(aws, bucket, PREFIX, bodies)
    _plant(aws, bucket, "prod/secret/", {"part-0.parquet": b"not the operator's to read",
                                         "big.parquet": os.urandom(PART_SIZE + 1)})
    operator = client("s3", AwsTarget(aws.region, aws.endpoint_url))  # no keys named: boto3's chain

    report = sync_prefix(operator, bucket, PREFIX, tmp_path / "data")
    assert report.downloaded == 5
    assert {p.name: p.read_bytes() for p in report.files} == bodies

    # The operator may list the whole bucket but read only its env and the datasets: IAM refuses.
    for outside in list_dataset(operator, bucket, "prod/secret/").files:  # one GET, and ranged GETs
        dest = tmp_path / "refused" / outside.key.rsplit("/", 1)[1]
        with pytest.raises(TransferFailed) as failed:
            download_files(operator, bucket, [Download(outside.key, outside.size, outside.etag, dest)])
        assert failed.value.key == outside.key
        assert error_code(failed.value.cause) == "AccessDenied" and refused_action(failed.value.cause) == "s3:GetObject"
        assert _nothing_in(dest.parent)


def test_a_sync_of_small_and_large_files_completes_through_20_percent_injected_faults(aws, bucket, tmp_path):
    bodies = {f"part-{i:02d}.parquet": os.urandom(2000 + i) for i in range(30)}
    bodies["big.parquet"] = os.urandom(RANGE_SIZE + 1024 * 1024)  # two ranged GETs
    _plant(aws, bucket, PREFIX, bodies)
    with FaultProxy(aws.endpoint_url, rate=0.2, faults=FAILING_FAULTS, seed=7) as proxy:
        operator = client("s3", AwsTarget(aws.region, proxy.url))
        report = sync_prefix(operator, bucket, PREFIX, tmp_path / "data")
    assert report.downloaded == 31
    assert {p.name: p.read_bytes() for p in report.files} == bodies
    assert sum(proxy.stats[f] for f in FAILING_FAULTS) >= 5  # faults were met, and retried through
    # The large file came as two ranged GETs, each answered once (faulted attempts are not replies).
    big = {(method, rng): n for (method, path, rng), n in proxy.replied.items() if path.endswith("/big.parquet")}
    assert big == {("GET", f"bytes=0-{RANGE_SIZE - 1}"): 1,
                   ("GET", f"bytes={RANGE_SIZE}-{RANGE_SIZE + 1024 * 1024 - 1}"): 1}


def test_a_body_that_is_not_the_listed_object_is_never_taken_for_the_file(aws, bucket, tmp_path):
    _plant(aws, bucket, PREFIX, {"part-0.parquet": b"x" * 5000})
    operator = client("s3", AwsTarget(aws.region, aws.endpoint_url))
    listed = list_dataset(operator, bucket, PREFIX).files[0]
    _plant(aws, bucket, PREFIX, {"part-0.parquet": b"y" * 4000})  # replaced (shorter) after the listing
    dest = tmp_path / "data" / "part-0.parquet"
    with pytest.raises(TransferFailed, match="4000 bytes received, 5000 listed"):
        download_files(operator, bucket, [Download(listed.key, listed.size, listed.etag, dest)])
    assert _nothing_in(dest.parent)  # neither the file nor a temporary one


def test_a_large_object_replaced_after_the_listing_is_never_taken_for_the_file(aws, bucket, tmp_path):
    """The same size, other bytes: only the ETag tells (each ranged GET sends If-Match), so a file
    is never stitched together from two versions of an object."""
    _plant(aws, bucket, PREFIX, {"big.parquet": os.urandom(RANGE_SIZE + 1)})
    operator = client("s3", AwsTarget(aws.region, aws.endpoint_url))
    listed = list_dataset(operator, bucket, PREFIX).files[0]
    _plant(aws, bucket, PREFIX, {"big.parquet": os.urandom(RANGE_SIZE + 1)})
    dest = tmp_path / "data" / "big.parquet"
    with pytest.raises(TransferFailed) as failed:
        download_files(operator, bucket, [Download(listed.key, listed.size, listed.etag, dest)])
    assert error_code(failed.value.cause) == "PreconditionFailed"
    assert _nothing_in(dest.parent)  # neither the file nor a temporary one


def _requests_to(proxy, method: str, key: str) -> int:
    return sum(n for (m, path), n in proxy.seen.items() if m == method and path.endswith("/" + key))


def test_a_large_upload_to_a_slow_server_slows_down_instead_of_failing(aws, bucket, tmp_path):
    """A server that takes 10 MiB/s in all (a busy disk behind it), and a client whose read
    timeout is 2 s (obstore's request timeout, body included, 4 s): eight 8 MiB parts all in
    flight would have the last one answered after 6.4 s, timing out and sent again (with more
    parts, again and again until the upload fails); parts go two at a time here, each pair
    answered in 1.6 s, and none is sent twice."""
    src = tmp_path / "checkpoint.bin"
    src.write_bytes(os.urandom(8 * UPLOAD_PART_SIZE))
    key = PREFIX + "checkpoint.bin"
    with FaultProxy(aws.endpoint_url, bytes_per_s=10 * 1024 * 1024) as proxy:
        operator = client("s3", AwsTarget(aws.region, proxy.url), read_timeout=2)
        assert in_flight(UPLOAD_PART_SIZE, byte_budget(4)) == 2
        upload_files(operator, bucket, [Upload(src, key)])
    assert _requests_to(proxy, "PUT", "checkpoint.bin") == 8  # one request a part: none timed out
    got = client("s3", AwsTarget(aws.region, aws.endpoint_url)).get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == src.read_bytes()


def test_a_large_download_from_a_slow_server_slows_down_instead_of_failing(aws, bucket, tmp_path):
    """A checkpoint of eight ranges from the same 10 MiB/s server, the client's read timeout 2 s
    (obstore's request timeout 4 s): eight 8 MiB ranges all in flight would have the last answered
    after 6.4 s, timed out and asked again; two at a time, each pair answers in 1.6 s, and every
    range is asked for once."""
    body = os.urandom(8 * RANGE_SIZE)
    _plant(aws, bucket, PREFIX, {"checkpoint.bin": body})
    key = PREFIX + "checkpoint.bin"
    etag = client("s3", AwsTarget(aws.region, aws.endpoint_url)).head_object(Bucket=bucket, Key=key)["ETag"]
    dest = tmp_path / "down" / "checkpoint.bin"
    with FaultProxy(aws.endpoint_url, bytes_per_s=10 * 1024 * 1024) as proxy:
        operator = client("s3", AwsTarget(aws.region, proxy.url), read_timeout=2)
        assert in_flight(RANGE_SIZE, byte_budget(4)) == 2
        download_files(operator, bucket, [Download(key, len(body), etag, dest)])
    assert dest.read_bytes() == body
    ranges = sorted(rng for (method, path, rng), n in proxy.replied.items()
                    if method == "GET" and path.endswith("/checkpoint.bin") for _ in range(n))
    assert ranges == sorted(f"bytes={i * RANGE_SIZE}-{(i + 1) * RANGE_SIZE - 1}" for i in range(8))
    assert _requests_to(proxy, "GET", "checkpoint.bin") == 8  # none timed out and was sent again


def test_many_small_files_to_and_from_a_slow_server_slow_down_instead_of_failing(aws, bucket, tmp_path):
    """Ten files of 5 MiB through the same 10 MiB/s server with a 2 s read timeout: all in flight
    at once (as 64 requests at a time would have them), the last would be answered after 5 s,
    past the client's timeout both ways (botocore's 2 s per read up, obstore's 4 s a request
    down). The bytes in flight stay within what that server answers in time (8 MiB up: one file
    at a time; 16 MiB down: three), and no request is sent twice."""
    folder = tmp_path / "up"
    folder.mkdir()
    bodies = {f"part-{i}.parquet": os.urandom(5 * 1024 * 1024) for i in range(10)}
    for name, body in bodies.items():
        (folder / name).write_bytes(body)
    with FaultProxy(aws.endpoint_url, bytes_per_s=10 * 1024 * 1024) as proxy:
        operator = client("s3", AwsTarget(aws.region, proxy.url), read_timeout=2)
        upload_files(operator, bucket, [Upload(folder / name, PREFIX + name) for name in bodies])
        assert proxy.stats["retries"] == 0 and proxy.stats["requests"] == 10  # no PUT timed out
        report = sync_prefix(operator, bucket, PREFIX, tmp_path / "down")
    assert {p.name: p.read_bytes() for p in report.files} == bodies
    assert all(_requests_to(proxy, "GET", name) == 1 for name in bodies)  # no GET timed out


def test_a_large_upload_lands_whole_through_faults_and_a_refused_one_names_its_action(aws, bucket, tmp_path):
    src = tmp_path / "checkpoint.bin"
    src.write_bytes(os.urandom(2 * UPLOAD_PART_SIZE + 1))
    with FaultProxy(aws.endpoint_url, rate=0.2, faults=FAILING_FAULTS, seed=5) as proxy:
        operator = client("s3", AwsTarget(aws.region, proxy.url))
        for attempt in range(4):  # a few uploads, so that faults meet every kind of request
            upload_files(operator, bucket, [Upload(src, f"{PREFIX}{attempt}/checkpoint.bin")])
    assert proxy.stats["unnumbered"] >= 2  # faults met obstore's requests, and were retried through
    direct = client("s3", AwsTarget(aws.region, aws.endpoint_url))
    for attempt in range(4):
        got = direct.get_object(Bucket=bucket, Key=f"{PREFIX}{attempt}/checkpoint.bin")["Body"].read()
        assert got == src.read_bytes()

    with pytest.raises(TransferFailed) as failed:  # the operator may not write under another env
        upload_files(direct, bucket, [Upload(src, "prod/secret/checkpoint.bin")])
    assert failed.value.key == "prod/secret/checkpoint.bin"
    assert error_code(failed.value.cause) == "AccessDenied"
    assert refused_action(failed.value.cause) == "s3:PutObject"
    assert "Contents" not in client("s3", aws).list_objects_v2(Bucket=bucket, Prefix="prod/secret/checkpoint")
    assert "Uploads" not in client("s3", aws).list_multipart_uploads(Bucket=bucket)


@pytest.mark.parametrize("refused", [1, 3])
def test_a_large_upload_whose_parts_fail_leaves_neither_object_nor_parts(aws, bucket, tmp_path, refused):
    """The upload started, then its first part (or all three) refused: the transfer fails naming
    the key, no object appears, and the multipart upload is aborted, its parts gone (what the
    bucket's AbortIncompleteMultipartUpload rule would otherwise bill for days)."""
    src = tmp_path / "checkpoint.bin"
    src.write_bytes(os.urandom(2 * UPLOAD_PART_SIZE + 1))
    key = PREFIX + "checkpoint.bin"
    with FaultProxy(aws.endpoint_url, rate=1.0, faults=("denied",), methods=("PUT",), max_faults=refused) as proxy:
        with pytest.raises(TransferFailed) as failed:
            upload_files(client("s3", AwsTarget(aws.region, proxy.url)), bucket, [Upload(src, key)])
    assert failed.value.key == key and error_code(failed.value.cause) == "AccessDenied"
    assert _requests_to(proxy, "DELETE", "checkpoint.bin") == 1  # AbortMultipartUpload
    deployer = client("s3", aws)
    assert "Contents" not in deployer.list_objects_v2(Bucket=bucket, Prefix=key)
    assert "Uploads" not in deployer.list_multipart_uploads(Bucket=bucket)


def test_a_download_leaves_the_callers_thread_able_to_run_asyncio_code_after_it(aws, bucket, tmp_path):
    """The CLI downloads and then runs Pulumi's runtime (which asks the thread for its event loop)
    in one process: the download's own loop must not take the thread's away."""
    import asyncio

    _plant(aws, bucket, PREFIX, {"part-0.parquet": b"x" * 100})
    operator = client("s3", AwsTarget(aws.region, aws.endpoint_url))
    mine = asyncio.new_event_loop()  # left as the thread's loop, as the tests after this one expect
    asyncio.set_event_loop(mine)
    assert sync_prefix(operator, bucket, PREFIX, tmp_path / "data").downloaded == 1
    assert asyncio.get_event_loop_policy().get_event_loop() is mine


def test_an_upload_of_a_file_that_is_gone_fails_naming_its_key(aws, bucket, tmp_path):
    """A file removed between its listing and its upload is a failed transfer naming the key (what
    data upload turns into one sentence), not an OS error out of the middle of the transfer."""
    present = tmp_path / "a.parquet"
    present.write_bytes(b"x" * 10)
    with pytest.raises(TransferFailed, match=r"s3://.*/b\.parquet") as raised:
        upload_files(client("s3", aws), bucket, [Upload(present, PREFIX + "a.parquet"),
                                                 Upload(tmp_path / "b.parquet", PREFIX + "b.parquet")])
    assert isinstance(raised.value.cause, FileNotFoundError)


def _threads_inside_the_loop() -> list[int]:
    """Other threads whose Python stack is inside asyncio's call_soon_threadsafe, where obstore's
    threads hand a result over and let go of the GIL (the self-pipe's send)."""
    me = threading.get_ident()
    return [tid for tid, frame in sys._current_frames().items()
            if tid != me and frame.f_code.co_name in ("_write_to_self", "call_soon_threadsafe")]


def test_a_transfer_returns_only_once_obstore_s_threads_have_left_python(aws, bucket, tmp_path):
    """obstore hands each result over from its own threads, which step into Python to do it. A
    process that exits while one is still in there is aborted (SIGABRT, exit 134, no message)
    after a transfer that succeeded: the environment's save on a GPU machine (instance.boot.upload)
    did so 4 times in 10, and the AWS CLI then sent the gigabytes again. So upload_files and
    download_files return only once none is left there (before: 5 uploads in 20 returned with one
    still inside; the downloads never did, their landing releases the GIL first, but take the
    same wait)."""
    src = tmp_path / "env.tar.zst"
    src.write_bytes(os.urandom(UPLOAD_PART_SIZE + 1024 * 1024))  # a multipart upload: obstore's path
    operator = client("s3", AwsTarget(aws.region, aws.endpoint_url))
    key = PREFIX + "env.tar.zst"
    for i in range(20):
        upload_files(operator, bucket, [Upload(src, key)])
        assert not _threads_inside_the_loop(), f"upload {i} returned with obstore's thread still in Python"
    head = operator.head_object(Bucket=bucket, Key=key)
    for i in range(10):
        download_files(operator, bucket, [Download(key, head["ContentLength"], head["ETag"], tmp_path / f"got-{i}")])
        assert not _threads_inside_the_loop(), f"download {i} returned with obstore's thread still in Python"
    assert (tmp_path / "got-9").read_bytes() == src.read_bytes()


def test_a_save_with_no_credentials_in_the_chain_fails_in_one_line(aws, bucket, tmp_path):
    """The environment's save (instance.boot.upload) on a machine whose chain finds no identity
    (IMDS unreachable): one line in the boot log naming the key and botocore's error, exit 1 (so
    environment.sh tries the AWS CLI), for a large file (obstore's path) as for a small one."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(ROOT), "AWS_ENDPOINT_URL": aws.endpoint_url,
           "AWS_DEFAULT_REGION": aws.region, "AWS_EC2_METADATA_DISABLED": "true"}
    for name, size in (("large", UPLOAD_PART_SIZE + 1), ("small", 100)):
        src = tmp_path / f"{name}.tar.zst"
        src.write_bytes(os.urandom(size))
        proc = subprocess.run([sys.executable, "-m", "instance.boot.upload", str(src), bucket, PREFIX + src.name],
                              env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
            f"bootstrap: could not upload s3://{bucket}/{PREFIX}{src.name}: Unable to locate credentials"], proc.stderr
