"""The EC2 user data: rendering (pure, checked, valid bash) and one real execution of the path
where the agent cannot start: the log still reaches S3 and the machine powers off."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile

import pytest

from instance.boot.bootstrap import render_bootstrap
from instance.protocol.layout import Layout
from tests.agent_fixtures import ROOT, install_fake_aws, keys_under
from tests.conftest import ENV, REGION

RID = "run-20261128-203700-1a2b"
GOOD = dict(env="dev", bucket="chronos-training-dev-123456789012-us-east-1", run_id=RID, region="us-east-1", max_runtime_minutes=240)


def _commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_render_fills_every_value_and_is_valid_bash(tmp_path):
    script = render_bootstrap(**GOOD)
    assert "@@" not in script and script.startswith("#!/bin/bash")
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    for value in (GOOD["bucket"], RID, "us-east-1"):
        assert value in script
    assert "RUN_ENV=dev " in script


def test_dead_man_switch_comes_first():
    cmds = _commands(render_bootstrap(**{**GOOD, "max_runtime_minutes": 45}))
    assert cmds[0] == "set -uo pipefail"
    assert cmds[1].startswith("shutdown -h +45")


def test_script_fetches_bundle_env_then_starts_the_agent():
    script = render_bootstrap(**GOOD)
    order = [script.index(s) for s in ("bundle.tar.gz", "instance.boot.envcache restore-or-build", "-m instance.agent")]
    assert order == sorted(order)
    assert len(script) < 4096  # short: the logic is in Python


@pytest.mark.parametrize(
    "bad",
    [
        {"env": "qa"},
        {"run_id": "run-1; rm -rf /"},
        {"bucket": "Bad_Bucket;reboot"},
        {"region": "us-east-1$(id)"},
        {"max_runtime_minutes": 0},
        {"max_runtime_minutes": True},
        {"max_runtime_minutes": "60"},
    ],
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        render_bootstrap(**{**GOOD, **bad})


def _bundle(requirements: str) -> bytes:
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


def test_agent_that_cannot_start_uploads_its_log_and_powers_off(s3, bucket, aws, tmp_path):
    # Empty requirements: the venv builds offline in seconds but lacks boto3, so the agent dies on
    # import, which is exactly the case the bootstrap must survive.
    layout = Layout(ENV)
    s3.put_object(Bucket=bucket, Key=layout.bundle(RID), Body=_bundle(""))
    bin_dir = tmp_path / "bin"
    install_fake_aws(bin_dir)
    calls = tmp_path / "shutdown.calls"
    (bin_dir / "shutdown").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "shutdown").chmod(0o755)
    # The machine's own python, outside any venv, as on a fresh AMI.
    (bin_dir / "python3.11").symlink_to(os.path.realpath(sys.executable))
    script = tmp_path / "user-data.sh"
    script.write_text(render_bootstrap(env=ENV, bucket=bucket, run_id=RID, region=REGION, max_runtime_minutes=45))
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CHRONOS_ROOT": str(tmp_path / "root"),
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert calls.read_text().splitlines() == ["-h +45", "-h now"]
    log = s3.get_object(Bucket=bucket, Key=layout.agent_log(RID))["Body"].read().decode()
    assert "bootstrap: the agent exited with 1" in log and "ModuleNotFoundError" in log
    assert len(keys_under(s3, bucket, "cached-datasets/python-env/chronos-venv-")) == 1
    assert (tmp_path / "root" / "venv" / "bin" / "python").exists()
