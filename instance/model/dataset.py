"""Training data: the long-format parquet validator, the S3 dataset sync and the loader.

Long format (DESIGN.md "Data format"): `item_id`, `timestamp` (datetime), `target` (numeric); every
other column is a numeric covariate. The validator is shared: the CLI calls it for `data validate`
and before launch (a bad dataset must cost nothing), the agent calls it after the sync.
pyarrow, pandas and boto3 are imported inside the functions that need them, so importing this
module stays cheap for the CLI.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..protocol.artifacts import write_json_atomic

log = logging.getLogger(__name__)

ID, TIME, TARGET = "item_id", "timestamp", "target"
REQUIRED_COLUMNS = (ID, TIME, TARGET)
# One Chronos-2 patch: the least context worth training or forecasting from.
MIN_CONTEXT = 16
# Beyond this many items with the same problem in one file, one summary line says how many more.
MAX_ITEMS_PER_PROBLEM = 10
MANIFEST_NAME = ".sync-manifest.json"


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with the data, located as precisely as the data allows."""

    file: str
    column: str | None
    item: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.column:
            where.append(f"column {self.column!r}")
        if self.item is not None:
            where.append(f"item {self.item!r}")
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.file}{place}: {self.message}"


class DataError(Exception):
    """The dataset cannot be trained on; `problems` says why, one line each."""

    def __init__(self, message: str, problems: Sequence[DataProblem] = ()):
        self.problems = list(problems)
        if self.problems:
            shown = "; ".join(str(p) for p in self.problems[:5])
            more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            message = f"{message}: {shown}{more}"
        super().__init__(message)


class DatasetNotFound(DataError):
    pass


class DataValidationError(DataError):
    pass


def min_series_length(prediction_length: int, context_length: int | None = None, windows: int = 1) -> int:
    """The last `windows` x `prediction_length` points are held out for evaluation (the backtest
    windows); what is left must hold one training window of `prediction_length` points after at
    least MIN_CONTEXT points of context."""
    context = min(MIN_CONTEXT, context_length) if context_length else MIN_CONTEXT
    return (windows + 1) * prediction_length + context


def expand_dataset_path(path: str | os.PathLike) -> list[Path]:
    """A parquet file, or every *.parquet directly inside a folder (sorted).

    A missing path comes back as itself so that the validator names it; a folder without parquet
    files comes back empty.
    """
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.glob("*.parquet") if p.is_file())
    return [path]


# -- validation ----------------------------------------------------------------------------------
def validate_parquet_paths(
    paths: list[Path],
    context_length: int | None = None,
    prediction_length: int | None = None,
    windows: int = 1,
) -> list[DataProblem]:
    """Every problem that would stop training, naming file, column and item. Empty = valid.

    Schema problems are per file. Per-series problems are checked on all files together (a
    month's folder may split one series over several files), except the order of timestamps,
    which is checked within each file.
    """
    if not paths:
        return [DataProblem("dataset", None, None, "contains no parquet files")]
    problems: list[DataProblem] = []
    frames = []
    for path in paths:
        frame, file_problems = _read_and_check_schema(Path(path))
        problems += file_problems
        if frame is not None:
            frames.append((str(path), frame))
    if frames:
        problems += _check_series(frames, context_length, prediction_length, windows)
    return problems


def _read_and_check_schema(path: Path):
    import pandas.api.types as ptypes
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    if not path.exists():
        return None, [DataProblem(name, None, None, "no such file or folder")]
    if path.is_dir():
        return None, [DataProblem(name, None, None, "is a folder without parquet files")]
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [DataProblem(name, None, None, f"is not a readable parquet file ({reason})")]

    problems: list[DataProblem] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    for column in missing:
        problems.append(DataProblem(name, column, None, "required column is missing (long format needs item_id, timestamp, target)"))
    if table.num_rows == 0:
        problems.append(DataProblem(name, None, None, "has no rows"))
    schema = table.schema
    if TIME in table.column_names:
        kind = schema.field(TIME).type
        if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            problems.append(DataProblem(name, TIME, None, f"must be a datetime column, found {kind}; store timestamps as a parquet timestamp type"))
    numeric_problem = False
    for column in table.column_names:
        if column in (ID, TIME):
            continue
        kind = schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
            role = "the target" if column == TARGET else "a covariate (every extra column is one)"
            problems.append(DataProblem(name, column, None, f"is {role} and must be numeric, found {kind}"))
            numeric_problem = numeric_problem or column == TARGET
    if missing or table.num_rows == 0 or any(p.column == TIME for p in problems) or numeric_problem:
        return None, problems
    frame = table.select([ID, TIME, TARGET]).to_pandas()
    if not ptypes.is_datetime64_any_dtype(frame[TIME]):
        import pandas as pd

        frame[TIME] = pd.to_datetime(frame[TIME])
    return frame, problems


class _Collector:
    """Per (file, message kind), the first items in full and then one summary line."""

    def __init__(self):
        self.problems: list[DataProblem] = []
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, file: str, column: str | None, item: Any, kind: str, message: str) -> None:
        n = self._counts.get((file, kind), 0) + 1
        self._counts[(file, kind)] = n
        if n <= MAX_ITEMS_PER_PROBLEM:
            self.problems.append(DataProblem(file, column, None if item is None else str(item), message))

    def finish(self) -> list[DataProblem]:
        for (file, kind), n in self._counts.items():
            if n > MAX_ITEMS_PER_PROBLEM:
                self.problems.append(DataProblem(file, None, None, f"{n - MAX_ITEMS_PER_PROBLEM} more items {kind}"))
        return self.problems


def _check_series(frames, context_length, prediction_length, windows: int = 1) -> list[DataProblem]:
    import pandas as pd

    out = _Collector()
    for file, frame in frames:
        ids = frame[ID]
        if ids.isna().any():
            out.add(file, ID, None, "null ids", f"{int(ids.isna().sum())} rows have no item_id")
        if frame[TIME].isna().any():
            for item in pd.unique(ids[frame[TIME].isna()].dropna()):
                out.add(file, TIME, item, "with missing timestamps", "has rows without a timestamp")
        # Order within one file: a later row of an item must not be earlier in time.
        backwards = frame[TIME].groupby(ids, sort=False).diff() < pd.Timedelta(0)
        for item in pd.unique(ids[backwards]):
            out.add(file, TIME, item, "with unsorted timestamps", "timestamps are not in increasing order within the series")

    combined = pd.concat([f.assign(_file=file) for file, f in frames], ignore_index=True)
    combined = combined[combined[ID].notna() & combined[TIME].notna()]
    files_of = combined.groupby(ID, sort=True)["_file"].agg(lambda s: ", ".join(pd.unique(s)))

    dup = combined.duplicated([ID, TIME], keep=False)
    if dup.any():
        for item, rows in combined[dup].groupby(ID, sort=True):
            first = rows[TIME].min()
            count = int(rows.duplicated([ID, TIME]).sum())
            out.add(files_of[item], TIME, item, "with duplicate timestamps", f"{count} duplicate timestamp(s), first at {first}")

    all_nan = combined[TARGET].isna().groupby(combined[ID], sort=True).all()
    for item in all_nan.index[all_nan.to_numpy()]:
        out.add(files_of[item], TARGET, item, "whose target is all NaN", "the target is NaN everywhere in this series")

    if prediction_length:
        need = min_series_length(prediction_length, context_length, windows)
        held = windows * prediction_length
        lengths = combined.groupby(ID, sort=True).size()
        for item, n in lengths[lengths.to_numpy() < need].items():
            out.add(
                files_of[item], TARGET, item, "too short",
                f"the series has {int(n)} points but needs at least {need}: the last {held} "
                f"are held out for evaluation ({windows} window{'s' if windows > 1 else ''} of {prediction_length}), "
                f"and training needs a {prediction_length}-step window after {need - held - prediction_length} "
                "points of context",
            )
    return out.finish()


# -- loading ------------------------------------------------------------------------------------
def load_long_frame(paths: Sequence[Path]):
    """All files as one frame sorted by (item_id, timestamp); item ids as strings."""
    import pandas as pd

    frames = [pd.read_parquet(p) for p in paths]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    df[ID] = df[ID].astype(str)
    df[TIME] = pd.to_datetime(df[TIME])
    return df.sort_values([ID, TIME], kind="stable").reset_index(drop=True)


# -- sync from S3 -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteFile:
    key: str
    etag: str
    size: int


@dataclass
class SyncReport:
    files: list[Path]
    remote: list[RemoteFile]
    downloaded: int = 0
    skipped: int = 0
    bytes_downloaded: int = 0
    removed: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(r.size for r in self.remote)


def fingerprint(remote: Iterable[RemoteFile]) -> str:
    """Names the exact data a model saw: keys, ETags and sizes, order-independent."""
    rows = sorted((r.key, r.etag.strip('"'), r.size) for r in remote)
    return "sha256:" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def local_fingerprint(paths: Sequence[Path]) -> tuple[str, list[RemoteFile]]:
    """The same fingerprint for local files, with the MD5 standing in for the ETag."""
    rows = []
    for p in paths:
        digest = hashlib.md5(Path(p).read_bytes(), usedforsecurity=False).hexdigest()
        rows.append(RemoteFile(key=Path(p).name, etag=digest, size=Path(p).stat().st_size))
    return fingerprint(rows), rows


def list_parquet(s3, bucket: str, prefix: str) -> list[RemoteFile]:
    """Parquet objects under `prefix` (a folder prefix, or the key of one parquet file)."""
    if not prefix.endswith(".parquet") and not prefix.endswith("/"):
        prefix += "/"
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(".parquet"):
                out.append(RemoteFile(obj["Key"], obj["ETag"].strip('"'), int(obj["Size"])))
    return sorted(out, key=lambda r: r.key)


def sync_prefix(
    s3,
    bucket: str,
    prefix: str,
    dest: Path,
    *,
    max_concurrency: int = 16,
    should_stop: Callable[[], None] | None = None,
) -> SyncReport:
    """Mirror the parquet files under `prefix` into `dest`, downloading in parallel.

    A file already present with the same size and ETag (per the manifest kept in `dest`) is not
    downloaded again; files that left the prefix are removed. Each download lands under a temp
    name and is renamed, so an interrupted sync never leaves a truncated file that looks complete.
    `should_stop` is called as downloads complete and may raise to abandon the sync.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    remote = list_parquet(s3, bucket, prefix)
    if not remote:
        raise DatasetNotFound(f"no parquet files under s3://{bucket}/{prefix}")
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / MANIFEST_NAME
    manifest = _read_manifest(manifest_path)
    base = prefix if prefix.endswith("/") else prefix.rsplit("/", 1)[0] + "/"

    report = SyncReport(files=[], remote=remote)
    wanted: dict[str, Path] = {}
    todo: list[tuple[RemoteFile, Path]] = []
    for obj in remote:
        local = dest / obj.key[len(base):]
        wanted[obj.key] = local
        report.files.append(local)
        seen = manifest.get(obj.key)
        if seen and seen["etag"] == obj.etag and seen["size"] == obj.size and local.is_file() and local.stat().st_size == obj.size:
            report.skipped += 1
        else:
            todo.append((obj, local))

    for key in sorted(set(manifest) - set(wanted)):
        stale = dest / manifest[key]["file"]
        if stale.is_file():
            stale.unlink()
        report.removed.append(key)
        manifest.pop(key)

    if todo:
        config = TransferConfig(max_concurrency=max_concurrency)
        manager = create_transfer_manager(s3, config)
        try:
            futures = []
            for obj, local in todo:
                local.parent.mkdir(parents=True, exist_ok=True)
                tmp = local.with_name(f".{local.name}.part")
                futures.append((obj, local, tmp, manager.download(bucket, obj.key, str(tmp))))
            for obj, local, tmp, future in futures:
                future.result()
                os.replace(tmp, local)
                manifest[obj.key] = {"etag": obj.etag, "size": obj.size, "file": str(local.relative_to(dest))}
                write_json_atomic(manifest_path, manifest)
                report.downloaded += 1
                report.bytes_downloaded += obj.size
                if should_stop:
                    should_stop()
        except BaseException:
            manager.shutdown(cancel=True)
            for _, _, tmp, _ in futures:
                tmp.unlink(missing_ok=True)
            raise
        manager.shutdown()
    write_json_atomic(manifest_path, manifest)
    return report


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}
