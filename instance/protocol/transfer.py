"""The one way files move between a disk and S3, for many files at once: small downloads through
obstore (Rust's object_store), the rest through s3transfer's manager, tuned.

Every bulk transfer of the project goes through `download_files` or `upload_files`: the agent's
dataset sync, its results and checkpoints, and the CLI's `data upload` (with `launch` of a local
dataset). What is tuned, and why:
- small objects (up to one part, 8 MiB) download through obstore: one GET each, 64 in flight on
  one event loop, the request signed and parsed in Rust. botocore and s3transfer spend about
  3 ms of one core's CPU on each such file (request building, signing, parsing, event hooks, the
  manager's hand-offs), which bounds a sync of thousands of small files by the client's CPU;
  obstore spends about 1 ms (docs/benchmarks.md: 10,000 x 10 KB sync 2.4x to 2.8x faster than
  `aws s3 sync` against `rclone serve s3`, at par with s5cmd). Its S3Store comes from the client factory
  (aws.object_store): same endpoint, same identity and credential chain, same retry budget.
  The body's length is checked against the listing's size before the file is renamed into place.
- concurrency: 64 requests in flight. A small-file download is one request whose time is nearly
  all first-byte latency (tens of ms from EC2 to S3 in the same region), so a thousand files
  need many in flight to be bound by throughput rather than by round trips; `aws s3 sync` keeps
  10. The client's connection pool (aws.py) holds as many connections.
- no HeadObject per download: the listing already gave each object's size and ETag, handed to
  the manager (as the AWS CLI does), so a file costs one GET, not two requests.
- parts of 8 MiB from 8 MiB on (S3's own guidance and the AWS CLI's default): a 1 GB file moves
  as 120 parts, 64 at a time. s3transfer raises the part size by itself for a file that would
  need more than S3's 10,000 parts (above 80 GB). 16 MiB parts measured no faster.
- files land atomically: both write a download under a temporary name beside the file and
  rename it when complete, so a file under its own name is always whole.
Completion is handed back as it happens (`on_done`, on the caller's thread), so a caller can
record progress at whatever pace it likes and stop the transfer between two files. Errors are
never swallowed: the first failure stops the rest and is raised as TransferFailed, naming the
key and keeping botocore's error (obstore's are translated into one: classify it with
aws.error_code).

Import this module where a transfer happens, not at a command's start: it loads s3transfer.
"""
from __future__ import annotations

import asyncio
import os
import queue
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

CONCURRENCY = 64
PART_SIZE = 8 * 1024 * 1024
MULTIPART_THRESHOLD = PART_SIZE


@dataclass(frozen=True)
class Download:
    key: str
    size: int
    etag: str  # as the listing gave it; a part download names it (If-Match), so a changed object fails
    path: Path


@dataclass(frozen=True)
class Upload:
    path: Path
    key: str


class TransferFailed(Exception):
    """A transfer that did not complete; `cause` is botocore's (or the OS's) error."""

    def __init__(self, verb: str, bucket: str, key: str, cause: BaseException):
        self.key = key
        self.cause = cause
        reason = str(cause) or type(cause).__name__
        super().__init__(f"could not {verb} s3://{bucket}/{key}: {reason}")


def transfer_config(concurrency: int = CONCURRENCY) -> TransferConfig:
    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=PART_SIZE,
        max_request_concurrency=concurrency,
        # Submitting a transfer whose size is known is pure CPU: a few threads keep 64 requests fed.
        max_submission_concurrency=8,
        # Keep the queues bounded but deep enough that submission never waits on a slow GET.
        max_request_queue_size=4 * concurrency,
        max_submission_queue_size=4 * concurrency,
    )


def download_files(s3, bucket: str, items: Sequence[Download], *, on_done: Callable[[Download], None] = lambda d: None,
                   concurrency: int = CONCURRENCY) -> None:
    """Download every item to its path (parent folders made). `on_done(item)` runs on this
    thread once per completed file; an exception from it stops the transfer and is re-raised."""
    from .aws import object_store

    small = [item for item in items if item.size <= PART_SIZE]
    store = object_store(s3, bucket) if small else None
    if store is not None:
        # A private loop: asyncio.run would leave this thread with no current loop, and code that
        # runs after it in the same process (Pulumi's runtime, in the CLI and its tests) needs one.
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            runner.run(_fetch_all(store, bucket, small, on_done, concurrency))
        items = [item for item in items if item.size > PART_SIZE]
    if items:
        _download_parts(s3, bucket, items, on_done, concurrency)


def _download_parts(s3, bucket: str, items: Sequence[Download], on_done, concurrency: int) -> None:
    def submit(manager, item: Download, subscribers):
        item.path.parent.mkdir(parents=True, exist_ok=True)
        return manager.download(bucket, item.key, str(item.path), subscribers=[_KnownObject(item), *subscribers])

    _run(s3, bucket, "download", items, submit, on_done, concurrency)


async def _fetch_all(store, bucket: str, items: Sequence[Download], on_done, concurrency: int) -> None:
    """`concurrency` workers take the items in turn; each finished file is handed to on_done here,
    on the caller's thread (the loop runs on it). The first failure, or an exception from
    on_done, cancels the workers (a cancelled download leaves at most its temporary file)."""
    todo = iter(items)
    finished: asyncio.Queue = asyncio.Queue()

    async def worker() -> None:
        for item in todo:
            try:
                await _fetch(store, item)
            except Exception as exc:  # noqa: BLE001 - handed to the caller with its key
                await finished.put((item, exc))
                return
            await finished.put((item, None))

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(items)))]
    try:
        for _ in range(len(items)):
            item, exc = await finished.get()
            if exc is not None:
                raise TransferFailed("download", bucket, item.key, _as_client_error(exc)) from exc
            on_done(item)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _fetch(store, item: Download) -> None:
    import obstore

    body = await (await obstore.get_async(store, item.key)).bytes_async()
    if len(body) != item.size:  # the listing's size: a short body is never taken for the file
        raise IncompleteDownload(f"{len(body)} bytes received, {item.size} listed")
    item.path.parent.mkdir(parents=True, exist_ok=True)
    part = item.path.with_name(f"{item.path.name}.{secrets.token_hex(4)}")
    try:
        with open(part, "wb") as f:
            f.write(memoryview(body))
        os.replace(part, item.path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


class IncompleteDownload(Exception):
    pass


def _as_client_error(exc: BaseException) -> BaseException:
    """obstore's error kinds as the S3 error botocore would have raised for the same answer, so
    callers classify both paths' failures one way (aws.error_code, aws.refused_action)."""
    from botocore.exceptions import ClientError
    from obstore import exceptions as ob

    for kind, code, status in ((ob.PermissionDeniedError, "AccessDenied", 403),
                               (ob.UnauthenticatedError, "InvalidAccessKeyId", 403),
                               (ob.NotFoundError, "NoSuchKey", 404),
                               (ob.PreconditionError, "PreconditionFailed", 412)):
        if isinstance(exc, kind):
            error = {"Code": code, "Message": str(exc).split("\n", 1)[0], "Action": "s3:GetObject"}
            return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    return exc


def upload_files(s3, bucket: str, items: Sequence[Upload], *, on_done: Callable[[Upload], None] = lambda u: None,
                 concurrency: int = CONCURRENCY) -> None:
    """Upload every item; `on_done` as for download_files."""
    def submit(manager, item: Upload, subscribers):
        return manager.upload(str(item.path), bucket, item.key, subscribers=subscribers)

    _run(s3, bucket, "upload", items, submit, on_done, concurrency)


def _run(s3, bucket: str, verb: str, items: Iterable, submit, on_done, concurrency: int) -> None:
    done: queue.Queue = queue.Queue()

    def settle(block: bool) -> int:
        """Hand completed transfers to on_done; raise the first failure."""
        n = 0
        while True:
            try:
                item, future = done.get(block=block and n == 0)
            except queue.Empty:
                return n
            n += 1
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - every failure is reported, with its key
                raise TransferFailed(verb, bucket, item.key, exc) from exc
            on_done(item)

    # As a context manager, an exception cancels what is in flight and waits for it. (Not
    # `shutdown(cancel=True)`: s3transfer 0.19.3 passes its arguments to _shutdown in the wrong
    # order there, and the cancel itself fails with a TypeError.)
    submitted = settled = 0
    with TransferManager(s3, transfer_config(concurrency)) as manager:
        for item in items:
            submit(manager, item, [_Finished(item, done)])
            submitted += 1
            settled += settle(block=False)
        while settled < submitted:
            settled += settle(block=True)


class _KnownObject(BaseSubscriber):
    """Hands the object's size and ETag (from the listing) to the manager: it skips its HeadObject."""

    def __init__(self, item: Download):
        self.item = item

    def on_queued(self, future, **kwargs):
        future.meta.provide_transfer_size(self.item.size)
        etag = self.item.etag.strip('"')
        future.meta.provide_object_etag(f'"{etag}"')  # quoted, as S3 sends it


class _Finished(BaseSubscriber):
    """Puts (item, future) on the caller's queue when a transfer ends, well or not."""

    def __init__(self, item, done: queue.Queue):
        self.item = item
        self.done = done

    def on_done(self, future, **kwargs):
        self.done.put((self.item, future))
