"""Run the real `chronos-train` as a subprocess against the test session's moto server."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli_env(moto_endpoint: str, home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOS_")}
    env.update(
        CHRONOS_HOME=str(home),
        CHRONOS_SANDBOX_URL=moto_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        COLUMNS="120",
    )
    env.update(extra)
    return env


def run_cli(env: dict, *args: str, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "automation.cli", *args],
        env=env, cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
    )


def start_cli(env: dict, *args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "automation.cli", *args],
        env=env, cwd=cwd or REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
