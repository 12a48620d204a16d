"""A 4-trial grid in one run against the same 4 trials as 4 separate runs, through the real CLI
(--local: the sandbox and the agent as local processes, scratch models on this CPU).

    .venv/bin/python bench/bench_sweep.py [--pairs 2] [--steps 100] [--size tiny] [--parallel 2] [--json]

The sweep: learning_rate x num_steps, 2 x 2 (num_steps: --steps and twice that), `--parallel`
trials at a time (one CPU process each: `instance.gpus: 2` of a 4-GPU type). The separate runs:
one launch --follow per trial, same settings, one after the other (the lock allows one run at a
time). Pairs alternate (sweep, separate, sweep, ...), so drift on a shared machine hits both.

Reported: each trial's backtest WQL and MASE in the sweep and in its separate run (same seeds:
the same numbers are expected), the wall time of each side (medians over the pairs), and what
each would cost on AWS: the measured wall time plus each machine's start-up (`--cold-start`,
2.75 min: docs/benchmarks.md, "launch to first step, cache hit"), priced as the sweep on one
g5.12xlarge (4 GPUs) against the separate runs on g5.xlarge (1 GPU each) or on g5.12xlarge.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cliruns import launch_follow as launch, record as read_record  # noqa: E402

from automation.sandbox import control as sandbox  # noqa: E402
from automation.sandbox.strictmoto import OPERATORS  # noqa: E402
from instance.protocol.aws import client  # noqa: E402
from instance.protocol.pricing import hourly  # noqa: E402
from tests.agent_fixtures import run_config, synthetic_frame, write_parquet  # noqa: E402

RATES = (1.0e-2, 1.0e-3)
FOUR_GPUS = {"type": "g5.12xlarge", "gpus": 2, "spot": False, "max_runtime_minutes": 60}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--cold-start", type=float, default=165.0, help="seconds a machine takes to its first step")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import yaml

    home = Path(tempfile.mkdtemp(prefix="chronos-bench-sweep-"))
    os.environ["CHRONOS_HOME"] = str(home)
    info = sandbox.start(("dev",))
    s3 = client("s3", info.target(OPERATORS["dev"]))  # reads records as a user would

    def record(run_id: str) -> dict:
        return read_record(s3, info.bucket("dev"), "dev", run_id)

    grid = [(lr, steps) for lr in RATES for steps in (a.steps, 2 * a.steps)]
    sweeps, separates = [], []
    try:
        data = write_parquet(home / "data" / "train.parquet", synthetic_frame(n_items=6, length=96))
        sweep_cfg = home / "sweep.yaml"
        doc = run_config(dataset=str(data), base=f"scratch:{a.size}") | {"instance": FOUR_GPUS}
        doc["sweep"] = {"grid": {"learning_rate": list(RATES), "num_steps": [a.steps, 2 * a.steps]},
                        "parallel": a.parallel}
        sweep_cfg.write_text(yaml.safe_dump(doc))
        alone = []
        for lr, steps in grid:
            path = home / f"alone-{lr}-{steps}.yaml"
            path.write_text(yaml.safe_dump(run_config(dataset=str(data), base=f"scratch:{a.size}", learning_rate=lr,
                                                      num_steps=steps)))
            alone.append(path)
        for _ in range(a.pairs):
            run_id, wall = launch(sweep_cfg, home)
            rec = record(run_id)
            sweeps.append({"wall": wall, "training": rec["phases"]["training"]["seconds"],
                           "trials": {(t["params"]["learning_rate"], t["params"]["num_steps"]): t
                                      for t in rec["sweep"]["trials"]}})
            runs = []
            for path, key in zip(alone, grid):
                run_id, wall = launch(path, home)
                rec = record(run_id)
                runs.append({"key": key, "wall": wall, "training": rec["phases"]["training"]["seconds"],
                             "metrics": rec["metrics"]})
            separates.append({"wall": sum(r["wall"] for r in runs), "runs": runs})
    finally:
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)

    same = []
    for key in grid:
        in_sweep = sweeps[-1]["trials"][key]["metrics"]["finetuned"]
        own = next(r for r in separates[-1]["runs"] if r["key"] == key)["metrics"]["finetuned"]
        same.append({"learning_rate": key[0], "num_steps": key[1], "sweep_wql": in_sweep["wql"], "run_wql": own["wql"],
                     "sweep_mase": in_sweep["mase"], "run_mase": own["mase"],
                     "equal": abs(in_sweep["wql"] - own["wql"]) < 1e-9 and abs(in_sweep["mase"] - own["mase"]) < 1e-9})
    sweep_wall = statistics.median(s["wall"] for s in sweeps)
    separate_wall = statistics.median(s["wall"] for s in separates)
    big, small = hourly("g5.12xlarge", False), hourly("g5.xlarge", False)
    cold = a.cold_start
    costs = {
        "sweep_g5.12xlarge_usd": round(big * (cold + sweep_wall) / 3600, 4),
        "separate_g5.xlarge_usd": round(small * (len(grid) * cold + separate_wall) / 3600, 4),
        "separate_g5.12xlarge_usd": round(big * (len(grid) * cold + separate_wall) / 3600, 4),
        "sweep_minutes_on_aws": round((cold + sweep_wall) / 60, 2),
        "separate_minutes_on_aws": round((len(grid) * cold + separate_wall) / 60, 2),
    }
    out = {"pairs": a.pairs, "steps": a.steps, "size": a.size, "parallel": a.parallel,
           "sweep_wall_s": [round(s["wall"], 1) for s in sweeps], "separate_wall_s": [round(s["wall"], 1) for s in separates],
           "sweep_wall_median_s": round(sweep_wall, 1), "separate_wall_median_s": round(separate_wall, 1),
           "trials": same, "costs": costs}
    if a.json:
        print(json.dumps(out, indent=2))
        return
    for row in same:
        print(f"lr {row['learning_rate']:g} steps {row['num_steps']}: WQL sweep {row['sweep_wql']:.6f} run "
              f"{row['run_wql']:.6f}  MASE sweep {row['sweep_mase']:.6f} run {row['run_mase']:.6f}  "
              f"{'same' if row['equal'] else 'DIFFERENT'}")
    print(f"wall: sweep {out['sweep_wall_s']} (median {sweep_wall:.1f} s), 4 separate runs {out['separate_wall_s']} "
          f"(median {separate_wall:.1f} s)")
    print(f"on AWS (+{cold:.0f} s start-up per machine): {costs}")


if __name__ == "__main__":
    main()
