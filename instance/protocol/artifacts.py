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

from .aws import is_not_found


def dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


def put_json(s3, bucket: str, key: str, doc: Any) -> str:
    """One PutObject; returns the new ETag."""
    resp = s3.put_object(Bucket=bucket, Key=key, Body=dumps(doc), ContentType="application/json")
    return resp["ETag"]


def get_json(s3, bucket: str, key: str) -> Any | None:
    """The parsed object, or None when it does not exist."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # botocore ClientError; kept generic to avoid importing botocore
        if is_not_found(exc):
            return None
        raise
    return json.loads(body)


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
