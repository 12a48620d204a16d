"""Contender code run in separate processes by the lock-race test (must be importable)."""
from __future__ import annotations

import time

_store = None


def init(endpoint_url: str, region: str, bucket: str, env: str, credentials: tuple | None = None) -> None:
    global _store
    from instance.protocol.aws import AwsTarget, client
    from instance.protocol.state import StateStore

    _store = StateStore(client("s3", AwsTarget(region, endpoint_url, credentials)), bucket, env)


def contend(run_id: str, go_at: float) -> tuple[str, str, str]:
    """('won', run_id, '') or ('busy', holder_run_id, message)."""
    from instance.protocol.state import LockBusy

    time.sleep(max(0.0, go_at - time.time()))
    try:
        _store.acquire(run_id)
        return ("won", run_id, "")
    except LockBusy as exc:
        return ("busy", exc.holder.get("run_id", ""), str(exc))
