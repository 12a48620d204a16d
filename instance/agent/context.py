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
from ..protocol.timeutil import iso
from ..protocol.state import Fenced
from .evaluation_files import LossHistory
from .hooks import Hooks
from .lockholder import LockHolder

log = logging.getLogger(__name__)

COMPLETE_MARKER = "_COMPLETE"


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
    attempt: int = 1  # which machine of the run this is (attempts.py)
    replaceable: bool = False  # a lost machine is replaced (the group still wants one after this)
    in_group: bool = False  # the run's machines come from its Auto Scaling group
    run_left_s: float | None = None  # until the run's deadline_at, by S3's clock at boot
    last_checkpoint_step: int | None = None  # of the newest checkpoint complete in S3
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
    def forecast_dir(self) -> Path:
        """What goes to {run_id}/forecasts/ (model/forecasting.py)."""
        return self.work_dir / "forecasts"

    @property
    def ranks_dir(self) -> Path:
        """What the agent and the ranks of a data-parallel run share (model/distributed.py)."""
        return self.work_dir / "ranks"

    @property
    def base_model_dir(self) -> Path:
        """The base model, saved once for the ranks to load."""
        return self.work_dir / "base-model"

    @property
    def resume_dir(self) -> Path:
        """The checkpoint a replacement machine goes on from, downloaded."""
        return self.work_dir / "resume"

    def uri(self, key: str) -> str:
        return s3_uri(self.bucket, key)

    def ec2(self):
        from ..protocol.aws import client

        return client("ec2", self.target)

    def autoscaling(self):
        from ..protocol.aws import client

        return client("autoscaling", self.target)

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

    def read_record(self, key: str) -> Any | None:
        """A record as S3 holds it now (an earlier machine's), remembering its ETag for our write."""
        from ..protocol.artifacts import get_json_versioned

        doc, etag = get_json_versioned(self.s3, self.bucket, key)
        self._etags[key] = etag
        return doc

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

    def upload_dir(self, folder: Path, prefix: str) -> list[str]:
        """Every file under `folder`, in parallel through the one transfer path (transfer.py)."""
        from ..protocol.transfer import Upload, upload_files

        self.guard()
        items = [Upload(p, prefix + p.relative_to(folder).as_posix())
                 for p in sorted(p for p in folder.rglob("*") if p.is_file())]
        upload_files(self.s3, self.bucket, items)
        return [u.key for u in items]

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

    def __init__(self, ctx: AgentContext, prefix: str | None = None):
        self.ctx = ctx
        self.prefix = prefix or ctx.layout.checkpoints(ctx.run_id)
        self.uploaded: list[str] = []
        self.last_step: int | None = None  # of the newest checkpoint complete in S3
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
                # Written last: a checkpoint counts (for a resume) only once all of it is in S3.
                self.ctx.s3.put_object(Bucket=self.ctx.bucket, Key=f"{self.prefix}{name}/{COMPLETE_MARKER}",
                                       Body=dumps({"step": step, "at": iso()}))
                self.last_step = self.ctx.last_checkpoint_step = step
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



def latest_checkpoint(ctx: AgentContext, prefix: str | None = None) -> tuple[str, int] | None:
    """(prefix, step) of the newest checkpoint complete in S3 (its marker written), or None;
    under the run's checkpoints/ or `prefix` (a sweep trial's)."""
    import json

    prefix = prefix or ctx.layout.checkpoints(ctx.run_id)
    best: tuple[str, int] | None = None
    for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=ctx.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/" + COMPLETE_MARKER) or "/" in obj["Key"][len(prefix):-len(COMPLETE_MARKER) - 1]:
                continue  # a sweep trial's, in a folder below
            body = ctx.s3.get_object(Bucket=ctx.bucket, Key=obj["Key"])["Body"].read()
            step = int(json.loads(body)["step"])
            if best is None or step > best[1]:
                best = (obj["Key"][: -len(COMPLETE_MARKER)], step)
    return best


def download_prefix(ctx: AgentContext, prefix: str, dest: Path) -> Path:
    """Every object under `prefix` into `dest` (a checkpoint to resume from), markers aside,
    through the one transfer path (transfer.py)."""
    from ..protocol.transfer import Download, download_files

    dest.mkdir(parents=True, exist_ok=True)
    items = [Download(o["Key"], o["Size"], o["ETag"], dest / o["Key"][len(prefix):])
             for page in ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=ctx.bucket, Prefix=prefix)
             for o in page.get("Contents", []) if o["Key"][len(prefix):] not in ("", COMPLETE_MARKER)]
    for item in items:
        item.path.parent.mkdir(parents=True, exist_ok=True)
    download_files(ctx.s3, ctx.bucket, items)
    return dest
