"""Mirror one dataset from S3 onto the machine's disk, resumably, at a cost linear in its files.

- What is synced is the dataset at the prefix (protocol/datasets.py: its own parquet files and
  hive partitions, never other datasets' folders).
- `dest` belongs to the sync: anything in it that is not a file of the dataset (a file that left
  the prefix, a temporary file of a sync that was killed) is removed.
- A manifest in `dest` (`.sync-manifest.json`: key -> ETag, size, file) says which local files
  are complete copies of which objects. A file is skipped only when the manifest names the same
  ETag and size and the file on disk has that size; anything else is downloaded again. Downloads
  land under a temporary name and are renamed when whole (protocol/transfer.py), so a file cut
  short by a crash is never under its own name, and never in the manifest.
- The manifest is written once at the end, when the sync is interrupted (a stop request, an
  error), and at most every `MANIFEST_EVERY_S` seconds meanwhile (so a machine that dies loses
  at most that much of a long sync's record): never once per file, whose cost would grow with
  the square of the file count.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..protocol.artifacts import write_json_atomic
from ..protocol.datasets import RemoteDataset, RemoteFile, list_dataset

log = logging.getLogger(__name__)

MANIFEST_NAME = ".sync-manifest.json"
MANIFEST_EVERY_S = 5.0


@dataclass
class SyncReport:
    dataset: RemoteDataset
    files: list[Path]
    downloaded: int = 0
    skipped: int = 0
    bytes_downloaded: int = 0
    removed: list[str] = field(default_factory=list)  # local files removed (relative to dest)
    manifest_writes: int = 0

    @property
    def remote(self) -> list[RemoteFile]:
        return self.dataset.files

    @property
    def total_bytes(self) -> int:
        return self.dataset.total_bytes


class _Manifest:
    def __init__(self, path: Path, every_s: float):
        self.path = path
        self.every_s = every_s
        self.entries: dict[str, dict[str, Any]] = _read_manifest(path)
        self.writes = 0
        self._dirty = False
        self._last = time.monotonic()

    def record(self, obj: RemoteFile, file: str) -> None:
        self.entries[obj.key] = {"etag": obj.etag, "size": obj.size, "file": file}
        self._dirty = True
        if time.monotonic() - self._last >= self.every_s:
            self.write()

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._dirty = True

    def write(self) -> None:
        write_json_atomic(self.path, self.entries)
        self.writes += 1
        self._dirty = False
        self._last = time.monotonic()

    def write_if_changed(self) -> None:
        if self._dirty or not self.path.exists():
            self.write()


def sync_prefix(
    s3,
    bucket: str,
    prefix: str,
    dest: Path,
    *,
    concurrency: int | None = None,
    should_stop: Callable[[], None] | None = None,
    manifest_every_s: float = MANIFEST_EVERY_S,
) -> SyncReport:
    """Mirror the dataset at `prefix` into `dest`. `should_stop` is called as files complete and
    may raise to abandon the sync (the manifest then records what is complete)."""
    from ..protocol.transfer import CONCURRENCY, Download, download_files

    dataset = list_dataset(s3, bucket, prefix)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(dest / MANIFEST_NAME, manifest_every_s)
    report = SyncReport(dataset=dataset, files=[])

    todo: list[tuple[Download, RemoteFile, str]] = []
    wanted: set[str] = set()
    for obj in dataset.files:
        rel = dataset.relative(obj)
        local = dest / rel
        wanted.add(rel)
        report.files.append(local)
        seen = manifest.entries.get(obj.key)
        if seen and seen.get("etag") == obj.etag and seen.get("size") == obj.size and seen.get("file") == rel \
                and _size(local) == obj.size:
            report.skipped += 1
        else:
            manifest.forget(obj.key)
            todo.append((Download(obj.key, obj.size, obj.etag, local), obj, rel))
    keys = {obj.key for obj in dataset.files}
    for key in [k for k in manifest.entries if k not in keys]:
        manifest.forget(key)
    report.removed = _remove_strays(dest, wanted | {MANIFEST_NAME})

    by_key = {d.key: (obj, rel) for d, obj, rel in todo}

    def done(item: Download) -> None:
        obj, rel = by_key[item.key]
        manifest.record(obj, rel)
        report.downloaded += 1
        report.bytes_downloaded += obj.size
        if should_stop:
            should_stop()

    try:
        if todo:
            download_files(s3, bucket, [d for d, _, _ in todo], on_done=done,
                           concurrency=concurrency or CONCURRENCY)
    finally:
        manifest.write_if_changed()
        report.manifest_writes = manifest.writes
    return report


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _remove_strays(dest: Path, keep: set[str]) -> list[str]:
    """Delete whatever in `dest` is not a wanted file: files that left the dataset and the
    temporary files of a sync that was killed mid-download. Empty folders go too."""
    removed = []
    for folder, dirs, names in os.walk(dest, topdown=False):
        here = Path(folder)
        for name in names:
            rel = (here / name).relative_to(dest).as_posix()
            if rel not in keep:
                (here / name).unlink()
                removed.append(rel)
        if here != dest and not any(here.iterdir()):
            here.rmdir()
    return sorted(removed)


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
