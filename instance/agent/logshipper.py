"""agent.log: written locally, copied to S3 every minute and at the end, so a machine that dies
loses at most the last minute of it."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from .periodic import Periodic

log = logging.getLogger(__name__)

FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"


def setup_logging(log_path: Path, level: int = logging.INFO) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter(FORMAT)
    for handler in (logging.FileHandler(log_path), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


class LogShipper(Periodic):
    """Uploads the log file whenever it changed, every `interval` seconds.

    `guard` runs before each upload and raises when this agent may no longer write (fenced).
    """

    name = "log-shipper"

    def __init__(self, s3, bucket: str, key: str, path: Path, interval: float, guard: Callable[[], None]):
        super().__init__(interval)
        self.s3, self.bucket, self.key, self.path = s3, bucket, key, path
        self.guard = guard
        self._last_size = -1

    def upload(self, force: bool = False) -> bool:
        flush_logs()
        data = self.path.read_bytes()
        if not force and len(data) == self._last_size:
            return False
        self.guard()
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=data, ContentType="text/plain; charset=utf-8")
        self._last_size = len(data)
        return True

    def tick(self) -> None:
        self.upload()
