"""The one way files move between a disk and S3, for many files at once: downloads and large
uploads through obstore (Rust's object_store), small uploads through s3transfer's manager, tuned.

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
  ranged GETs of 8 MiB, up to 30 in flight, each body received in Rust and handed over in
  pieces of 1 MiB, each written at its offset with os.pwrite into a file allocated whole:
  botocore reads a body 256 KB at a time under the GIL, which kept s3transfer at a third of
  s5cmd's speed on one big file; a whole 16 MiB range collected first and then written cost
  three times the CPU of 1 MiB pieces (a piece still in the core's cache when the kernel copies
  it out; 256 KB pieces cost Python calls, 4 MiB and more main-memory traffic: measured).
  Each range names the listing's ETag (If-Match), so a file is never stitched from two versions.
- concurrency: up to 64 requests in flight for small files. A small-file download is one request
  whose time is nearly all first-byte latency (tens of ms from EC2 to S3 in the same region), so
  a thousand files need many in flight to be bound by throughput rather than by round trips;
  `aws s3 sync` keeps 10. The client's connection pool (aws.py) holds as many connections.
- bytes in flight: never more, small files and parts alike, than the slowest server we still
  finish against (SLOWEST_BYTES_PER_S) moves inside one request's timeout (`byte_budget`): the
  last request in flight waits for all those ahead of it. More, and a slow server (a busy disk, a
  congested link) makes a transfer fail, request after request timing out, instead of slowing
  down: seen with 64 parts of 8 MiB, which need 17 MB/s; 64 files of 8 MiB would need 8.5 MiB/s.
- no HeadObject per download: the listing already gave each object's size and ETag, handed to
  the manager (as the AWS CLI does), so a file costs one GET, not two requests.
- uploads: files of one part (8 MiB) through s3transfer; larger ones (checkpoints, evaluation and
  forecast files) as obstore's multipart uploads, one file after another, parts of 8 MiB (more
  above 80 GiB: S3 allows 10,000 parts), up to 30 in flight, the file read and each part signed and sent from Rust:
  about half the client CPU of s3transfer or the AWS CLI (docs/benchmarks.md). obstore aborts
  the upload (AbortMultipartUpload) when a part or the completion fails, so a failed upload
  leaves neither an object nor parts; the bucket's lifecycle rule is only the backstop for a
  process killed mid-upload.
- an upload held until a verdict (`visible_after`: data upload's validator still reading) goes
  wholly through s3transfer: botocore's before-call hooks hold each PutObject and
  CompleteMultipartUpload until the verdict and stop the parts once it is bad, and s3transfer
  then aborts what it sent. obstore sends its requests from Rust, where no hook reaches them.
- files land atomically: a download is written under a temporary name beside the file and
  renamed when complete, so a file under its own name is always whole.
Completion is handed back as it happens (`on_done`, on the caller's thread), so a caller can
record progress at whatever pace it likes and stop the transfer between two files. Errors are
never swallowed: the first failure stops the rest and is raised as TransferFailed, naming the
key and keeping botocore's error (obstore's are translated into one: classify it with
aws.error_code).

A client made outside aws.py's factory (no object store for it) moves everything through
s3transfer. Import this module where a transfer happens, not at a command's start: it loads
s3transfer.
"""
from __future__ import annotations

import asyncio
import errno
import os
import queue
import secrets
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from botocore.exceptions import BotoCoreError
from s3transfer.manager import TransferConfig, TransferManager
from s3transfer.subscribers import BaseSubscriber

CONCURRENCY = 64
PART_SIZE = 8 * 1024 * 1024
MULTIPART_THRESHOLD = PART_SIZE
# A large download's ranges: S3 gives each request about 85-90 MB/s ("Optimizing Amazon S3
# Performance": one request in flight for each 85-90 MB/s wanted), so a download's speed is its
# ranges in flight; 8 MiB x 30 (the byte budget of a 60 s timeout) measured 2.9x `aws s3 cp`'s
# 10 under a model of that limit, 16 MiB x 15 1.4x (bench/bench_clients.py, docs/benchmarks.md).
RANGE_SIZE = 8 * 1024 * 1024
# The slowest server a transfer still finishes against (byte_budget below); 4 MiB/s is a
# 32 Mbit/s link, or a disk that busy. Never more than 30 parts in flight for one transfer.
SLOWEST_BYTES_PER_S = 4 * 1024 * 1024
MAX_PARTS_IN_FLIGHT = 30
WRITE_PIECE = 1024 * 1024  # a range body is written as it arrives, in pieces of this size (above)
# obstore's multipart upload: as for ranges, its speed on S3 is its parts in flight, and 8 MiB parts
# let the byte budget keep 30 in flight (16 MiB: 15); S3 takes parts of 5 MiB to 5 GiB.
UPLOAD_PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit for one multipart upload
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
        # obstore's messages go on with a multi-line debug dump; the first line says what happened.
        reason = (str(cause) or type(cause).__name__).split("\n", 1)[0]
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
    from .aws import store_timeout_s

    if not items:
        return
    store = _store(s3, bucket, "download", items)
    if store is None:  # a client made elsewhere: s3transfer, as the client itself is configured
        def submit(manager, item: Download, subscribers):
            item.path.parent.mkdir(parents=True, exist_ok=True)
            return manager.download(bucket, item.key, str(item.path),
                                    subscribers=[_KnownObject(item), *subscribers])

        _through_s3transfer(s3, bucket, "download", items, {item: item.size for item in items}, submit, on_done,
                            concurrency)
        return
    small = [item for item in items if item.size <= PART_SIZE]
    large = [item for item in items if item.size > PART_SIZE]
    budget = byte_budget(store_timeout_s(s3))
    with _event_loop() as runner:
        if small:
            runner.run(_fetch_all(store, bucket, small, on_done, concurrency, budget))
        if large:
            parallel = min(concurrency, in_flight(RANGE_SIZE, budget))
            runner.run(_fetch_ranges(store, bucket, large, on_done, parallel))


class _SettlingLoop(asyncio.SelectorEventLoop):
    """The transfers' event loop. obstore's futures complete on its Rust (tokio) threads, which
    enter Python to call call_soon_threadsafe and release the GIL inside it (the self-pipe's
    send). If the process exits while one is still in there, Python 3.11 ends that thread with
    pthread_exit as it asks for the GIL back, which cannot unwind through Rust frames: SIGABRT,
    exit 134, no message, after a transfer that had succeeded (seen: `python -m
    instance.boot.upload` aborted in 7 % to 47 % of runs). So the loop counts the calls under way, and
    _event_loop returns only once none is."""

    def __init__(self) -> None:
        super().__init__()
        self.inside: list[object] = []  # list.append/remove are atomic under the GIL

    def call_soon_threadsafe(self, callback, *args, context=None):
        token = object()
        self.inside.append(token)
        try:
            return super().call_soon_threadsafe(callback, *args, context=context)
        finally:
            self.inside.remove(token)


SETTLE_S = 5.0  # how long a transfer waits for obstore's threads to leave Python, at most
CANCELLED_SETTLE_S = 0.05  # a cancelled future's thread enters Python once more soon after (see below)


@contextmanager
def _event_loop():
    """A private loop for one transfer (asyncio.run would leave this thread with no current
    loop, and code that runs after it in the same process, Pulumi's runtime in the CLI and its
    tests, needs one), left only once no obstore thread is still in Python on its behalf."""
    loop = _SettlingLoop()
    try:
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            yield runner
    except BaseException:
        # A failure cancels requests still under way; each one's thread then takes the GIL
        # once more to see the cancellation, outside call_soon_threadsafe: sleeping hands it
        # the GIL before this process can go on to exit.
        time.sleep(CANCELLED_SETTLE_S)
        raise
    finally:
        deadline = time.monotonic() + SETTLE_S
        while loop.inside and time.monotonic() < deadline:
            time.sleep(0.001)


def _store(s3, bucket: str, verb: str, items: Sequence[Download] | Sequence[Upload]):
    """object_store for a transfer of `items`; an identity it cannot find (no credentials in the
    chain) fails the transfer naming its first key, as the same failure does through s3transfer."""
    from .aws import object_store

    try:
        return object_store(s3, bucket)
    except BotoCoreError as exc:
        raise TransferFailed(verb, bucket, items[0].key, exc) from exc


def byte_budget(timeout_s: float) -> int:
    """How many bytes one transfer keeps in flight at most, small files and parts alike: as many
    as a server moving only SLOWEST_BYTES_PER_S in all still answers inside a request's timeout
    (the last request in flight waits for all those ahead of it). More, and a slow server (a disk
    under load, a congested link) makes a transfer fail, request after request timing out,
    instead of slowing down: seen with 64 parts of 8 MiB, which need 17 MB/s."""
    return int(timeout_s * SLOWEST_BYTES_PER_S)


def in_flight(part_size: int, budget: int) -> int:
    """Parts of `part_size` in flight for a large transfer: the byte budget's worth, at least one,
    at most MAX_PARTS_IN_FLIGHT."""
    return max(1, min(MAX_PARTS_IN_FLIGHT, budget // part_size))


class _Budget:
    """Bytes in flight on an event loop: a request waits until its bytes fit under the limit, or
    until nothing else is in flight (a file larger than the whole budget goes alone)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.changed = asyncio.Condition()

    async def take(self, n: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def give(self, n: int) -> None:
        async with self.changed:
            self.used -= n
            self.changed.notify_all()


async def _fetch_all(store, bucket: str, items: Sequence[Download], on_done, concurrency: int, budget: int) -> None:
    """`concurrency` workers take the items in turn, no more than `budget` bytes in flight; each
    finished file is handed to on_done here, on the caller's thread (the loop runs on it). The
    first failure, or an exception from on_done, cancels the workers (a cancelled download
    leaves at most its temporary file)."""
    todo = iter(items)
    finished: asyncio.Queue = asyncio.Queue()
    in_flight_bytes = _Budget(budget)

    async def worker() -> None:
        for item in todo:
            await in_flight_bytes.take(item.size)
            try:
                await _fetch(store, item)
            except Exception as exc:  # noqa: BLE001 - handed to the caller with its key
                await finished.put((item, exc))
                return
            finally:
                await in_flight_bytes.give(item.size)
            await finished.put((item, None))

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(items)))]
    try:
        for _ in range(len(items)):
            item, exc = await finished.get()
            if exc is not None:
                raise TransferFailed("download", bucket, item.key, _as_client_error(exc, "GetObject")) from exc
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
    written at its offset as it arrives, piece by piece, into the object's temporary file,
    renamed into place when its last range lands. Written on the loop's own thread: no write can
    still be running when a failure closes the file (its descriptor number is soon reused).
    The body is received in Rust and handed over WRITE_PIECE at a time, not read through Python
    256 KB at a time as botocore does (what made s3transfer 3x slower than s5cmd)."""
    import obstore

    items = list(dict.fromkeys(items))  # one object named twice must not count its ranges twice
    landings: dict[Download, _Landing] = {}
    jobs = ((item, start) for item in items for start in range(0, item.size, RANGE_SIZE))
    finished: asyncio.Queue = asyncio.Queue()

    async def get(item: Download, start: int) -> None:
        end = min(start + RANGE_SIZE, item.size)
        # If-Match: the listing's object or a 412, never a range of an object replaced meanwhile.
        result = await obstore.get_async(store, item.key,
                                         options={"range": (start, end), "if_match": _quoted(item.etag)})
        if result.meta["size"] != item.size:
            raise IncompleteDownload(f"the object has {result.meta['size']} bytes, {item.size} listed")
        landing, offset = landings[item], start
        async for piece in result.stream(min_chunk_size=WRITE_PIECE):
            if offset + len(piece) > end:  # never written past its range, over the next one
                raise IncompleteDownload(f"more than the {end - start} bytes asked for bytes {start}-{end - 1}")
            _pwrite_all(landing.fd, piece, offset)
            offset += len(piece)
        if offset != end:  # a short body is never taken for its range
            raise IncompleteDownload(f"{offset - start} bytes received for bytes {start}-{end - 1}, {end - start} asked")
        landing.missing -= end - start

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
                raise TransferFailed("download", bucket, item.key, _as_client_error(exc, "GetObject")) from exc
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


def _as_client_error(exc: BaseException, operation: str) -> BaseException:
    """obstore's error kinds as the S3 error botocore would have raised for the same answer, so
    callers classify both paths' failures one way (aws.error_code, aws.refused_action). IAM
    authorizes every request of a multipart upload as s3:PutObject: an upload names that."""
    from botocore.exceptions import ClientError
    from obstore import exceptions as ob

    for kind, code, status in ((ob.PermissionDeniedError, "AccessDenied", 403),
                               (ob.UnauthenticatedError, "InvalidAccessKeyId", 403),
                               (ob.NotFoundError, "NoSuchKey", 404),
                               (ob.PreconditionError, "PreconditionFailed", 412)):
        if isinstance(exc, kind):
            error = {"Code": code, "Message": str(exc).split("\n", 1)[0], "Action": f"s3:{operation}"}
            return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)
    return exc


def upload_files(s3, bucket: str, items: Sequence[Upload], *, on_done: Callable[[Upload], None] = lambda u: None,
                 concurrency: int = CONCURRENCY, visible_after: Future | None = None) -> None:
    """Upload every item; `on_done` as for download_files. Files of one part go up to
    `concurrency` at a time through s3transfer; larger ones one after another as obstore's
    multipart uploads; never more bytes in flight than byte_budget allows.

    `visible_after`: a future (a validation still running) before whose result no object may
    appear: every item then goes through s3transfer, whose PutObject and CompleteMultipartUpload
    wait for it and fail as it does (the other requests fail once it is known to be bad)."""
    from .aws import store_timeout_s

    def submit(manager, item: Upload, subscribers):
        return manager.upload(str(item.path), bucket, item.key, subscribers=subscribers)

    sizes = {}
    for item in items:
        try:
            sizes[item] = item.path.stat().st_size
        except OSError as exc:  # gone or unreadable: a failed transfer naming its key, as any other
            raise TransferFailed("upload", bucket, item.key, exc) from exc
    large = [item for item in items if sizes[item] > MULTIPART_THRESHOLD]
    store = _store(s3, bucket, "upload", large) if large and visible_after is None else None
    through_botocore = [item for item in items if store is None or sizes[item] <= MULTIPART_THRESHOLD]
    with _visible_after(s3, visible_after):
        _through_s3transfer(s3, bucket, "upload", through_botocore, sizes, submit, on_done, concurrency)
    if store is None:
        return
    budget = byte_budget(store_timeout_s(s3))
    with _event_loop() as runner:
        for item in large:
            part = upload_part_size(sizes[item])
            runner.run(_put(store, bucket, item, part, min(concurrency, in_flight(part, budget))))
            on_done(item)


def upload_part_size(size: int) -> int:
    """UPLOAD_PART_SIZE, or more for a file that would need more than S3's 10,000 parts (above
    80 GiB), in whole MiB (S3: parts of 5 MiB to 5 GiB, the last one smaller)."""
    mib = 1024 * 1024
    return max(UPLOAD_PART_SIZE, -(-size // (MAX_PARTS * mib)) * mib)


async def _put(store, bucket: str, item: Upload, part_size: int, parallel: int) -> None:
    """One multipart upload by obstore: the file read and each part sent from Rust (half the CPU
    of s3transfer, which reads and signs each part in Python). The object appears whole when
    CompleteMultipartUpload succeeds, or not at all; on a failure obstore aborts the upload."""
    import obstore

    try:
        await obstore.put_async(store, item.key, item.path, chunk_size=part_size, max_concurrency=parallel)
    except Exception as exc:  # noqa: BLE001 - handed to the caller with its key
        raise TransferFailed("upload", bucket, item.key, _as_client_error(exc, "PutObject")) from exc


# The requests after which an uploaded object exists in the bucket: they wait for the verdict.
_WAIT_FOR_VERDICT = ("PutObject", "CompleteMultipartUpload")
# The requests that only move bytes: they go on while the verdict is pending, and stop as soon as
# it is bad (a bad large file does not send the rest of its parts first).
_STOP_ON_BAD_VERDICT = ("CreateMultipartUpload", "UploadPart")


@contextmanager
def _visible_after(s3, verdict: Future | None):
    """While inside, the requests of client `s3` that make an object visible wait for `verdict`
    and fail as it does; the others fail once it is known to be bad. botocore's before-call event
    runs outside its retries, so a bad verdict is raised once, not retried."""
    if verdict is None:
        yield
        return

    def wait(**_):
        verdict.result()

    def stop_if_bad(**_):
        if verdict.done():
            verdict.result()

    handlers = [(op, wait) for op in _WAIT_FOR_VERDICT] + [(op, stop_if_bad) for op in _STOP_ON_BAD_VERDICT]
    for op, handler in handlers:
        s3.meta.events.register(f"before-call.s3.{op}", handler, unique_id=f"chronos-verdict-{id(verdict)}-{op}")
    try:
        yield
    finally:
        for op, _ in handlers:
            s3.meta.events.unregister(f"before-call.s3.{op}", unique_id=f"chronos-verdict-{id(verdict)}-{op}")


def _through_s3transfer(s3, bucket: str, verb: str, items: Sequence, sizes: dict, submit, on_done,
                        concurrency: int) -> None:
    """Small files `concurrency` at a time and within the byte budget, then large ones with the
    budget's worth of parts in flight, timed by the client's own read timeout."""
    budget = byte_budget(s3.meta.config.read_timeout or READ_TIMEOUT_FALLBACK_S)
    small = [item for item in items if sizes[item] <= MULTIPART_THRESHOLD]
    large = [item for item in items if sizes[item] > MULTIPART_THRESHOLD]
    if small:
        _run(s3, bucket, verb, small, submit, on_done, concurrency, {item: sizes[item] for item in small}, budget)
    if large:
        # The manager keeps the parts in flight within the budget, over all files.
        parts = min(concurrency, in_flight(PART_SIZE, budget))
        _run(s3, bucket, verb, large, submit, on_done, parts, {item: 0 for item in large}, budget)


def _run(s3, bucket: str, verb: str, items: Iterable, submit, on_done, concurrency: int, weights: dict,
         budget: int) -> None:
    """Submit each item once the bytes in flight (`weights`, summed over submitted and unsettled
    items) leave room for it under `budget`, or nothing is in flight; hand completed ones to
    on_done as they settle; raise the first failure."""
    done: queue.Queue = queue.Queue()
    unsettled = 0
    pending_bytes = 0

    def settle(block: bool) -> bool:
        """Settle one completed transfer (waiting for one if `block`); False if none was ready."""
        nonlocal unsettled, pending_bytes
        try:
            item, future = done.get(block=block)
        except queue.Empty:
            return False
        unsettled -= 1
        pending_bytes -= weights[item]
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - every failure is reported, with its key
            raise TransferFailed(verb, bucket, item.key, exc) from exc
        on_done(item)
        return True

    # As a context manager, an exception cancels what is in flight and waits for it. (Not
    # `shutdown(cancel=True)`: s3transfer 0.19.3 passes its arguments to _shutdown in the wrong
    # order there, and the cancel itself fails with a TypeError.)
    with TransferManager(s3, transfer_config(concurrency)) as manager:
        for item in items:
            while unsettled and pending_bytes + weights[item] > budget:
                settle(block=True)
            submit(manager, item, [_Finished(item, done)])
            unsettled += 1
            pending_bytes += weights[item]
            while settle(block=False):
                pass
        while unsettled:
            settle(block=True)


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
