"""Every environment knob the CLI reads, in one place.

`settings()` reads the environment at each call, so a test or a shell that changes a variable is
seen at once. Each knob is a property: a value that is not a number is bad input, told in one
sentence when a command needs it (never while click parses the command line).
(The sandbox's CHRONOS_SANDBOX_URL is read by automation/sandbox/control.py, and the agent's own knobs,
CHRONOS_HEARTBEAT_SECONDS and the like, by instance/agent/main.py: they belong to those rooms.)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Mapping

from instance.protocol.liveness import DEFAULT_STALE_AFTER

from .errors import BadInput


@dataclass(frozen=True)
class Settings:
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def env(self) -> str:
        """CHRONOS_ENV (dev): the environment when --env is not given."""
        return self.environ.get("CHRONOS_ENV") or "dev"

    @property
    def local(self) -> bool:
        """CHRONOS_LOCAL=1: --local."""
        return self.environ.get("CHRONOS_LOCAL", "") not in ("", "0")

    @property
    def home(self) -> Path:
        """CHRONOS_HOME (~/.chronos-train): the sandbox, local work dirs, caches."""
        return Path(self.environ.get("CHRONOS_HOME") or Path.home() / ".chronos-train")

    @property
    def bucket(self) -> str | None:
        """CHRONOS_BUCKET: the bucket, without looking it up (STS)."""
        return self.environ.get("CHRONOS_BUCKET") or None

    @property
    def debug(self) -> bool:
        """CHRONOS_DEBUG=1: a traceback instead of one sentence."""
        return bool(self.environ.get("CHRONOS_DEBUG"))

    @property
    def kill_grace(self) -> float:
        """CHRONOS_KILL_GRACE_SECONDS (120): kill --wait waits this long before force-terminating."""
        return self._seconds("CHRONOS_KILL_GRACE_SECONDS", 120.0)

    @property
    def launch_grace(self) -> timedelta:
        """CHRONOS_LAUNCH_GRACE_SECONDS (120): verify-cleanup leaves younger instances alone."""
        return timedelta(seconds=self._seconds("CHRONOS_LAUNCH_GRACE_SECONDS", 120.0))

    @property
    def stale_after(self) -> timedelta:
        """CHRONOS_STALE_SECONDS (300): a lock S3 says nobody wrote for this long, with no live
        instance, is lost."""
        return timedelta(seconds=self._seconds("CHRONOS_STALE_SECONDS", DEFAULT_STALE_AFTER.total_seconds()))

    @property
    def spot_notice(self) -> timedelta:
        """CHRONOS_SPOT_NOTICE_SECONDS (120): --local: how long after `sandbox interrupt` the
        machine is taken (EC2 gives two minutes)."""
        return timedelta(seconds=self._seconds("CHRONOS_SPOT_NOTICE_SECONDS", 120.0))

    @property
    def sandbox_boot(self) -> timedelta:
        """CHRONOS_SANDBOX_BOOT_SECONDS (0): --local: how long a new machine of a group takes to
        boot (EC2 takes a minute or more), so one can watch a run wait for its replacement."""
        return timedelta(seconds=self._seconds("CHRONOS_SANDBOX_BOOT_SECONDS", 0.0))

    @property
    def region(self) -> str | None:
        """AWS_REGION, else AWS_DEFAULT_REGION (else the AWS config's region, looked up by boto3)."""
        return self.environ.get("AWS_REGION") or self.environ.get("AWS_DEFAULT_REGION") or None

    @property
    def endpoint_url(self) -> str | None:
        """AWS_ENDPOINT_URL: an AWS stand-in (tests, LocalStack)."""
        return self.environ.get("AWS_ENDPOINT_URL") or None

    @property
    def profile(self) -> str:
        """AWS_PROFILE (default): names the cached bucket lookup."""
        return self.environ.get("AWS_PROFILE") or "default"

    def _seconds(self, name: str, default: float) -> float:
        raw = self.environ.get(name)
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value < 0:
            raise BadInput(f"{name} must be a number of seconds (0 or more), not {raw!r}")
        return value


def settings() -> Settings:
    return Settings()


def home() -> Path:
    """The CLI's home folder (CHRONOS_HOME): the sandbox's record, local work dirs, caches."""
    return settings().home
