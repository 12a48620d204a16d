"""Environment restore from the cached tarball against building it, through instance.boot.envcache.

Offline and reproducible: the packages are the agent's real data stack (numpy, pandas, pyarrow,
pydantic, PyYAML, boto3 and what they need) repacked as wheels from this machine's venv, and pip
installs them with --no-index. So "build" here is venv creation + pip install from local wheels;
on EC2 a build also downloads every wheel from PyPI (torch with CUDA alone is ~2.5 GB), which
only widens the gap. The cache side is the real path: S3 (moto server) download + unpack.

    .venv/bin/python bench/bench_envcache.py [--repeat 3] [--json]
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from automation import motoserver  # noqa: E402
from instance.boot.envcache import Boto3Transport, build, env_key, pack, restore_or_build  # noqa: E402

STACK = [
    "numpy", "pandas", "pyarrow", "pydantic", "pydantic-core", "PyYAML", "boto3", "botocore", "s3transfer",
    "jmespath", "urllib3", "python-dateutil", "six", "typing-extensions", "annotated-types", "typing-inspection",
]


def repack(dist_name: str, out: Path) -> Path:
    """An installed distribution back into a wheel: its files under site-packages, fresh RECORD."""
    dist = importlib.metadata.distribution(dist_name)
    name = dist.metadata["Name"].replace("-", "_")
    info = f"{name}-{dist.version}.dist-info"
    wheel = out / f"{name}-{dist.version}-py3-none-any.whl"
    skip = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"}
    entries = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for f in dist.files or []:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue
            if f.parts[0].endswith(".dist-info"):
                if f.name in skip:
                    continue
                arc = "/".join((info, *f.parts[1:]))
            else:
                arc = f.as_posix()
            src = Path(dist.locate_file(f))
            if src.is_file():
                zf.write(src, arc)
                entries.append(arc)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "".join(f"{e},,\n" for e in entries + [f"{info}/WHEEL", f"{info}/RECORD"]))
    return wheel


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    for name, value in motoserver.SANDBOX_CREDENTIALS.items():
        os.environ[name] = value
    os.environ.update(PIP_NO_INDEX="1", PIP_NO_DEPS="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_QUIET="1")
    port = motoserver.free_port()
    server = motoserver.start(port)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        transport = Boto3Transport("bench", "us-east-1", endpoint)
        transport.s3.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory(prefix="bench-envcache-") as tmp:
            tmp = Path(tmp)
            wheels = tmp / "wheels"
            wheels.mkdir()
            req = tmp / "requirements.txt"
            req.write_text("".join(f"{repack(d, wheels)}\n" for d in STACK))
            venv = tmp / "venv"
            key = env_key(req)

            builds, packs = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                build(req, venv)
                builds.append(time.perf_counter() - t0)
            tarball = tmp / "env.tar.gz"
            t0 = time.perf_counter()
            pack(venv, tarball)
            transport.upload(tarball, key)
            packs.append(time.perf_counter() - t0)
            venv_bytes, tar_bytes = du(venv), tarball.stat().st_size

            restores = []
            for _ in range(args.repeat):
                shutil.rmtree(venv)
                result = restore_or_build(transport, req, venv)
                assert result.source == "cache", result
                restores.append(result.seconds)
            check = os.system(f"{venv}/bin/python -c 'import pandas, pyarrow, boto3, pydantic' 2>/dev/null")
            assert check == 0, "the restored environment does not import its packages"
    finally:
        server.terminate()

    result = {
        "packages": len(STACK),
        "venv_mb": round(venv_bytes / 1e6, 1),
        "tarball_mb": round(tar_bytes / 1e6, 1),
        "build_seconds": [round(x, 2) for x in builds],
        "pack_and_upload_seconds": [round(x, 2) for x in packs],
        "restore_seconds": [round(x, 2) for x in restores],
        "speedup": round(statistics.median(builds) / statistics.median(restores), 2),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['packages']} packages, venv {result['venv_mb']} MB, tarball {result['tarball_mb']} MB")
        print(f"build (venv + offline pip): median {statistics.median(builds):.1f} s; "
              f"restore from cache: median {statistics.median(restores):.1f} s; speedup {result['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
