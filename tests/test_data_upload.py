"""One dataset upload for `data upload` and `launch` of a local file or folder: a folder is one
dataset in its own content-addressed folder, uploading again sends nothing, and a failure is
reported with its key (never swallowed), by `data upload` and by `launch` alike."""
from __future__ import annotations

import time

import pytest
import yaml

from automation.context import Target
from automation.datasets import check_local_dataset, upload, upload_dataset
from automation.errors import BadInput, ChronosError
from automation.runs.launch import launch, plan
from automation.sandbox.control import SandboxInfo, seed
from instance.protocol.datasets import list_dataset
from instance.protocol.state import StateStore
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet
from tests.faultproxy import DENIED, FaultProxy
from tests.test_launch import RefusingExecutor


@pytest.fixture
def target(aws):
    info = SandboxInfo(aws.endpoint_url, aws.region, "123456789012", None)
    seed(info, "dev")
    return Target(env="dev", local=False, region=aws.region, bucket=info.bucket("dev"), endpoint_url=aws.endpoint_url)


def _folder(tmp_path, n=3):
    for i in range(n):
        frame = synthetic_frame(2, seed=i).assign(item_id=lambda f: f.item_id + f"-{i}")
        write_parquet(tmp_path / "sales" / f"region={i}" / "part.parquet" if i else tmp_path / "sales" / "a.parquet", frame)
    return tmp_path / "sales"


def test_a_folder_uploads_as_one_dataset_and_again_sends_nothing(target, tmp_path):
    dataset = check_local_dataset(_folder(tmp_path))
    first = upload_dataset(target, dataset, "2026/11")
    assert first.prefix.startswith("cached-datasets/2026/11/sales-") and first.files == 3 and first.skipped == 0
    remote = list_dataset(target.s3, target.bucket, first.prefix)
    assert [remote.relative(f) for f in remote.files] == ["a.parquet", "region=1/part.parquet", "region=2/part.parquet"]
    again = upload_dataset(target, dataset, "2026/11")
    assert again.prefix == first.prefix and again.skipped == 3


def _big(path, n_rows: int, duplicate_times: bool):
    """One series of n_rows hourly points (uncompressed: 16 bytes a row), or one whose timestamps
    are all the same (a dataset the validator refuses)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    hours = np.zeros(n_rows, "int64") if duplicate_times else np.arange(n_rows, dtype="int64")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"item_id": pa.array(["item-0"] * n_rows).dictionary_encode(),
                             "timestamp": pa.array(hours * 3_600_000_000, type=pa.timestamp("us")),
                             "target": np.random.default_rng(0).normal(size=n_rows)}), path, compression="none")
    return path


def test_a_large_file_moves_while_validated_and_a_bad_one_leaves_nothing(target, tmp_path, monkeypatch):
    """`data upload` sends a large file's parts while the validator reads it; the object exists only
    once the dataset passed. A bad one is refused with the validator's sentence, and neither an
    object nor an unfinished multipart upload is left (its parts are aborted). The validator is
    made to take a second, so that the bytes surely move before its verdict."""
    from automation import datasets
    from instance.protocol.transfer import PART_SIZE

    validate, parts_before_verdict = datasets.check_local_dataset, []

    def slow_validator(proxy):
        def check(path, cfg=None):
            time.sleep(1.0)
            parts_before_verdict.append(sum(n for (method, _), n in proxy.seen.items() if method == "PUT"))
            return validate(path, cfg)
        return check

    with FaultProxy(target.endpoint_url) as proxy:
        monkeypatch.setattr(datasets, "check_local_dataset", slow_validator(proxy))
        good = upload(_through(proxy, target), _big(tmp_path / "good" / "big.parquet", 1_200_000, duplicate_times=False),
                      "2026/11")
    assert good.files == 1 and good.bytes > 2 * PART_SIZE
    assert parts_before_verdict[0] >= 1  # parts went while the validator read
    head = target.s3.head_object(Bucket=target.bucket, Key=f"{good.prefix}big.parquet")
    assert head["ContentLength"] == good.bytes and "-" in head["ETag"]  # multipart: parts, then one commit

    before = {o["Key"] for o in target.s3.list_objects_v2(Bucket=target.bucket).get("Contents", [])}
    with FaultProxy(target.endpoint_url) as proxy:
        monkeypatch.setattr(datasets, "check_local_dataset", slow_validator(proxy))
        with pytest.raises(BadInput, match="dataset is not valid: .*duplicate"):
            upload(_through(proxy, target), _big(tmp_path / "bad" / "big.parquet", 1_200_000, duplicate_times=True),
                   "2026/11")
    started_and_aborted = {m for m, path in proxy.seen if path.endswith("/big.parquet")}
    assert {"POST", "PUT", "DELETE"} <= started_and_aborted  # created, parts sent, aborted
    after = {o["Key"] for o in target.s3.list_objects_v2(Bucket=target.bucket).get("Contents", [])}
    assert after == before
    assert target.s3.list_multipart_uploads(Bucket=target.bucket).get("Uploads", []) == []


def _through(proxy: FaultProxy, target: Target) -> Target:
    return Target(env="dev", local=False, region=target.region, bucket=target.bucket, endpoint_url=proxy.url)


def test_an_upload_failure_is_reported_with_its_key(target, tmp_path):
    dataset = check_local_dataset(_folder(tmp_path))
    with FaultProxy(target.endpoint_url, rate=1.0, faults=(DENIED,), paths=("2/part.parquet",), methods=("PUT",)) as proxy:
        with pytest.raises(BadInput) as refused:
            upload_dataset(_through(proxy, target), dataset, "2026/11")
    assert f"could not upload s3://{target.bucket}/cached-datasets/2026/11/sales-" in str(refused.value)
    assert "/region=2/part.parquet" in str(refused.value)
    assert "AWS refused s3:PutObject" in str(refused.value) and "operator policy" in str(refused.value)
    # Another bucket than the operator's own (a typo, another region's): its policy covers only
    # its bucket, so S3 refuses before it would say whether the bucket exists.
    missing_bucket = Target(env="dev", local=False, region=target.region, bucket="chronos-training-dev-0-nowhere",
                            endpoint_url=target.endpoint_url)
    with pytest.raises(BadInput) as other:
        upload_dataset(missing_bucket, check_local_dataset(tmp_path / "sales" / "a.parquet"), "2026/11")
    assert str(other.value).startswith("AWS refused s3:ListObjectsV2 on bucket chronos-training-dev-0-nowhere to "
                                       "these credentials (AccessDenied)") and "check the region" in str(other.value)


def test_launch_reports_a_failed_dataset_upload_and_releases_the_lock(target, tmp_path):
    data = write_parquet(tmp_path / "d" / "train.parquet", synthetic_frame(4, 96))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(run_config(dataset=str(data))))
    with FaultProxy(target.endpoint_url, rate=1.0, faults=(DENIED,), paths=("train.parquet",), methods=("PUT",)) as proxy:
        proxied = _through(proxy, target)
        with pytest.raises(ChronosError, match=r"could not upload s3://.*/train.parquet"):
            launch(proxied, plan(proxied, cfg), RefusingExecutor("other", "never reached"))
    assert StateStore(target.s3, target.bucket, "dev").read() is None


def test_many_small_downloads_hide_a_fixed_first_byte_latency(aws, target, tmp_path):
    """The fault proxy's S3-like latency: 40 files at 50 ms each would take 2 s one by one."""
    from instance.model.datasync import sync_prefix
    from instance.protocol.aws import AwsTarget, client

    prefix = upload_dataset(target, check_local_dataset(_many(tmp_path, 40)), "2026/11").prefix
    with FaultProxy(target.endpoint_url, first_byte_s=0.05) as proxy:
        # The agent's kind of read, timed: what is measured is the proxy, not anyone's rights.
        slow = client("s3", AwsTarget(target.region, proxy.url, aws.credentials))
        started = time.monotonic()
        slow.head_bucket(Bucket=target.bucket)
        assert time.monotonic() - started >= 0.05
        started = time.monotonic()
        report = sync_prefix(slow, target.bucket, prefix, tmp_path / "synced")
        took = time.monotonic() - started
    assert report.downloaded == 40 and took < 1.5, f"{took:.2f} s"


def test_the_proxy_adds_its_latency_and_nothing_more(aws, target, tmp_path):
    """A reply with a body on a kept-alive connection once waited for the client's delayed ACK
    (Nagle: ~40 ms a request), so the "30 ms" mode cost ~80 ms. 20 serial GETs through the proxy
    now cost about what they cost direct, plus the proxy's forwarding."""
    from instance.protocol.aws import AwsTarget, client

    target.s3.put_object(Bucket=target.bucket, Key="cached-datasets/2026/11/x/a.parquet", Body=b"x" * 1000)

    def twenty(s3) -> float:
        s3.get_object(Bucket=target.bucket, Key="cached-datasets/2026/11/x/a.parquet")["Body"].read()
        started = time.monotonic()
        for _ in range(20):
            s3.get_object(Bucket=target.bucket, Key="cached-datasets/2026/11/x/a.parquet")["Body"].read()
        return time.monotonic() - started

    direct = twenty(client("s3", aws))
    with FaultProxy(target.endpoint_url) as proxy:
        proxied = twenty(client("s3", AwsTarget(target.region, proxy.url, aws.credentials)))
    assert proxied < direct + 20 * 0.02, f"direct {direct:.3f} s, through the proxy {proxied:.3f} s"


def _many(tmp_path, n):
    body = synthetic_frame(1, 40)
    for i in range(n):
        write_parquet(tmp_path / "many" / f"part-{i:03d}.parquet", body.assign(item_id=f"item-{i}"))
    return tmp_path / "many"
