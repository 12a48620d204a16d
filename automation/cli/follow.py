"""Following a run until it ends, and fetching what it produced."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from instance.protocol.artifacts import write_json_atomic
from instance.protocol.attempts import NO_CAPACITY
from instance.protocol.aws import is_not_found
from instance.protocol.liveness import Verdict

from ..context import Target
from ..runs.records import RunView, from_record, from_state, read_record, record_end_from_cli
from ..runs.runcheck import check_run

log = logging.getLogger(__name__)


class RunLost(Exception):
    def __init__(self, view: RunView, verdict: Verdict):
        if verdict.error or verdict.reason == NO_CAPACITY:  # the machine or the group said why: it failed
            head = f"run {view.run_id} failed ({verdict.reason}): {verdict.why}"
        else:
            head = f"run {view.run_id} is lost: {verdict.why} (last heartbeat {view.heartbeat_at or 'never'})"
        super().__init__(f"{head.rstrip('.')}. Run `chronos-train verify-cleanup --fix` to record it and release the lock")
        self.view = view
        self.verdict = verdict


# A poll that still fails after botocore's retries is tried again at the next poll; only a
# run of failures this long ends the follower (the run itself goes on either way).
MAX_FAILED_POLLS = 5


def follow(target: Target, executor, run_id: str, on_update: Callable[[RunView], None],
           interval: float | None = None) -> RunView:
    """Poll the state file (one GET) until the run's record says how it ended."""
    interval = interval or (0.5 if target.local else 5.0)
    store = target.state_store()
    failed_polls = 0
    watched: dict = {}
    while True:
        try:
            final = _poll(target, executor, store, run_id, on_update, watched)
            failed_polls = 0
        except RunLost:
            raise
        except Exception as exc:
            failed_polls += 1
            if failed_polls >= MAX_FAILED_POLLS:
                raise
            log.warning("poll %d of run %s failed (%s); trying again", failed_polls, run_id, exc)
            final = None
        if final is not None:
            return final
        time.sleep(interval)


def _poll(target: Target, executor, store, run_id: str, on_update, watched: dict) -> RunView | None:
    lease = store.read()
    if lease is not None and lease.run_id == run_id:
        watched.update(lease.state)
        view = from_state(dict(lease.state))
        # Every poll asks EC2 (one call; the group only when the machine is not alive): a dead
        # machine ends the follower within a poll, not once a heartbeat has aged.
        verdict = check_run(target, executor, lease)
        view.judged(verdict)
        on_update(view)
        if verdict.stale:
            raise RunLost(view, verdict)
        return None
    record = read_record(target, run_id)
    if not (record and record.get("final_status")) and watched:
        # The agent writes its final record before it releases the lock: a lock gone with no
        # record means the agent could not write it (refused, or S3 failed it). Close it from
        # what the lock last said, or the follower would wait forever.
        status = "killed" if watched.get("status") == "killed" else "failed"
        reason = (watched.get("error") or {}).get("class") or "no_final_record"
        record = record_end_from_cli(target, run_id, status, reason, watched, [])
    if record and record.get("final_status"):
        final = from_record(record)
        on_update(final)
        return final
    return None


def download(target: Target, run_id: str, dest: Path) -> Path:
    """The model folder, its metadata and the run record, into dest/."""
    layout = target.layout
    prefix = layout.models(run_id)
    pages = target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix)
    for obj in (o for page in pages for o in page.get("Contents", [])):
        out = dest / "model" / obj["Key"][len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        target.s3.download_file(target.bucket, obj["Key"], str(out))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        target.s3.download_file(target.bucket, layout.model_metadata(run_id), str(dest / "model_metadata.json"))
    except Exception as exc:
        if not is_not_found(exc):
            raise  # a failed run may have no metadata; anything else is a real error
    record = read_record(target, run_id)
    if record is not None:
        write_json_atomic(dest / "training.json", record)
    return dest
