"""What a dataset prefix holds (its own files and hive partitions, never other datasets'), and the
sync of one to the machine's disk: skips unchanged files, resumes after an interruption without
taking a cut-short file for whole, and writes its manifest a bounded number of times, not once
per file."""
from __future__ import annotations

import json

import pytest

from instance.model.dataset import validate_parquet_paths
from instance.model.datasync import MANIFEST_NAME, sync_prefix
from instance.protocol.datasets import (
    AmbiguousDataset,
    DatasetNotFound,
    fingerprint,
    list_dataset,
    local_dataset,
)
from tests.agent_fixtures import parquet_bytes, synthetic_frame, write_parquet

H, C = 8, 64
MONTH = "cached-datasets/2026/10/"
PREFIX = MONTH + "sales-1a2b3c4d/"


def _put(s3, bucket, key, seed=0):
    frame = synthetic_frame(2, seed=seed).assign(item_id=lambda f: f.item_id + f"-{seed}")
    s3.put_object(Bucket=bucket, Key=key, Body=parquet_bytes(frame))


# -- the prefix rule ---------------------------------------------------------------------------
def test_a_prefix_holds_its_own_files_and_partitions_never_other_datasets(s3, bucket):
    _put(s3, bucket, PREFIX + "part-0.parquet")
    _put(s3, bucket, PREFIX + "region=eu/year=2026/part-1.parquet", seed=1)
    _put(s3, bucket, PREFIX + "region=us/part-2.parquet", seed=2)
    _put(s3, bucket, PREFIX + "older-copy/part-9.parquet", seed=9)  # a folder that is not a partition
    s3.put_object(Bucket=bucket, Key=PREFIX + "_SUCCESS", Body=b"")
    _put(s3, bucket, MONTH + "traffic-9f8e7d6c/part-0.parquet", seed=3)  # another dataset, same month

    found = list_dataset(s3, bucket, PREFIX)
    assert [found.relative(f) for f in found.files] == [
        "part-0.parquet", "region=eu/year=2026/part-1.parquet", "region=us/part-2.parquet"]
    assert found.others == ["older-copy/"]
    assert list_dataset(s3, bucket, PREFIX.rstrip("/")).files == found.files  # the slash is optional
    one = list_dataset(s3, bucket, PREFIX + "part-0.parquet")
    assert [one.relative(f) for f in one.files] == ["part-0.parquet"]

    with pytest.raises(AmbiguousDataset) as refused:  # the month: two datasets, none its own
        list_dataset(s3, bucket, MONTH)
    assert "2 dataset folder(s) below it (sales-1a2b3c4d/, traffic-9f8e7d6c/); name one of them" in str(refused.value)
    with pytest.raises(DatasetNotFound, match="holds no .parquet file"):
        list_dataset(s3, bucket, "cached-datasets/2099/01/")


def test_the_same_rule_on_a_disk(tmp_path):
    frame = synthetic_frame(2)
    write_parquet(tmp_path / "d" / "a.parquet", frame)
    write_parquet(tmp_path / "d" / "day=1" / "b.parquet", frame)
    write_parquet(tmp_path / "d" / "other" / "c.parquet", frame)
    found = local_dataset(tmp_path / "d")
    assert [found.relative(f) for f in found.files] == ["a.parquet", "day=1/b.parquet"] and found.others == ["other/"]
    with pytest.raises(AmbiguousDataset, match=r"1 dataset folder\(s\) below it \(d/\)"):
        local_dataset(tmp_path)


# -- the sync ----------------------------------------------------------------------------------
def test_sync_downloads_then_skips_unchanged_and_follows_changes(s3, bucket, tmp_path):
    for i in range(4):
        _put(s3, bucket, f"{PREFIX}part-{i}.parquet", seed=i)
    _put(s3, bucket, f"{PREFIX}region=eu/part-4.parquet", seed=4)
    _put(s3, bucket, f"{MONTH}traffic-9f8e7d6c/part-0.parquet", seed=5)  # never synced with it
    dest = tmp_path / "data"
    first = sync_prefix(s3, bucket, PREFIX, dest, concurrency=4)
    assert first.downloaded == 5 and first.skipped == 0
    assert [p.relative_to(dest).as_posix() for p in first.files] == [
        "part-0.parquet", "part-1.parquet", "part-2.parquet", "part-3.parquet", "region=eu/part-4.parquet"]
    assert validate_parquet_paths(first.files, C, H) == []

    again = sync_prefix(s3, bucket, PREFIX, dest)
    assert again.downloaded == 0 and again.skipped == 5
    assert fingerprint(again.remote) == fingerprint(first.remote)

    _put(s3, bucket, f"{PREFIX}part-1.parquet", seed=11)
    s3.delete_object(Bucket=bucket, Key=f"{PREFIX}part-3.parquet")
    changed = sync_prefix(s3, bucket, PREFIX, dest)
    assert changed.downloaded == 1 and changed.skipped == 3
    assert changed.removed == ["part-3.parquet"] and not (dest / "part-3.parquet").exists()
    assert fingerprint(changed.remote) != fingerprint(first.remote)


def test_an_interrupted_sync_resumes_and_never_takes_a_cut_short_file_for_whole(s3, bucket, tmp_path):
    bodies = {f"{PREFIX}part-{i:02d}.parquet": parquet_bytes(synthetic_frame(2, seed=i)) for i in range(12)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    dest = tmp_path / "data"
    seen = []

    def stop_after_five():
        seen.append(1)
        if len(seen) == 5:
            raise KeyboardInterrupt("stop requested")

    with pytest.raises(KeyboardInterrupt):
        sync_prefix(s3, bucket, PREFIX, dest, concurrency=2, should_stop=stop_after_five)
    manifest = json.loads((dest / MANIFEST_NAME).read_text())  # written on the way out
    assert len(manifest) >= 5
    for entry in manifest.values():
        assert (dest / entry["file"]).read_bytes() == bodies[PREFIX + entry["file"]]
    # What a machine killed mid-download leaves: a file cut short under its own name but in no
    # manifest, and a transfer's temporary file.
    missing = sorted(set(bodies) - {PREFIX + e["file"] for e in manifest.values()})
    cut = dest / missing[0][len(PREFIX):]
    cut.write_bytes(bodies[missing[0]][:100])
    (dest / "part-99.parquet.a1B2c3D4").write_bytes(b"partial")

    resumed = sync_prefix(s3, bucket, PREFIX, dest)
    assert resumed.skipped == len(manifest) and resumed.downloaded == 12 - len(manifest)
    assert resumed.removed == ["part-99.parquet.a1B2c3D4"]
    assert sorted(p.name for p in dest.iterdir()) == sorted([MANIFEST_NAME, *(k[len(PREFIX):] for k in bodies)])
    for key, body in bodies.items():
        assert (dest / key[len(PREFIX):]).read_bytes() == body


def test_the_manifest_is_written_once_per_sync_not_once_per_file(s3, bucket, tmp_path):
    body = parquet_bytes(synthetic_frame(1))
    for n, prefix in ((5, f"{MONTH}small/"), (60, f"{MONTH}large/")):
        for i in range(n):
            s3.put_object(Bucket=bucket, Key=f"{prefix}part-{i:03d}.parquet", Body=body)
        report = sync_prefix(s3, bucket, prefix, tmp_path / prefix)
        assert report.downloaded == n and report.manifest_writes == 1
    # The periodic write is bounded by time, not by files: with no interval, one per file.
    every_file = sync_prefix(s3, bucket, f"{MONTH}small/", tmp_path / "again", manifest_every_s=0)
    assert every_file.manifest_writes == 5


def test_sync_of_a_missing_prefix(s3, bucket, tmp_path):
    with pytest.raises(DatasetNotFound, match="holds no .parquet file"):
        sync_prefix(s3, bucket, "cached-datasets/2099/01/", tmp_path)
