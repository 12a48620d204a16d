"""Datasets on the dev machine: validate, upload (for `data upload` and for `launch` of a local
file or folder alike), check a bucket prefix before a launch, list.

An upload is content-addressed: `cached-datasets/YYYY/MM/<stem>-<hash>/`, where the hash covers
every file's path and bytes. So a dataset is never mixed with another one uploaded the same month
(instance/protocol/datasets.py says what a prefix holds), and uploading the same data again
sends nothing: the folder is listed once and files already there with their size are skipped.
Files go through the project's one transfer path (instance/protocol/transfer.py), in parallel;
any failure is reported with its key, never swallowed.

Column roles (the run config's `columns:`) are checked wherever the data is: a local dataset is
validated in full; of a bucket dataset, launch reads the parquet footers (two ranged GETs a file,
at most MAX_SCHEMA_FILES files spread over the dataset), and the agent checks every row after
the sync.
"""
from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from instance.protocol.aws import error_code
from instance.protocol.datasets import (
    DatasetError,
    LocalDataset,
    RemoteDataset,
    is_partition,
    list_dataset,
    local_dataset,
)
from instance.protocol.layout import DATASETS_PREFIX, LayoutError, dataset_prefix, s3_uri
from instance.protocol.timeutil import utcnow

from .context import Target, translate_aws_error
from .errors import BadInput, ChronosError

if TYPE_CHECKING:
    from instance.protocol.columns import ColumnRoles
    from instance.protocol.runconfig import RunConfig

HASH_CHUNK = 1024 * 1024
# A bucket dataset's footers read before launch: enough to catch a misnamed column in a dataset
# of a few files, and every file's schema sampled evenly in one of thousands, at a few seconds.
MAX_SCHEMA_FILES = 64


@dataclass(frozen=True)
class Uploaded:
    prefix: str
    files: int
    bytes: int
    skipped: int  # already in the bucket (same content address, same size)


def validate(path: Path, config: Path | None = None) -> dict:
    """`data validate`: every problem, the dataset's size and each column's role and type (with a
    run config, as its `columns:` names them, its series lengths judged as launch judges them)."""
    from instance.model.dataset import validate_dataset

    cfg = None
    if config is not None:  # pydantic only then: a plain `data validate` stays light
        from instance.protocol.runconfig import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
    dataset = _local(path)
    result = validate_dataset(dataset.files, **_judged_by(cfg))
    problems = [str(p) for p in result.problems]
    columns = [{"name": c.name, "role": c.role, "type": c.kind, "dtype": c.dtype}
               for c in (result.roles.columns if result.roles else ())]
    return {"ok": result.ok, "files": len(dataset.files), "problems": problems,
            "series": result.series if result.ok else None, "rows": result.rows if result.ok else None,
            "columns": columns}


def _judged_by(cfg: "RunConfig | None") -> dict:
    if cfg is None:
        return {}
    if cfg.kind == "forecast":  # no training windows to hold: the forecast checks its own lengths
        return dict(columns=cfg.columns.names())
    return dict(context_length=cfg.training.context_length, prediction_length=cfg.training.prediction_length,
                windows=cfg.evaluation.windows, columns=cfg.columns.names())


def check_local_dataset(path: Path, cfg: "RunConfig | None" = None) -> LocalDataset:
    """A local file or folder that is one valid dataset, or BadInput with one sentence."""
    return checked_local_dataset(path, cfg)[0]


def checked_local_dataset(path: Path, cfg: "RunConfig | None" = None) -> tuple[LocalDataset, "ColumnRoles | None"]:
    """check_local_dataset, and the roles of its columns as the validator found them."""
    from instance.model.dataset import validate_dataset

    dataset = _local(path)
    checked = validate_dataset(dataset.files, **_judged_by(cfg))
    problems = checked.problems
    if problems:
        config = " --config RUN.yaml" if cfg is not None and not cfg.columns.names().is_default else ""
        more = f" (and {len(problems) - 1} more problems; see `chronos-train data validate {path}{config}`)" \
            if len(problems) > 1 else ""
        raise BadInput(f"dataset is not valid: {problems[0]}{more}")
    return dataset, checked.roles


def check_remote_dataset(target: Target, prefix: str) -> RemoteDataset:
    """The dataset at a bucket prefix, or BadInput: missing, or ambiguous (datasets in folders
    below it and no file of its own)."""
    try:
        return list_dataset(target.s3, target.bucket, prefix)
    except DatasetError as exc:
        hint = "" if "dataset folder" in str(exc) else "; upload one with `chronos-train data upload PATH --month YYYY/MM`"
        raise BadInput(f"dataset {exc}{hint}") from None
    except Exception as exc:
        raise translate_aws_error(exc, target) from None


def check_remote_columns(target: Target, dataset: RemoteDataset, cfg: "RunConfig") -> "ColumnRoles | None":
    """The columns of (up to MAX_SCHEMA_FILES of) a bucket dataset's files against the config's
    roles, read from their parquet footers: a misnamed column costs no machine. Returns the
    roles those files give; BadInput names the first file and column that do not fit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from instance.model.covariates import check_schema, merge_files

    files = _spread(dataset.files, MAX_SCHEMA_FILES)
    names = cfg.columns.names()

    def schema_of(f):
        uri = f"s3://{target.bucket}/{f.key}"
        try:
            schema = pq.read_schema(_S3Range(target.s3, target.bucket, f.key, f.size))
        except (pa.ArrowException, OSError, ValueError) as exc:
            return uri, [], [f"{uri}: is not a readable parquet file ({str(exc).splitlines()[0]})"]
        columns, problems, _ = check_schema(schema, names)
        return uri, columns, [f"{uri} (column {column!r}): {message}" for column, message in problems]

    try:
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(schema_of, files))
    except Exception as exc:
        if error_code(exc):
            raise translate_aws_error(exc, target) from None
        raise
    roles, conflicts = merge_files([(uri, columns) for uri, columns, _ in found])
    problems = [p for _, _, file_problems in found for p in file_problems]
    problems += [f"{uri} (column {column!r}): {message}" for uri, column, message in conflicts]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadInput(f"dataset is not valid: {problems[0]}{more}")
    return roles


def check_local_future(path: Path, cfg: "RunConfig", roles: "ColumnRoles | None") -> LocalDataset:
    """A run config's `forecast.future` on this disk: parquet files whose columns are the id, the
    timestamp and the known covariates, nothing else (read from their footers); BadInput otherwise.
    The rows (every series, prediction_length each, continuing the data) are checked by the run,
    which forecasts nothing when they do not fit, and says why."""
    import pyarrow.parquet as pq

    try:
        future = local_dataset(path)
    except DatasetError as exc:
        raise BadInput(f"forecast.future: {exc}") from None
    names = cfg.columns.names()
    known = list(roles.known_covariates if roles is not None else names.known_covariates)
    if not known:
        raise BadInput(f"forecast.future names {path}, but the run has no known covariates (columns.known_covariates) "
                       "to take future values of; remove forecast.future")
    wanted = [names.id, names.timestamp, *known]
    for f in future.files:
        have = pq.read_schema(f).names
        missing = [c for c in wanted if c not in have]
        extra = [c for c in have if c not in wanted]
        if missing or extra:
            what = f"has no column {', '.join(map(repr, missing))}" if missing else \
                f"has column(s) {', '.join(map(repr, extra))} besides the id, the timestamp and the known covariates"
            raise BadInput(f"forecast.future {f} {what}; it must hold exactly {', '.join(wanted)}")
    return future


def _spread(items: list, n: int) -> list:
    """At most n of `items`, evenly spaced, the first and the last among them."""
    if len(items) <= n:
        return list(items)
    step = (len(items) - 1) / (n - 1)
    return [items[round(i * step)] for i in range(n)]


class _S3Range(io.RawIOBase):
    """A read-only file over one S3 object, each read a ranged GET: pyarrow reads a parquet
    footer with one or two of them (the last 64 KiB, then the rest of a larger footer)."""

    def __init__(self, s3, bucket: str, key: str, size: int):
        self.s3, self.bucket, self.key, self._size, self.pos = s3, bucket, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self._size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.pos + len(buffer), self._size)
        if end <= self.pos:
            return 0
        body = self.s3.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{end - 1}")["Body"].read()
        buffer[:len(body)] = body
        self.pos += len(body)
        return len(body)


def upload(target: Target, path: Path, month: str) -> Uploaded:
    """`data upload`: validate and upload as one dataset under the month, the validation running
    while the bytes move (see upload_dataset's `verdict`)."""
    try:
        dataset_prefix(month)
    except LayoutError as exc:
        raise BadInput(str(exc)) from None
    dataset = _local(path)
    with ThreadPoolExecutor(1) as pool:
        verdict = pool.submit(check_local_dataset, path)
        # The content hash names the folder, so it comes first; it reads at over 1 GB/s, mostly
        # outside the GIL, while the validator reads too.
        digest = content_hash(dataset)
        return upload_dataset(target, dataset, month, digest=digest, verdict=verdict)


def upload_dataset(target: Target, dataset: LocalDataset, month: str | None = None,
                   progress: Callable[[int, int], None] = lambda done, total: None,
                   digest: str | None = None, verdict: Future | None = None) -> Uploaded:
    """Upload a dataset to its content address (`digest`: its content_hash, if known); returns
    where it is.

    The dataset is validated already, or `verdict` is its validation still running (a future that
    raises BadInput for a bad dataset). Then the bytes move meanwhile, but nothing becomes visible
    before the verdict (transfer.upload_files' `visible_after`): the requests that make an object
    exist (PutObject; CompleteMultipartUpload for a large file) wait for it; a bad verdict fails
    them and stops the parts still to send, so the manager aborts the parts it sent
    (AbortMultipartUpload) and the bucket holds nothing of it."""
    from instance.protocol.transfer import TransferFailed, Upload, upload_files

    month = month or utcnow().strftime("%Y/%m")
    prefix = f"{dataset_prefix(month)}{_stem(dataset)}-{(digest or content_hash(dataset))[:8]}/"
    try:
        present = {o["Key"]: o["Size"] for page in target.s3.get_paginator("list_objects_v2").paginate(
            Bucket=target.bucket, Prefix=prefix) for o in page.get("Contents", [])}
    except Exception as exc:
        raise translate_aws_error(exc, target) from None
    todo = []
    for f in dataset.files:
        key = prefix + dataset.relative(f)
        if present.get(key) != f.stat().st_size:
            todo.append(Upload(f, key))
    done = 0

    def on_done(_: Upload) -> None:
        nonlocal done
        done += 1
        progress(done, len(todo))

    try:
        upload_files(target.s3, target.bucket, todo, on_done=on_done, visible_after=verdict)
    except TransferFailed as exc:
        if verdict is not None and verdict.exception() is not None:
            raise verdict.exception() from None
        translated = translate_aws_error(exc.cause, target) if error_code(exc.cause) else exc.cause
        if isinstance(translated, ChronosError):
            raise type(translated)(f"{exc}; {translated}") from None
        raise ChronosError(f"{exc}; {done} of {len(todo)} files were uploaded, run the same command again "
                           "to send the rest") from None
    if verdict is not None:
        verdict.result()  # nothing was left to send: the verdict still stands
    return Uploaded(prefix, len(dataset.files), dataset.total_bytes, len(dataset.files) - len(todo))


def content_hash(dataset: LocalDataset) -> str:
    """sha256 over every file's relative path, size and bytes, read in 1 MiB chunks (files hashed
    in parallel: hashlib lets go of the GIL on large buffers)."""
    def one(f: Path) -> str:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(one, dataset.files))
    total = hashlib.sha256()
    for f, digest in zip(dataset.files, digests):
        total.update(f"{dataset.relative(f)}\0{f.stat().st_size}\0{digest}\n".encode())
    return total.hexdigest()


def _stem(dataset: LocalDataset) -> str:
    return dataset.root.stem if dataset.root.is_file() else dataset.root.resolve().name


def _local(path: Path) -> LocalDataset:
    try:
        return local_dataset(path)
    except DatasetError as exc:
        raise BadInput(f"dataset {exc}") from None


def listing(target: Target) -> list[dict]:
    """`data ls`: one row per dataset (a folder's own files with its partitions)."""
    groups: dict[str, dict] = defaultdict(lambda: {"files": 0, "bytes": 0})
    pages = target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=DATASETS_PREFIX)
    for obj in (o for page in pages for o in page.get("Contents", [])):
        if not obj["Key"].endswith(".parquet"):
            continue
        folders = obj["Key"].split("/")[:-1]
        while folders and is_partition(folders[-1]):
            folders.pop()
        prefix = "/".join(folders) + "/"
        groups[prefix]["files"] += 1
        groups[prefix]["bytes"] += obj["Size"]
    return [{"prefix": p, "uri": s3_uri(target.bucket, p), **g} for p, g in sorted(groups.items())]
