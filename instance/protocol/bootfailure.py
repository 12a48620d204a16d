"""A machine's last word when it could not run the agent: `{env}/logs/{run_id}/boot_failure.json`.

Written by instance/boot/bootstrap.sh (one PutObject, the instance role may write `logs/*`) after
it has taken its machine out of the run's group and before it ends the machine through EC2:
    {"run_id": ..., "instance_id": "i-...", "reason": "boot_failed" | "agent_crashed",
     "message": "cannot restore or build the python environment", "at": "...Z", "log_uri": "s3://..."}
`boot_failed`: the agent never started (bundle, environment, the agent's import); `agent_crashed`:
it started and exited with a code it never gives (a signal, a crash), so its cleanup did not run.

Why a record and not the boot log's last line: every machine of a run ships its log to the same
key every half minute, so its last line at any moment is progress, not a verdict; telling a
failure from progress would mean matching free text. The record names the machine it speaks for,
so the liveness rule (liveness.py) can tell a failure of the machine the lock names from an older
one, and it is one small GET. Its message is the line the boot log ends with.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from .aws import is_not_found

BOOT_FAILED = "boot_failed"
AGENT_CRASHED = "agent_crashed"


@dataclass(frozen=True)
class BootFailure:
    reason: str
    message: str
    instance_id: str | None = None
    written_at: datetime | None = None  # S3's LastModified: the same clock as the lock's age
    log_uri: str | None = None

    @classmethod
    def from_record(cls, doc: Mapping[str, Any], written_at: datetime | None = None) -> "BootFailure":
        return cls(str(doc.get("reason") or BOOT_FAILED), str(doc.get("message") or "the machine could not start"),
                   doc.get("instance_id") or None, written_at, doc.get("log_uri"))

    def error(self) -> dict[str, Any]:
        """The run record's `error` for it (the phase is the boot: no agent phase ran)."""
        return {"class": self.reason, "message": self.message, "phase": "boot"}


def read_boot_failure(s3, bucket: str, key: str) -> BootFailure | None:
    """The run's boot failure record, or None when no machine of the run wrote one."""
    try:
        resp = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore ClientError; kept generic to avoid importing botocore
        if is_not_found(exc):
            return None
        raise
    try:
        doc = json.loads(resp["Body"].read())
    except ValueError:
        return None  # not ours to judge: a record nobody can read says nothing
    return BootFailure.from_record(doc if isinstance(doc, dict) else {}, resp.get("LastModified"))
