"""The code bundle a run ships to its machine: the `instance` package, nothing else."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import instance

SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def build_bundle() -> bytes:
    root = Path(instance.__file__).parent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root.parent)
            if SKIP_DIRS & set(rel.parts) or path.suffix in SKIP_SUFFIXES or path.is_dir():
                continue
            info = tar.gettarinfo(str(path), arcname=str(rel))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


def unpack_bundle(data: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest
