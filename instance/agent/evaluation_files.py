"""The run's evaluation folder: what `chronos-train report` reads, under {env}/{run_id}/evaluation/.

The work dir's `evaluation/` collects it: the backtest's files (model/evaluation.py) once the
model is scored, and the loss history, which grows during training. results_sync uploads the
folder of a completed run; cleanup uploads whatever exists of a run that failed or was killed
(the loss so far), so its report can show it. Uploading is idempotent by construction: it lists
what is in S3 and sends only the files that are not there yet (or not at their local size).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from ..protocol.timeutil import iso

log = logging.getLogger(__name__)

LOSS_HISTORY = "loss_history.parquet"


class LossHistory:
    """Every loss the Trainer logged: appended on the training thread (no I/O), written at the end."""

    def __init__(self, attempt: int = 1):
        self.attempt = attempt
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append({**entry, "attempt": self.attempt, "at": iso()})

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._rows)

    def write(self, folder: Path) -> Path | None:
        rows = self.rows()
        if not rows:
            return None
        import pandas as pd

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOSS_HISTORY
        pd.DataFrame(rows).to_parquet(path, index=False)
        return path


def upload_evaluation(ctx) -> list[str]:
    """Write the loss history into the work dir's evaluation folder, then upload each of its files
    that S3 does not hold yet at that size. Returns the keys uploaded now."""
    folder = ctx.evaluation_dir
    ctx.loss_history.write(folder)
    files = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
    if not files:
        return []
    prefix = ctx.layout.evaluation(ctx.run_id)
    ctx.guard()
    pages = ctx.s3.get_paginator("list_objects_v2").paginate(Bucket=ctx.bucket, Prefix=prefix)
    present = {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}
    from ..protocol.transfer import Upload, upload_files

    todo = [Upload(path, prefix + path.name) for path in files if present.get(prefix + path.name) != path.stat().st_size]
    upload_files(ctx.s3, ctx.bucket, todo)
    sent = [u.key for u in todo]
    ctx.record.set_artifact("evaluation_uri", ctx.uri(prefix))
    log.info("evaluation folder: uploaded %s", ", ".join(k[len(prefix):] for k in sent) or "nothing new")
    return sent
