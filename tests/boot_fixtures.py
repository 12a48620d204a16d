"""A machine as the bootstrap meets it on EC2, built in a scratch folder: a PATH with no Python
and no apt-get, an instance metadata service, uv, and the two things uv would fetch over HTTPS
(a standalone CPython, the requirements' wheels) served from local files instead.

What stands in, and why:
- the standalone CPython: python-build-standalone cannot be downloaded here, so uv installs a
  stand-in archive of the same layout through its own custom-downloads hook
  (UV_PYTHON_DOWNLOADS_JSON_URL), whose interpreter runs this machine's CPython;
- the requirements: torch and chronos cannot be built offline in a test's time, so the bundle's
  requirements file names one local wheel whose .pth file lends the venv this checkout's
  installed packages (UV_FIND_LINKS + UV_OFFLINE, uv's own settings);
- `aws`: the DLAMI ships the AWS CLI; tests/agent_fixtures.py has the stand-in;
- IMDSv2: a local server at AWS_EC2_METADATA_SERVICE_ENDPOINT, as botocore reads it;
- `shutdown`: recorded; `shutdown -h now` powers the machine off as EC2 would on the worse reading
  (automation/sandbox/poweroff.py): a machine not already terminated through the API is stopped;
- `systemd-run`: recorded, not run; a test fires the dead-man switch's timer itself (timer_command).
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import site
import sys
import sysconfig
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from instance.boot.bootstrap import PYTHON_BUILD
from tests.agent_fixtures import ROOT, install_fake_aws

# What bootstrap.sh and environment.sh call, and nothing else: no python, no apt-get.
TOOLS = ("bash", "sh", "env", "date", "mkdir", "tee", "uname", "cut", "curl", "sha256sum", "tar", "gzip",
         "sleep", "kill", "cat", "rm", "mv", "ls", "head", "du", "dirname", "basename", "chmod", "grep", "tr", "cp")
# zstd where this machine has it, as on an AMI that ships it; environment.sh packs the Python
# environment with it then, and with gzip on a machine without it (scratch_bin's `without`).
OPTIONAL_TOOLS = ("zstd",)
SITE_WHEEL = "chronos_test_site-1.0-py3-none-any.whl"
TIMER_CALLS = "systemd-run.calls"


def scratch_bin(bin_dir: Path, shutdown_calls: Path, without: tuple[str, ...] = ()) -> str:
    """A PATH of symlinked tools (the optional ones where this machine has them, none named in
    `without`), the fake AWS CLI, a `shutdown` that records its call and plays the power-off, a
    recording `systemd-run` (its arguments in systemd-run.calls beside the shutdown calls, one a
    line) and this checkout's uv."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS + tuple(t for t in OPTIONAL_TOOLS if shutil.which(t)):
        if tool not in without:
            (bin_dir / tool).symlink_to(shutil.which(tool))
    install_fake_aws(bin_dir)
    (bin_dir / "uv").symlink_to(Path(sys.executable).parent / "uv")
    power_off = "from tests.boot_fixtures import power_off_main; power_off_main()"
    (bin_dir / "shutdown").write_text(f'#!/bin/sh\necho "$@" >> {shutdown_calls}\n'
                                      f'[ "$2" = now ] && PYTHONPATH={ROOT} exec {sys.executable} -c "{power_off}"\n'
                                      'exit 0\n')
    (bin_dir / "shutdown").chmod(0o755)
    (bin_dir / "systemd-run").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shutdown_calls.parent / TIMER_CALLS}\n')
    (bin_dir / "systemd-run").chmod(0o755)
    path = str(bin_dir)
    assert not [p for p in ("python3", "python3.11", "python3.12", "apt-get") if shutil.which(p, path=path)]
    return path


def python_downloads(folder: Path) -> str:
    """A stand-in for uv's python-build-standalone download of PYTHON_BUILD: the same archive
    layout, whose interpreter runs this machine's CPython. Returns the custom-downloads URL."""
    version = PYTHON_BUILD.removeprefix("cpython-")
    major, minor, patch = (int(x) for x in version.split("."))
    real = Path(sys._base_executable).resolve()
    archive = folder / f"{PYTHON_BUILD}-stand-in.tar.gz"
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        add(f"python/bin/python{major}.{minor}", f'#!/bin/sh\nexec {real} "$@"\n'.encode(), 0o755)
        for alias in ("python3", "python"):
            link = tarfile.TarInfo(f"python/bin/{alias}")
            link.type, link.linkname = tarfile.SYMTYPE, f"python{major}.{minor}"
            tar.addfile(link)
        sysconfigdata = Path(sysconfig.get_path("stdlib")) / f"{sysconfig._get_sysconfigdata_name()}.py"
        add(f"python/lib/python{major}.{minor}/{sysconfigdata.name}", sysconfigdata.read_bytes())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    downloads = {f"{PYTHON_BUILD}-linux-x86_64-gnu": {
        "name": "cpython", "arch": {"family": "x86_64", "variant": None}, "os": "linux", "libc": "gnu",
        "major": major, "minor": minor, "patch": patch, "prerelease": "", "url": archive.as_uri(),
        "sha256": digest, "variant": None, "build": "20251120",
    }}
    (folder / "downloads.json").write_text(json.dumps(downloads))
    return (folder / "downloads.json").as_uri()


def site_wheel(folder: Path) -> Path:
    """A wheel whose .pth file puts this checkout's installed packages on the venv's path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "chronos_test_site.pth": (site.getsitepackages()[0] + "\n").encode(),
        "chronos_test_site-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: chronos-test-site\nVersion: 1.0\n",
        "chronos_test_site-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("chronos_test_site-1.0.dist-info/RECORD,,")
    files["chronos_test_site-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(folder / SITE_WHEEL, "w") as whl:
        for name, data in files.items():
            whl.writestr(name, data)
    return folder


def bundle(requirements: str) -> bytes:
    """What the launcher uploads: the instance/ package, here with the given requirements."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted((ROOT / "instance").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.name != "requirements.txt":
                tar.add(path, arcname=str(path.relative_to(ROOT)))
        data = requirements.encode()
        info = tarfile.TarInfo("instance/requirements.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Imds:
    """IMDSv2 for one instance: a session token first, then the instance id; no spot notice."""

    def __init__(self, instance_id: str):
        self.instance_id = instance_id
        self.token = "imds-token"
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                self._reply(200, imds.token) if ok else self._reply(400)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
                    return self._reply(401)
                if self.path == "/latest/meta-data/instance-id":
                    return self._reply(200, imds.instance_id)
                self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def boot_env(path: str, tmp: Path, endpoint_url: str, credentials: dict[str, str], imds: Imds, **extra: str) -> dict:
    """The environment cloud-init gives user data, plus the sandbox's endpoint, the role's
    credentials (IMDS's job on EC2) and the local sources of what uv would download."""
    env = {
        "PATH": path,
        "HOME": str(tmp / "home"),
        "CHRONOS_ROOT": str(tmp / "root"),
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.url,
        "UV_PYTHON_DOWNLOADS_JSON_URL": python_downloads(tmp / "python-downloads"),
        "UV_FIND_LINKS": str(site_wheel(tmp / "wheels")),
        "UV_OFFLINE": "1",
        "CHRONOS_BOOT_LOG_SECONDS": "1",
        "CHRONOS_HEARTBEAT_SECONDS": "1",
        "CHRONOS_LOG_UPLOAD_SECONDS": "1",
        "HF_HUB_OFFLINE": "1",
        "XDG_CACHE_HOME": str(tmp / "cache"),
        **credentials,
    }
    env.update(extra)
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    return {k: v for k, v in env.items() if v is not None}


def power_off_main() -> None:
    """`shutdown -h now` on the scratch machine: EC2 (the sandbox's EC2 service) powers off the
    instance IMDS names; it stops unless it was already terminated through the API."""
    import os
    import urllib.request

    from automation.sandbox.poweroff import power_off
    from automation.sandbox.strictmoto import EC2_SERVICE
    from instance.protocol.aws import AwsTarget, client

    imds = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"]
    token = urllib.request.urlopen(urllib.request.Request(
        f"{imds}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})).read()
    instance_id = urllib.request.urlopen(urllib.request.Request(
        f"{imds}/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token.decode()})).read().decode()
    target = AwsTarget(os.environ.get("AWS_REGION", "us-east-1"), os.environ["AWS_ENDPOINT_URL"], EC2_SERVICE.credentials)
    power_off(client("ec2", target), instance_id)


def timer_command(shutdown_calls: Path) -> list[str]:
    """The command the bootstrap's dead-man timer would run (what it gave systemd-run)."""
    args = (shutdown_calls.parent / TIMER_CALLS).read_text().splitlines()
    first = next(i for i, arg in enumerate(args) if not arg.startswith("-"))
    return args[first:]


def group_machine(aws, env: str, run_id: str) -> str:
    """The run's launch template and group of one (desired = max = 1), as the run stack declares
    them, and the machine it launched. Returns that machine's instance id."""
    from instance.protocol.aws import client
    from instance.protocol.ec2 import run_tags
    from instance.protocol.group import describe_group, group_name, mixed_instances_policy

    ec2, autoscaling = client("ec2", aws), client("autoscaling", aws)
    tags = run_tags(run_id, env, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    ec2.create_launch_template(LaunchTemplateName=run_id, LaunchTemplateData={
        "ImageId": "ami-12345678", "InstanceType": "g4dn.xlarge", "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}]})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName=group_name(run_id), MinSize=0, MaxSize=1, DesiredCapacity=1, VPCZoneIdentifier=subnet,
        MixedInstancesPolicy=mixed_instances_policy(run_id, ["g4dn.xlarge"], False),
        Tags=[{**t, "PropagateAtLaunch": True, "ResourceId": group_name(run_id), "ResourceType": "auto-scaling-group"}
              for t in tags])
    return describe_group(autoscaling, run_id)["Instances"][0]["InstanceId"]
