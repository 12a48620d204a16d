"""The one way files move between a disk and S3, for many files at once: downloads through obstore
(Rust's object_store), uploads through s3transfer's manager, tuned.

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
- large objects (a checkpoint's weights and optimizer state) download through obstore too, as
  ranged GETs of 16 MiB, up to 15 in flight, each body received in Rust and written at its
  offset with os.pwrite (GIL released) into a file allocated whole: botocore reads a body 256 KB
  at a time under the GIL, which kept s3transfer at a third of s5cmd's speed on one big file.
  Each range names the listing's ETag (If-Match), so a file is never stitched from two versions.
- concurrency: 64 requests in flight for small files. A small-file download is one request whose
  time is nearly all first-byte latency (tens of ms from EC2 to S3 in the same region), so a
  thousand files need many in flight to be bound by throughput rather than by round trips;
  `aws s3 sync` keeps 10. The client's connection pool (aws.py) holds as many connections.
  Parts of one large file: no more in flight than a slow server (4 MiB/s) answers inside a
  request's timeout (`in_flight`): with 64 parts of 8 MiB a server under 17 MB/s (a busy disk)
  made an upload fail, every part timing out, instead of slowing down.
- no HeadObject per download: the listing already gave each object's size and ETag, handed to
  the manager (as the AWS CLI does), so a file costs one GET, not two requests.
- uploads: parts of 8 MiB from 8 MiB on (S3's own guidance and the AWS CLI's default).
  s3transfer raises the part size by itself for a file that would need more than S3's 10,000
  parts (above 80 GB).
- files land atomically: a download is written under a temporary name beside the file and
  renamed when complete, so a file under its own name is always whole.
Completion is handed back as it happens (`on_done`, on the caller's thread), so a caller can
record progress at whatever pace it likes and stop the transfer between two files. Errors are
never swallowed: the first failure stops the rest and is raised as TransferFailed, naming the
key and keeping botocore's error (obstore's are translated into one: classify it with
aws.error_code).

Import this module where a transfer happens, not at a command's start: it loads s3transfer.
"""
from __future__ import annotations

import asyncio
import errno
import os
import queue
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

CONCURRENCY = 64
PART_SIZE = 8 * 1024 * 1024
MULTIPART_THRESHOLD = PART_SIZE
# A large download's ranges: measured in bench/bench_clients.py (docs/benchmarks.md, issue 28).
RANGE_SIZE = 16 * 1024 * 1024
# The slowest server a large transfer still finishes against (in_flight below); 4 MiB/s is a
# 32 Mbit/s link, or a disk that busy. Never more than 16 parts in flight for one transfer.
SLOWEST_BYTES_PER_S = 4 * 1024 * 1024
MAX_PARTS_IN_FLIGHT = 16
WRITE_THREADS = 4  # pwrite of 16 MiB into the page cache: a few ms each, GIL released
READ_TIMEOUT_FALLBACK_S = 60  # botocore's default, for a client that names none


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
    from .aws import STORE_REQUEST_TIMEOUT_S, object_store

    if not items:
        return
    store = object_store(s3, bucket)
    if store is None:  # a client made elsewhere: s3transfer, as the client itself is configured
        _download_parts(s3, bucket, items, on_done, concurrency)
        return
    small = [item for item in items if item.size <= PART_SIZE]
    large = [item for item in items if item.size > PART_SIZE]
    # A private loop: asyncio.run would leave this thread with no current loop, and code that
    # runs after it in the same process (Pulumi's runtime, in the CLI and its tests) needs one.
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        if small:
            runner.run(_fetch_all(store, bucket, small, on_done, concurrency))
        if large:
            parallel = min(concurrency, in_flight(RANGE_SIZE, STORE_REQUEST_TIMEOUT_S))
            runner.run(_fetch_ranges(store, bucket, large, on_done, parallel))


def in_flight(part_size: int, timeout_s: float) -> int:
    """How many parts of one large transfer to keep in flight: as many as a server moving only
    SLOWEST_BYTES_PER_S in all still answers inside a request's timeout (the last part in flight
    waits for all those ahead of it), at most MAX_PARTS_IN_FLIGHT. More in flight than that and
    a slow server (a disk under load, a congested link) makes a transfer fail, part after part
    timing out, instead of slowing down: seen with 64 parts of 8 MiB, which need 17 MB/s."""
    return max(1, min(MAX_PARTS_IN_FLIGHT, int(timeout_s * SLOWEST_BYTES_PER_S) // part_size))


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


class _Landing:
    """A large file being assembled: its temporary file, allocated whole at once (a full disk
    fails before the first byte moves), and the bytes still to come."""

    def __init__(self, item: Download):
        self.item = item
        item.path.parent.mkdir(parents=True, exist_ok=True)
        self.temp = item.path.with_name(f"{item.path.name}.{secrets.token_hex(4)}")
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.missing = item.size
        try:
            try:
                os.posix_fallocate(self.fd, 0, item.size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without it: sparse
                    raise
                os.ftruncate(self.fd, item.size)
        except BaseException:
            self.discard()  # never a descriptor or a temporary file left behind
            raise

    def land(self) -> None:
        os.close(self.fd)
        self.fd = -1
        os.replace(self.temp, self.item.path)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.temp.unlink(missing_ok=True)


async def _fetch_ranges(store, bucket: str, items: Sequence[Download], on_done, parallel: int) -> None:
    """Each large object as ranged GETs of RANGE_SIZE, `parallel` in flight over all of them, each
    written at its offset (os.pwrite on a worker thread: the GIL is released while the kernel
    copies) into the object's temporary file, renamed into place when its last range lands.
    The body is received in Rust, never read through Python in small pieces: what made
    s3transfer (botocore reads 256 KB at a time under the GIL) 3x slower than s5cmd."""
    import obstore

    items = list(dict.fromkeys(items))  # one object named twice must not count its ranges twice
    landings: dict[Download, _Landing] = {}
    jobs = ((item, start) for item in items for start in range(0, item.size, RANGE_SIZE))
    finished: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()
    # Its own threads, so that a file is closed only once no write into it can still be running
    # (a cancelled await does not stop a thread; a closed descriptor's number is soon reused).
    writer = ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="transfer-write")

    async def get(item: Download, start: int) -> None:
        end = min(start + RANGE_SIZE, item.size)
        # If-Match: the listing's object or a 412, never a range of an object replaced meanwhile.
        result = await obstore.get_async(store, item.key,
                                         options={"range": (start, end), "if_match": _quoted(item.etag)})
        if result.meta["size"] != item.size:
            raise IncompleteDownload(f"the object has {result.meta['size']} bytes, {item.size} listed")
        body = await result.bytes_async()
        if len(body) != end - start:  # a short body is never taken for its range
            raise IncompleteDownload(f"{len(body)} bytes received for bytes {start}-{end - 1}, {end - start} asked")
        landing = landings[item]
        await loop.run_in_executor(writer, _pwrite_all, landing.fd, body, start)
        landing.missing -= len(body)

    async def worker() -> None:
        for item, start in jobs:
            try:
                if item not in landings:
                    landings[item] = _Landing(item)
                await get(item, start)
            except Exception as exc:  # noqa: BLE001 - handed to the caller with its key
                await finished.put((item, exc))
                return
            await finished.put((item, None))

    workers = [asyncio.create_task(worker()) for _ in range(parallel)]
    try:
        remaining = {item: -(-item.size // RANGE_SIZE) for item in items}
        while remaining:
            item, exc = await finished.get()
            if exc is not None:
                raise TransferFailed("download", bucket, item.key, _as_client_error(exc)) from exc
            remaining[item] -= 1
            if remaining[item] == 0:
                del remaining[item]
                if landings[item].missing:
                    raise TransferFailed("download", bucket, item.key,
                                         IncompleteDownload(f"{landings[item].missing} bytes missing"))
                landings.pop(item).land()
                on_done(item)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        writer.shutdown(wait=True)
        for landing in landings.values():  # whatever did not land is removed, never left half there
            landing.discard()


def _pwrite_all(fd: int, body, offset: int) -> None:
    view = memoryview(body)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _quoted(etag: str) -> str:
    return f'"{etag.strip(chr(34))}"'


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
    """Upload every item; `on_done` as for download_files. Files of one part go `concurrency` at a
    time; larger ones as multipart uploads with no more parts in flight than a slow server
    answers inside the client's read timeout (in_flight)."""
    def submit(manager, item: Upload, subscribers):
        return manager.upload(str(item.path), bucket, item.key, subscribers=subscribers)

    sizes = {}
    for item in items:
        try:
            sizes[item] = item.path.stat().st_size
        except OSError as exc:  # gone or unreadable: a failed transfer naming its key, as any other
            raise TransferFailed("upload", bucket, item.key, exc) from exc
    small = [item for item in items if sizes[item] <= MULTIPART_THRESHOLD]
    large = [item for item in items if sizes[item] > MULTIPART_THRESHOLD]
    if small:
        _run(s3, bucket, "upload", small, submit, on_done, concurrency)
    if large:
        parts = in_flight(PART_SIZE, s3.meta.config.read_timeout or READ_TIMEOUT_FALLBACK_S)
        _run(s3, bucket, "upload", large, submit, on_done, min(concurrency, parts))


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
