"""Training input: `training_data` (load, hold-out split, Chronos's fit inputs) of the code before
and after a change, paired, each run in a fresh process.

    .venv/bin/python bench/bench_training_input.py [--old REF] [--repeat 3] [--json]

The file is bench_data's 20,000 hourly series x 500 points (10 M rows: item_id, timestamp, target),
made once. `--old` is a git ref whose `instance/` package is extracted to a temporary folder (git
archive) and put first on the child's path; the new code is this checkout. Each repeat runs old
then new (the order alternates every repeat, so drift on a shared machine hits both), then a
process that only imports what the others import (numpy, pandas, pyarrow, torch, chronos, the
module): the share of the peak that is not the data. Per run: the process's peak RSS (the kernel's
ru_maxrss, through a tiny launcher so that the bench's own memory is not counted), the seconds
`training_data` took, and a digest of every context tensor Chronos is given (old and new must be equal).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

# The code before Chronos's inputs were built from Arrow (issue 28).
BEFORE = "1cef4e2"
PREDICTION_LENGTH = 24


def child(kind: str, tree: str, path: str, out: str) -> None:
    sys.path.insert(0, tree)
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import torch  # noqa: F401
    from chronos.chronos2 import preprocess  # noqa: F401

    from instance.model.evaluation import training_data

    imports_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if kind == "imports":
        Path(out).write_text(json.dumps({"imports_mb": round(imports_mb)}))
        return
    started = time.perf_counter()
    backtest, inputs = training_data([Path(path)], PREDICTION_LENGTH)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    digest = hashlib.sha256()
    for x in inputs:
        digest.update(x["context"].numpy().tobytes())
        digest.update(x["future_covariates"].numpy().tobytes())
    Path(out).write_text(json.dumps({
        "seconds": round(seconds, 2), "peak_mb": round(peak_mb), "imports_mb": round(imports_mb),
        "series": len(inputs), "rows": int(len(backtest.frame)), "digest": digest.hexdigest()[:16],
    }))


def extract(ref: str, into: Path) -> Path:
    """The `instance/` package at `ref`, as a folder to import from."""
    archive = subprocess.run(["git", "archive", ref, "instance"], cwd=REPO, check=True, capture_output=True).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(args, data: Path, work: Path) -> tuple[dict, dict]:
    """Each kind in its own process, alternated; old code from `args.old` unpacked under `work`."""
    from bench_data import wait_rss

    trees = {"old": str(extract(args.old, work / "old")), "new": str(REPO)}
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    env.pop("PYTHONPATH", None)
    runs: dict[str, list[dict]] = {"old": [], "new": [], "imports": []}
    result: dict = {"old": args.old, "cpus": os.cpu_count(), "load_before": round(os.getloadavg()[0], 1)}
    for i in range(args.repeat):
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        for kind in [*order, "imports"]:
            out = work / f"{kind}-{i}.json"
            tree = trees["new" if kind == "imports" else kind]
            wall, peak = wait_rss([sys.executable, __file__, "--child", kind, tree, str(data), str(out)], env)
            row = {**json.loads(out.read_text()), "process_s": round(wall, 1), "process_peak_mb": round(peak),
                   "load": round(os.getloadavg()[0], 1)}
            runs[kind].append(row)
            print(f"{kind:7s} {row}", flush=True)
    return result, runs


def main() -> int:
    from bench_data import big_series_file

    p = argparse.ArgumentParser()
    p.add_argument("--old", default=BEFORE, help="git ref of the code to compare with (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "chronos-bench-series" / "series.parquet"),
                   help="where the 20,000 x 500 file is made once and kept")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=4, metavar=("KIND", "TREE", "PATH", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child)
        return 0
    data = big_series_file(Path(args.data))
    work = Path(tempfile.mkdtemp(prefix="chronos-bench-input-"))
    try:
        result, runs = measure(args, data, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the old tree and each child's figures
    for kind in ("old", "new"):
        rows = runs[kind]
        result[kind] = {"seconds": [r["seconds"] for r in rows], "peak_mb": [r["process_peak_mb"] for r in rows],
                        "median_s": statistics.median(r["seconds"] for r in rows),
                        "median_peak_mb": statistics.median(r["process_peak_mb"] for r in rows),
                        "digests": sorted({r["digest"] for r in rows})}
    result["imports_peak_mb"] = [r["process_peak_mb"] for r in runs["imports"]]
    result["same_inputs"] = result["old"]["digests"] == result["new"]["digests"] and len(result["new"]["digests"]) == 1
    result["load_after"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result, indent=2) if args.json else
          f"old {result['old']['median_s']} s, {result['old']['median_peak_mb']} MB; "
          f"new {result['new']['median_s']} s, {result['new']['median_peak_mb']} MB; "
          f"imports alone {statistics.median(result['imports_peak_mb'])} MB; same inputs: {result['same_inputs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
