"""What every phase of one agent run shares: where to write, the lock, the record, the work dir.

Every write outside the state file goes through here, so the fencing rule has one home:
- records (training.json, cleanup_status.json) are written conditionally on the ETag this agent
  last saw, so a record that someone else wrote meanwhile (kill --force, verify-cleanup) is never
  overwritten;
- every other upload first re-reads the lock and stops if this run no longer holds it.
"""
from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol.artifacts import dumps, put_if
from ..protocol.aws import AwsTarget, is_not_found
from ..protocol.layout import Layout, s3_uri
from ..protocol.record import RunRecord
from ..protocol.state import Fenced
from .evaluation_files import LossHistory
from .hooks import Hooks
from .lockholder import LockHolder

log = logging.getLogger(__name__)


@dataclass
class AgentContext:
    env: str
    bucket: str
    run_id: str
    target: AwsTarget
    local: bool
    instance_id: str | None
    work_dir: Path
    owns_work_dir: bool
    s3: Any
    holder: LockHolder
    record: RunRecord
    hooks: Hooks = field(default_factory=Hooks)
    expect_gpu: str = "auto"  # auto | yes | no (gpucheck.py)
    shutdown_at: float | None = None  # the dead-man switch, epoch seconds on this machine's clock
    config: Any = None  # RunConfig once initialization has read it
    loss_history: LossHistory = field(default_factory=LossHistory)
    _etags: dict[str, str | None] = field(default_factory=dict)

    @property
    def layout(self) -> Layout:
        return Layout(self.env)

    @property
    def log_path(self) -> Path:
        return self.work_dir / "agent.log"

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def train_dir(self) -> Path:
        return self.work_dir / "train"

    @property
    def staging_dir(self) -> Path:
        return self.work_dir / "staging"

    @property
    def evaluation_dir(self) -> Path:
        """What goes to {run_id}/evaluation/ (evaluation_files.py)."""
        return self.work_dir / "evaluation"

    @property
    def ranks_dir(self) -> Path:
        """What the agent and the ranks of a data-parallel run share (model/distributed.py)."""
        return self.work_dir / "ranks"

    @property
    def base_model_dir(self) -> Path:
        """The base model, saved once for the ranks to load."""
        return self.work_dir / "base-model"

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def ec2(self):
        from ..protocol.aws import client

        return client("ec2", self.target)

    # -- fenced writes ---------------------------------------------------------------------------
    def guard(self) -> None:
        self.holder.ensure_holder()

    def remember_etag(self, key: str) -> None:
        """Read the current ETag of a record this agent will own (None: absent)."""
        try:
            self._etags[key] = self.s3.head_object(Bucket=self.bucket, Key=key)["ETag"]
        except Exception as exc:
            if not is_not_found(exc):
                raise
            self._etags[key] = None

    def write_record(self, key: str, doc: Any) -> None:
        """One conditional PutObject: create if absent, else replace only the version we wrote."""
        if self.holder.fenced is not None:
            raise self.holder.fenced
        if key not in self._etags:
            self.remember_etag(key)
        body = dumps(doc)
        etag = put_if(self.s3, self.bucket, key, body, self._etags[key])
        if etag is None:
            # A retried request whose first attempt landed reads back as our own bytes.
            current = self.s3.get_object(Bucket=self.bucket, Key=key)
            if hashlib.sha256(current["Body"].read()).digest() != hashlib.sha256(body).digest():
                self.holder.fenced = Fenced(f"{key} was written by someone else; this agent stops writing")
                raise self.holder.fenced
            etag = current["ETag"]
        self._etags[key] = etag

    def upload_file(self, path: Path, key: str) -> None:
        self.s3.upload_file(str(path), self.bucket, key)

    def upload_dir(self, folder: Path, prefix: str) -> list[str]:
        self.guard()
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def delete_prefix(self, prefix: str) -> int:
        n = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                n += len(objects)
        return n


class CheckpointUploader:
    """Uploads each checkpoint under {run_id}/checkpoints/ in the background, as it is written.

    The Trainer deletes older checkpoint folders as it saves new ones, so each checkpoint is
    first hard-linked into a staging folder (training.stage_checkpoint) that only this uploader
    removes.
    After a checkpoint is complete in S3, older ones there are deleted: S3 mirrors the Trainer's
    save_total_limit=1 and a partial upload never replaces a complete one.
    """

    def __init__(self, ctx: AgentContext):
        self.ctx = ctx
        self.prefix = ctx.layout.checkpoints(ctx.run_id)
        self.uploaded: list[str] = []
        self.errors: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, checkpoint_dir: Path, step: int) -> None:
        from ..model.training import stage_checkpoint

        self.submit_staged(stage_checkpoint(checkpoint_dir, self.ctx.staging_dir), step)

    def submit_staged(self, staged: Path, step: int) -> None:
        """A checkpoint already staged (by rank 0 of a data-parallel run); this uploader removes it."""
        self._queue.put((staged, step))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every submitted checkpoint is uploaded (or failed), then end the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            staged, step = item
            name = staged.name
            try:
                self.ctx.upload_dir(staged, f"{self.prefix}{name}/")
                for old in self.uploaded:
                    self.ctx.delete_prefix(f"{self.prefix}{old}/")
                self.uploaded = [name]
                log.info("checkpoint %s uploaded to %s", name, self.ctx.uri(self.prefix + name + "/"))
            except Fenced as exc:
                log.error("not uploading checkpoint %s: %s", name, exc)
                self.errors.append(str(exc))
            except Exception as exc:
                log.error("checkpoint %s upload failed: %s: %s", name, type(exc).__name__, exc)
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            finally:
                shutil.rmtree(staged, ignore_errors=True)

