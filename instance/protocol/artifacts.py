"""Whole-object JSON artifacts in S3 and atomic local files.

An S3 PutObject is atomic: readers see the old object or the new one, never a partial one, so
each artifact is written with exactly one PutObject (never a .tmp key then a copy). Local files
are written to a temp file in the same folder, then renamed over the target.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .aws import CONFLICT_BACKOFF, ConflictBackoff, is_conditional_conflict, is_not_found, is_precondition_failed


def dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


def put_json(s3, bucket: str, key: str, doc: Any) -> str:
    """One PutObject; returns the new ETag."""
    resp = s3.put_object(Bucket=bucket, Key=key, Body=dumps(doc), ContentType="application/json")
    return resp["ETag"]


def get_json(s3, bucket: str, key: str) -> Any | None:
    """The parsed object, or None when it does not exist."""
    return get_json_versioned(s3, bucket, key)[0]


def get_json_versioned(s3, bucket: str, key: str) -> tuple[Any | None, str | None]:
    """(parsed object, its ETag), or (None, None) when it does not exist."""
    try:
        resp = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore ClientError; kept generic to avoid importing botocore
        if is_not_found(exc):
            return None, None
        raise
    return json.loads(resp["Body"].read()), resp["ETag"]


def put_if(s3, bucket: str, key: str, body: bytes, etag: str | None,
           backoff: ConflictBackoff = CONFLICT_BACKOFF) -> str | None:
    """One conditional PutObject: create when `etag` is None, else replace only that version.

    Returns the new ETag, or None when the condition does not hold (412: someone else's version
    is there now; the caller re-reads and decides). A 409 (a concurrent request on the key) is
    tried again after a jittered wait, as S3's API reference says to.
    """
    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    for attempt in range(1, backoff.attempts + 1):
        try:
            return s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                                 **condition)["ETag"]
        except Exception as exc:
            if is_precondition_failed(exc):
                return None
            if not is_conditional_conflict(exc) or attempt == backoff.attempts:
                raise
        backoff.wait(attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, doc: Any) -> Path:
    return write_atomic(path, dumps(doc))
