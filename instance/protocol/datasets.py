"""What a dataset is, in the bucket and on a disk: one rule for the CLI and the agent.

A dataset named by a prefix (`cached-datasets/2026/11/sales-1a2b3c4d/`) or a local folder is:
- every `*.parquet` directly under it, and
- every `*.parquet` in hive-style partition folders below it (`key=value/`, at any depth), which
  belong to it.
Any other folder below it is another dataset (the month folder holds one folder per uploaded
dataset) and is never mixed in. A prefix with no parquet file of its own but such folders is
ambiguous: it is refused, naming the folders, so that `cached-datasets/2026/11/` can no longer
mean "every dataset uploaded that month, together". A key ending in `.parquet` names one file.
Other objects (`_SUCCESS`, `.crc`) are ignored.

The listing walks the prefix with a delimiter, level by level (partition folders listed in
parallel), so it never reads the keys of other datasets; it costs one request per 1,000 keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

_PARTITION_RE = re.compile(r"^[^=/]+=[^/]*$")
LIST_CONCURRENCY = 16


def is_partition(folder: str) -> bool:
    """`region=eu`: a hive-style partition folder, part of the dataset above it."""
    return bool(_PARTITION_RE.match(folder.rstrip("/")))


def is_dataset_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith((".", "_"))


class DatasetError(Exception):
    """A dataset prefix or folder that cannot be trained on as given."""


class DatasetNotFound(DatasetError):
    pass


class AmbiguousDataset(DatasetError):
    def __init__(self, where: str, folders: list[str]):
        self.folders = folders
        shown = ", ".join(folders[:5]) + (f" and {len(folders) - 5} more" if len(folders) > 5 else "")
        super().__init__(
            f"{where} holds no parquet file of its own but {len(folders)} dataset folder(s) below it "
            f"({shown}); name one of them as the dataset"
        )


@dataclass(frozen=True)
class RemoteFile:
    key: str
    etag: str
    size: int


@dataclass
class RemoteDataset:
    bucket: str
    prefix: str  # ends with "/", or is the key of one parquet file
    files: list[RemoteFile]  # sorted by key
    others: list[str] = field(default_factory=list)  # folders below it that are other datasets

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def base(self) -> str:
        """What a file's key is relative to (the folder of a one-file prefix)."""
        return self.prefix if self.prefix.endswith("/") else self.prefix.rsplit("/", 1)[0] + "/"

    def relative(self, f: RemoteFile) -> str:
        return f.key[len(self.base):]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def fingerprint(remote: Iterable[RemoteFile]) -> str:
    """Names the exact data a model saw: keys, ETags and sizes, order-independent."""
    rows = sorted((r.key, r.etag.strip('"'), r.size) for r in remote)
    return "sha256:" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def local_fingerprint(paths: Iterable[Path]) -> tuple[str, list[RemoteFile]]:
    """The same fingerprint for local files (a --local run of a local path), the MD5 standing in
    for the ETag; read in 1 MiB chunks."""
    rows = []
    for p in paths:
        digest = hashlib.md5(usedforsecurity=False)
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        rows.append(RemoteFile(key=Path(p).name, etag=digest.hexdigest(), size=Path(p).stat().st_size))
    return fingerprint(rows), rows


def list_dataset(s3, bucket: str, prefix: str) -> RemoteDataset:
    """The files of the dataset at `prefix` (see the module's rule); raises DatasetNotFound or
    AmbiguousDataset with one sentence."""
    uri = f"s3://{bucket}/{prefix}"
    if prefix.endswith(".parquet"):
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        files = [_remote(o) for o in page.get("Contents", []) if o["Key"] == prefix]
        if not files:
            raise DatasetNotFound(f"{uri} does not exist")
        return RemoteDataset(bucket, prefix, files)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
        uri += "/"
    files: list[RemoteFile] = []
    others: list[str] = []
    level = [prefix]
    with ThreadPoolExecutor(LIST_CONCURRENCY) as pool:
        while level:
            next_level = []
            for folder_files, folders in pool.map(lambda p: _list_level(s3, bucket, p), level):
                files += folder_files
                for folder in folders:
                    name = folder[:-1].rsplit("/", 1)[-1]
                    (next_level if is_partition(name) else others).append(folder)
            level = next_level
    files.sort(key=lambda f: f.key)
    others = sorted(f[len(prefix):] for f in others)
    if not files:
        if others:
            raise AmbiguousDataset(uri, others)
        raise DatasetNotFound(f"{uri} holds no .parquet file")
    return RemoteDataset(bucket, prefix, files, others)


def _list_level(s3, bucket: str, prefix: str) -> tuple[list[RemoteFile], list[str]]:
    files, folders = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        files += [_remote(o) for o in page.get("Contents", []) if is_dataset_file(o["Key"][len(prefix):])]
        folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    return files, folders


def _remote(obj: dict) -> RemoteFile:
    return RemoteFile(obj["Key"], obj["ETag"].strip('"'), int(obj["Size"]))


# -- on a disk -----------------------------------------------------------------------------------
@dataclass
class LocalDataset:
    root: Path  # the folder (or the one file) the user named
    files: list[Path]  # sorted by relative path
    others: list[str] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        return path.name if self.root.is_file() else path.relative_to(self.root).as_posix()

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def local_dataset(path: Path) -> LocalDataset:
    """The same rule on a disk: a parquet file, or a folder's own parquet files and partitions."""
    path = Path(path)
    if not path.exists():
        raise DatasetNotFound(f"{path}: no such file or folder")
    if path.is_file():
        return LocalDataset(path, [path])
    files: list[Path] = []
    others: list[str] = []
    for folder, dirs, names in os.walk(path):
        here = Path(folder)
        keep = []
        for d in sorted(dirs):
            if is_partition(d):
                keep.append(d)
            elif here == path and not d.startswith("."):
                others.append(d + "/")
        dirs[:] = keep
        files += [here / n for n in names if is_dataset_file(n)]
    files.sort(key=lambda p: p.relative_to(path).as_posix())
    if not files:
        if others:
            raise AmbiguousDataset(str(path), others)
        raise DatasetNotFound(f"{path} holds no .parquet file")
    return LocalDataset(path, files, others)
