"""The agent's Python environment, cached in S3 so that most runs skip a multi-GB pip install.

    python3 -m instance.boot.envcache restore-or-build --bucket B --requirements instance/requirements.txt \
        --venv /opt/chronos/venv [--region R] [--endpoint-url URL]
    python3 -m instance.boot.envcache key --requirements instance/requirements.txt

Key: cached-datasets/python-env/chronos-venv-<python X.Y.Z>-<sha256[:16] of requirements>.tar.gz.
A hit downloads and unpacks the tarball; a miss builds the venv with pip and uploads it for the
next run. This runs with the machine's own python3 before any venv exists, so it needs only the
standard library plus a way to reach S3: boto3 when that python has it, else the AWS CLI that the
Deep Learning AMIs ship. The venv is used as `<venv>/bin/python -m ...`, which works wherever
the tarball is unpacked.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..protocol.layout import python_env_key

log = logging.getLogger("instance.boot.envcache")
MARKER = ".chronos-env.json"


def requirements_hash(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]


def env_key(requirements: Path, python_version: str | None = None) -> str:
    return python_env_key(python_version or platform.python_version(), requirements_hash(requirements))


def requirement_lines(requirements: Path) -> list[str]:
    lines = []
    for raw in requirements.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


# -- transports -----------------------------------------------------------------------------------
class Boto3Transport:
    def __init__(self, bucket: str, region: str | None, endpoint_url: str | None):
        from ..protocol.aws import AwsTarget, client

        self.bucket = bucket
        self.s3 = client("s3", AwsTarget.from_env(region, endpoint_url))

    def exists(self, key: str) -> bool:
        from ..protocol.aws import is_not_found

        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:
            if is_not_found(exc):
                return False
            raise

    def download(self, key: str, path: Path) -> None:
        self.s3.download_file(self.bucket, key, str(path))

    def upload(self, path: Path, key: str) -> None:
        self.s3.upload_file(str(path), self.bucket, key)


class AwsCliTransport:
    """The same three operations through the `aws` command (retries are the CLI's own)."""

    def __init__(self, bucket: str, region: str | None, endpoint_url: str | None, aws: str = "aws"):
        self.bucket = bucket
        self.base = [aws]
        if region:
            self.base += ["--region", region]
        if endpoint_url:
            self.base += ["--endpoint-url", endpoint_url]

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.base, *args], capture_output=True, text=True, check=check)

    def exists(self, key: str) -> bool:
        proc = self._run("s3api", "head-object", "--bucket", self.bucket, "--key", key, check=False)
        if proc.returncode == 0:
            return True
        if "404" in proc.stderr or "Not Found" in proc.stderr:
            return False
        raise RuntimeError(f"aws s3api head-object failed: {proc.stderr.strip()}")

    def download(self, key: str, path: Path) -> None:
        self._run("s3", "cp", "--only-show-errors", f"s3://{self.bucket}/{key}", str(path))

    def upload(self, path: Path, key: str) -> None:
        self._run("s3", "cp", "--only-show-errors", str(path), f"s3://{self.bucket}/{key}")


def transport_for(bucket: str, region: str | None, endpoint_url: str | None):
    try:
        import boto3  # noqa: F401
    except ImportError:
        if shutil.which("aws") is None:
            raise RuntimeError("neither boto3 nor the aws CLI is available to reach S3") from None
        return AwsCliTransport(bucket, region, endpoint_url)
    return Boto3Transport(bucket, region, endpoint_url)


# -- tar ----------------------------------------------------------------------------------------
def _gzip_program(decompress: bool = False) -> str:
    # pigz compresses on every core; a CUDA venv is several GB, so it matters.
    if shutil.which("pigz"):
        return "pigz -d" if decompress else "pigz -1"
    return "gzip -d" if decompress else "gzip -1"


def pack(venv: Path, tarball: Path) -> None:
    subprocess.run(["tar", "-C", str(venv), "-I", _gzip_program(), "-cf", str(tarball), "."], check=True)


def unpack(tarball: Path, venv: Path) -> None:
    """Into a sibling folder first, renamed at the end: a crash never leaves half a venv."""
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(partial), "-I", _gzip_program(True), "-xf", str(tarball)], check=True)
    shutil.rmtree(venv, ignore_errors=True)
    os.replace(partial, venv)


# -- build ----------------------------------------------------------------------------------------
def build(requirements: Path, venv: Path, python: str = sys.executable) -> None:
    """A fresh venv with the pinned requirements. Without any requirement, no pip is needed."""
    shutil.rmtree(venv, ignore_errors=True)
    wanted = requirement_lines(requirements)
    cmd = [python, "-m", "venv", str(venv)]
    if not wanted:
        cmd.insert(3, "--without-pip")
    subprocess.run(cmd, check=True)
    if wanted:
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check", "-r", str(requirements)]
        try:
            subprocess.run(pip, check=True)
        except subprocess.CalledProcessError:
            shutil.rmtree(venv, ignore_errors=True)
            raise


@dataclass
class EnvResult:
    key: str
    source: str  # "present" | "cache" | "built"
    seconds: float
    uploaded: bool = False


def restore_or_build(transport, requirements: Path, venv: Path, python_version: str | None = None) -> EnvResult:
    key = env_key(requirements, python_version)
    started = time.monotonic()
    if _marker_key(venv) == key:
        return EnvResult(key, "present", time.monotonic() - started)
    with tempfile.TemporaryDirectory(prefix="chronos-env-", dir=venv.parent if venv.parent.exists() else None) as tmp:
        tarball = Path(tmp) / "env.tar.gz"
        if transport.exists(key):
            log.info("environment cache hit: %s", key)
            transport.download(key, tarball)
            unpack(tarball, venv)
            _write_marker(venv, key)
            return EnvResult(key, "cache", time.monotonic() - started)
        log.info("environment cache miss: building %s", key)
        build(requirements, venv)
        _write_marker(venv, key)
        pack(venv, tarball)
        transport.upload(tarball, key)
        return EnvResult(key, "built", time.monotonic() - started, uploaded=True)


def _marker_key(venv: Path) -> str | None:
    try:
        return json.loads((venv / MARKER).read_text()).get("key")
    except (FileNotFoundError, ValueError):
        return None


def _write_marker(venv: Path, key: str) -> None:
    (venv / MARKER).write_text(json.dumps({"key": key}) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m instance.boot.envcache")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("key", help="print the cache key of a requirements file for this python")
    k.add_argument("--requirements", type=Path, required=True)
    r = sub.add_parser("restore-or-build", help="unpack the cached venv, or build and upload it")
    r.add_argument("--requirements", type=Path, required=True)
    r.add_argument("--venv", type=Path, required=True)
    r.add_argument("--bucket", required=True)
    r.add_argument("--region")
    r.add_argument("--endpoint-url")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s envcache: %(message)s")
    if args.command == "key":
        print(env_key(args.requirements))
        return 0
    transport = transport_for(args.bucket, args.region, args.endpoint_url)
    result = restore_or_build(transport, args.requirements, args.venv)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
