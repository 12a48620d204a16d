"""A run's logs, read from S3 (ranged GETs while following): the machine's boot log
(bootstrap.log, EC2 only) and the agent's (agent.log). When both have lines, each stretch is
headed by its name, as `tail -f` does with several files."""
from __future__ import annotations

import time
from typing import Iterator

from instance.protocol.aws import error_code, is_not_found

from ..context import Target
from ..errors import NoSuchRun


def _read_from(target: Target, key: str, offset: int) -> bytes | None:
    try:
        resp = target.s3.get_object(Bucket=target.bucket, Key=key, Range=f"bytes={offset}-")
    except Exception as exc:
        if is_not_found(exc):
            return None
        if error_code(exc) == "InvalidRange":
            return b""  # nothing new since offset
        raise
    return resp["Body"].read()


def _run_active(target: Target, run_id: str) -> bool:
    lease = target.state_store().read()
    return lease is not None and lease.run_id == run_id


def stream(target: Target, run_id: str, follow: bool, interval: float | None = None) -> Iterator[str]:
    keys = [target.layout.bootstrap_log(run_id), target.layout.agent_log(run_id)]
    interval = interval or (1.0 if target.local else 10.0)
    offsets = dict.fromkeys(keys, 0)
    shown: str | None = None  # the log the last lines came from
    headed = False  # only a run with a boot log (EC2) has two logs to tell apart
    while True:
        active = _run_active(target, run_id) if follow else False
        chunks = {key: _read_from(target, key, offsets[key]) for key in keys}
        if all(c is None for c in chunks.values()) and not any(offsets.values()) and not active:
            raise NoSuchRun(f"run {run_id} has no log yet in env {target.env}; check the id with `chronos-train runs`")
        for key, chunk in chunks.items():
            if not chunk:
                continue
            # S3 ranges can split a UTF-8 sequence: decode whole lines only.
            cut = chunk.rfind(b"\n") + 1 if active else len(chunk)
            if not cut:
                continue
            headed = headed or key == keys[0]
            if headed and shown != key:
                yield ("\n" if shown else "") + f"==> {key.rsplit('/', 1)[1]} <==\n"
            shown = key
            offsets[key] += cut
            yield chunk[:cut].decode("utf-8", errors="replace")
        if not active:
            return
        time.sleep(interval)
