"""The 10 M-row validation, this checkout against another one (before/after a change), paired.

    git worktree add /tmp/before <commit>      # or any export of the older tree
    .venv/bin/python bench/bench_validate_pair.py /tmp/before [--repeat 3] [--json]

The file is bench_data.py's (20,000 series x 500 points, item_id / timestamp / target); a second
one adds three covariates (`promo` int8 and `price` float, named known covariates, and a string
`store`), validated by this checkout alone (the older one may refuse a string column). Each
measurement is a fresh process started by a tiny launcher (a child's peak RSS as the kernel counts
it includes what its parent held when it forked): the validator alone (`validate_dataset` after
the imports, its seconds and the process's peak RSS), then the whole `data validate FILE --json`
(wall and peak RSS). Old and new alternate (old, new, new, old, ...) so drift on a shared machine
hits both alike; both run with this checkout's interpreter.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
LAUNCHER = ("import os, subprocess, sys, json; p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True); "
            "out = p.stdout.read(); _, status, usage = os.wait4(p.pid, 0); "
            "print(json.dumps([os.waitstatus_to_exitcode(status), usage.ru_maxrss, out[-300:]]))")
VALIDATOR = ("import time; from pathlib import Path; import numpy, pandas, pyarrow.parquet; "
             "from instance.model.dataset import validate_dataset; {setup}"
             "t = time.perf_counter(); r = validate_dataset([Path({path!r})], 512, 24{extra}); "
             "assert r.ok, r.problems[:3]; print(round(time.perf_counter() - t, 2))")
COMMAND = ("import sys, runpy; sys.argv = ['chronos-train', 'data', 'validate', {path!r}, '--json']; "
           "runpy.run_module('automation.cli', run_name='__main__')")
KNOWN = ("from instance.protocol.columns import ColumnNames; ", ", 3, ColumnNames(known_covariates=('promo', 'price'))")


def series_file(path: Path, covariates: bool = False) -> Path:
    """bench_data.py's file; with `covariates`, the same with promo, price and store added."""
    from bench.bench_data import big_series_file

    plain = big_series_file(path.with_name("series.parquet"))
    if not covariates or path.exists():
        return plain if not covariates else path
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(plain)
    rng = np.random.default_rng(0)
    n, stores = table.num_rows, np.array([f"store-{i % 40}" for i in range(20_000)])
    table = table.append_column("promo", pa.array((rng.random(n) < 0.15).astype("int8")))
    table = table.append_column("price", pa.array(rng.uniform(1, 10, n)))
    table = table.append_column("store", pa.array(np.repeat(stores, n // len(stores))))
    pq.write_table(table, path)
    return path


def fresh(tree: Path, code: str) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, the end of its output) of one fresh process in `tree`."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", code], cwd=tree, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    wall = time.perf_counter() - started
    code_, rss, out = json.loads(done.stdout.strip().splitlines()[-1])
    if code_ != 0:
        raise RuntimeError(f"{tree}: exit {code_}: {done.stderr[-2000:]}")
    return wall, rss / 1024, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", type=Path, help="the other checkout (the older tree)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO}
    work = Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix="chronos-bench-validate-"))
    plain, with_covariates = series_file(work / "series.parquet"), series_file(work / "series_cov.parquet", True)
    out: dict = {"load_before": os.getloadavg()[0], "validator_s": {"before": [], "after": []},
                 "validator_peak_rss_mb": {"before": [], "after": []}, "command_s": {"before": [], "after": []},
                 "command_peak_rss_mb": {"before": [], "after": []}, "with_covariates": []}
    for r in range(args.repeat):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            _, rss, said = fresh(trees[name], VALIDATOR.format(setup="", path=str(plain), extra=""))
            out["validator_s"][name].append(float(said.strip()))
            out["validator_peak_rss_mb"][name].append(round(rss))
            wall, rss, _ = fresh(trees[name], COMMAND.format(path=str(plain)))
            out["command_s"][name].append(round(wall, 2))
            out["command_peak_rss_mb"][name].append(round(rss))
            print(f"{r} {name}: validator {out['validator_s'][name][-1]} s, {out['validator_peak_rss_mb'][name][-1]} MB; "
                  f"command {out['command_s'][name][-1]} s, {out['command_peak_rss_mb'][name][-1]} MB",
                  file=sys.stderr, flush=True)
        _, rss, said = fresh(REPO, VALIDATOR.format(setup=KNOWN[0], path=str(with_covariates), extra=KNOWN[1]))
        out["with_covariates"].append({"validator_s": float(said.strip()), "peak_rss_mb": round(rss)})
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
