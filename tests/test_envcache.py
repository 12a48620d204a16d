"""The cached Python environment: key format, miss → build + upload, hit → restore, against moto,
through boto3 and through the AWS CLI (the fallback for a python without boto3). Nothing comes
from the network: the requirements are empty or one tiny wheel built here."""
from __future__ import annotations

import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from instance.boot.envcache import AwsCliTransport, Boto3Transport, env_key, restore_or_build
from tests.agent_fixtures import install_fake_aws
from tests.conftest import REGION


def tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel with one module, written by hand (no build backend, no network)."""
    wheel = folder / "tinypkg-0.1-py3-none-any.whl"
    files = {
        "tinypkg/__init__.py": "ANSWER = 42\n",
        "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + "tinypkg-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
        zf.writestr("tinypkg-0.1.dist-info/RECORD", record)
    return wheel


def test_key_names_python_and_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("torch==2.13.0\n")
    key = env_key(req)
    assert re.fullmatch(rf"cached-datasets/python-env/chronos-venv-{re.escape(platform.python_version())}-[0-9a-f]{{16}}\.tar\.gz", key)
    assert env_key(req, "3.12.1") != key
    req.write_text("torch==2.13.1\n")
    assert env_key(req) != key


def test_miss_builds_and_uploads_then_hit_restores(s3, bucket, aws, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    req = tmp_path / "requirements.txt"
    req.write_text(f"# one local wheel\n{tiny_wheel(tmp_path)}\n")
    venv = tmp_path / "venv"
    transport = Boto3Transport(bucket, REGION, aws.endpoint_url)

    built = restore_or_build(transport, req, venv)
    assert built.source == "built" and built.uploaded
    assert s3.head_object(Bucket=bucket, Key=built.key)["ContentLength"] > 0
    check = [str(venv / "bin" / "python"), "-c", "import tinypkg; print(tinypkg.ANSWER)"]
    assert subprocess.run(check, capture_output=True, text=True, check=True).stdout.strip() == "42"

    assert restore_or_build(transport, req, venv).source == "present"

    subprocess.run(["rm", "-rf", str(venv)], check=True)
    restored = restore_or_build(transport, req, venv)
    assert restored.source == "cache" and restored.key == built.key
    assert subprocess.run(check, capture_output=True, text=True, check=True).stdout.strip() == "42"
    assert not venv.with_name("venv.partial").exists()


def test_aws_cli_transport_round_trip(s3, bucket, aws, tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("")
    venv = tmp_path / "venv"
    transport = AwsCliTransport(bucket, REGION, aws.endpoint_url, aws=str(install_fake_aws(tmp_path / "bin")))
    assert restore_or_build(transport, req, venv).source == "built"
    assert (venv / "bin" / "python").exists() and not (venv / "bin" / "pip").exists()
    subprocess.run(["rm", "-rf", str(venv)], check=True)
    result = restore_or_build(transport, req, venv)
    assert result.source == "cache"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(venv)


def test_cli_entry_prints_the_key(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("pandas==3.1.1\n")
    out = subprocess.run([sys.executable, "-m", "instance.boot.envcache", "key", "--requirements", str(req)],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == env_key(req)


@pytest.mark.parametrize("missing", ["boto3"])
def test_transport_falls_back_to_the_aws_cli(missing, monkeypatch, tmp_path):
    import builtins

    from instance.boot import envcache

    real_import = builtins.__import__

    def no_boto3(name, *args, **kwargs):
        if name == missing:
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_boto3)
    monkeypatch.setattr(envcache.shutil, "which", lambda name: "/usr/bin/aws")
    assert isinstance(envcache.transport_for("b", REGION, None), AwsCliTransport)
