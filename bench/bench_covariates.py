"""What covariates bring and what they cost, on a dataset where a known covariate drives the target.

    .venv/bin/python bench/bench_covariates.py [--only lift,throughput] [--steps 800] [--size tiny]
                                               [--repeat 3] [--json]

The data (`promo_data`, seed 0): 500 daily series of 182 days. Each series has a level (20 to 100),
a weekly pattern (weekends up to +30 %), Gaussian noise (5 % of the level) and promotion days,
drawn at random (each day with probability 0.15, so about one a week, at no fixed weekday):
on a promotion day the target is lifted by 60 to 120 % of the level (a factor of its own per
series). `promo` (0/1) is the known covariate: the run config names it in
`columns.known_covariates`, so training windows and backtest windows show the model its values
over the horizon.

- lift: the agent's training path in this process (validation, `training_data`, `train_model`,
  `evaluate`: what `python -m instance.agent` runs, without S3) on a scratch model, twice with
  the same training budget (steps, batch size, learning rate, seed): once with `promo` as a known
  covariate, once on the target alone (the column dropped from the data). Reported: the backtest
  WQL and MASE of each (3 windows of 14 days at the end of every series), their ratio (goal:
  with / without <= 0.7), and the covariate model's own score given the target alone; one pair
  of runs per training seed (`--seeds`).
- throughput: training samples a second with 0, 3 and 10 covariates (200 of the series above,
  noise columns instead of `promo`, half of them known covariates), same batch size (64):
  Chronos's batch counts rows (a target and each covariate are one row each), so samples/s counts
  rows, and series/s the targets among them. Measured between the first step and the last, in
  wall time and in the process's CPU time, on one thread. Runs alternate (0, 3, 10, 10, 3, 0, ...) so drift on a
  shared machine hits all alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SERIES, DAYS, HORIZON, WINDOWS = 500, 182, 14, 3


def promo_data(series: int = SERIES, days: int = DAYS, seed: int = 0, extra_covariates: int = 0):
    """The bench's dataset (see the module docstring); `extra_covariates` noise columns added,
    named cov0, cov1, ... (for the throughput part)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    t = np.arange(days)
    level = rng.uniform(20, 100, series)[:, None]
    weekly = 1 + 0.3 * np.isin((t + rng.integers(0, 7, series)[:, None]) % 7, (5, 6))
    promo = rng.random((series, days)) < 0.15
    lift = rng.uniform(0.6, 1.2, series)[:, None]
    target = level * (weekly + lift * promo) + rng.normal(0, 0.05, (series, days)) * level
    frame = pd.DataFrame({
        "item_id": np.repeat([f"s{i:03d}" for i in range(series)], days),
        "timestamp": np.tile(pd.date_range("2026-01-01", periods=days, freq="D").to_numpy(), series),
        "target": target.ravel(),
        "promo": promo.ravel().astype("int8"),
    })
    for k in range(extra_covariates):
        frame[f"cov{k}"] = rng.normal(0, 1, series * days).astype("float32")
    return frame


# One training budget for every run: a scratch model (random init: Hugging Face downloads fail
# here), a batch of 64 rows, learning rate 3e-3, 8 weeks of context.
BATCH, LEARNING_RATE, CONTEXT = 64, 3e-3, 56


def train_and_score(frame, columns: dict, steps: int, size: str, work: Path, batch_size: int = BATCH,
                    context_length: int = CONTEXT, seed: int = 0) -> dict:
    """The agent's path, in this process: validate, split, train, backtest."""
    from instance.model.basemodel import load_base
    from instance.model.dataset import validate_dataset
    from instance.model.evaluation import evaluate, training_data
    from instance.model.training import TrainingSettings, train_model
    from instance.protocol.runconfig import ColumnsSpec

    work.mkdir(parents=True, exist_ok=True)
    path = work / "data.parquet"
    frame.to_parquet(path, index=False)
    spec = ColumnsSpec(**columns).names()  # as a run config's `columns:` gives them
    checked = validate_dataset([path], context_length, HORIZON, WINDOWS, spec)
    assert checked.ok, checked.problems[:3]
    backtest, inputs = training_data([path], HORIZON, WINDOWS, spec)
    settings = TrainingSettings(prediction_length=HORIZON, context_length=context_length, num_steps=steps,
                                batch_size=batch_size, learning_rate=LEARNING_RATE, seed=seed, eval_windows=WINDOWS)
    base = load_base(f"scratch:{size}", context_length=context_length, seed=seed, on="cpu")
    started = time.perf_counter()
    outcome = train_model(base, inputs, settings, work / "train")
    trained = time.perf_counter() - started
    result = evaluate(outcome.pipeline, None, backtest, batch_size=256, context_length=context_length)
    return {"metrics": result.metrics, "train_seconds": round(trained, 1), "steps": outcome.steps_done,
            "samples_per_second": outcome.samples_per_second, "final_loss": outcome.final_loss,
            "covariates": backtest.roles.describe()}


def lift(args, work: Path) -> dict:
    frame = promo_data()
    runs = []
    for seed in (int(x) for x in args.seeds.split(",")):
        with_promo = train_and_score(frame, {"known_covariates": ["promo"]}, args.steps, args.size,
                                     work / f"with-{seed}", seed=seed)
        alone = train_and_score(frame.drop(columns="promo"), {}, args.steps, args.size, work / f"alone-{seed}",
                                seed=seed)
        w, a = with_promo["metrics"], alone["metrics"]
        runs.append({
            "seed": seed, "with_promo": with_promo, "target_alone": alone,
            "wql_ratio": round(w["finetuned"]["wql"] / a["finetuned"]["wql"], 3),
            "mase_ratio": round(w["finetuned"]["mase"] / a["finetuned"]["mase"], 3),
        })
        print(f"lift ({args.size}, {args.steps} steps, seed {seed}): WQL with promo {w['finetuned']['wql']:.4f}, "
              f"trained on the target alone {a['finetuned']['wql']:.4f} (ratio {runs[-1]['wql_ratio']}); the promo "
              f"model given the target alone {w['finetuned_no_covariates']['wql']:.4f}; seasonal naive "
              f"{w['seasonal_naive']['wql']:.4f}; MASE {w['finetuned']['mase']:.3f} vs {a['finetuned']['mase']:.3f}; "
              f"trained in {with_promo['train_seconds']} / {alone['train_seconds']} s", file=sys.stderr, flush=True)
    return {"steps": args.steps, "size": args.size, "runs": runs,
            "wql_ratio_median": statistics.median(r["wql_ratio"] for r in runs)}


def throughput(args, work: Path) -> dict:
    import torch

    # One thread: two intra-op threads on two shared cores stall each other when the machine is
    # busy, and with one, CPU time is a fair measure of a step's work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _throughput(args, work)
    finally:
        torch.set_num_threads(threads)


def _throughput(args, work: Path) -> dict:
    counts = (0, 3, 10)
    order = [c for r in range(args.repeat) for c in (counts if r % 2 == 0 else counts[::-1])]
    seen: dict[int, list[dict]] = {c: [] for c in counts}
    for i, n in enumerate(order):
        frame = promo_data(series=200, extra_covariates=n).drop(columns="promo")
        known = [f"cov{k}" for k in range(n // 2)]
        out = training_rate(frame, {"known_covariates": known}, args.throughput_steps, args.size, work / f"tp{i}")
        seen[n].append(out)
        print(f"throughput, {n} covariates: {out['samples_per_second']:.1f} samples/s, "
              f"{out['samples_per_cpu_second']:.1f} per CPU-second", file=sys.stderr, flush=True)
    rows = {}
    for n, runs in seen.items():
        wall = statistics.median(r["samples_per_second"] for r in runs)
        cpu = statistics.median(r["samples_per_cpu_second"] for r in runs)
        rows[n] = {"runs": runs, "samples_per_second": round(wall, 1), "samples_per_cpu_second": round(cpu, 1),
                   "series_per_second": round(wall / (n + 1), 1), "series_per_cpu_second": round(cpu / (n + 1), 1)}
    return rows


def training_rate(frame, columns: dict, steps: int, size: str, work: Path, batch_size: int = BATCH,
                  context_length: int = CONTEXT) -> dict:
    """Samples (Chronos rows) a second between the first step and the last, in wall time and in
    this process's CPU time (the CPU figure moves less with other work on a shared machine)."""
    from instance.model.basemodel import load_base
    from instance.model.evaluation import training_data
    from instance.model.training import TrainingHooks, TrainingSettings, train_model
    from instance.protocol.runconfig import ColumnsSpec

    work.mkdir(parents=True, exist_ok=True)
    path = work / "data.parquet"
    frame.to_parquet(path, index=False)
    _, inputs = training_data([path], HORIZON, WINDOWS, ColumnsSpec(**columns).names())
    settings = TrainingSettings(prediction_length=HORIZON, context_length=context_length, num_steps=steps,
                                batch_size=batch_size, learning_rate=LEARNING_RATE, eval_windows=WINDOWS)
    base = load_base(f"scratch:{size}", context_length=context_length, on="cpu")
    marks: list[tuple[int, float, float]] = []
    hooks = TrainingHooks(report=lambda p: marks.append((p.step, time.perf_counter(), time.process_time())),
                          report_every=0.0)
    train_model(base, inputs, settings, work / "train", hooks)
    (s0, w0, c0), (s1, w1, c1) = marks[0], marks[-2]  # the last mark is the end-of-training report
    samples = (s1 - s0) * batch_size
    return {"samples_per_second": round(samples / (w1 - w0), 1), "samples_per_cpu_second": round(samples / (c1 - c0), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="lift,throughput")
    p.add_argument("--steps", type=int, default=800, help="training steps of each lift run")
    p.add_argument("--throughput-steps", type=int, default=100)
    p.add_argument("--size", default="tiny", help="scratch model size (tiny, mini, small)")
    p.add_argument("--seeds", default="0,1,2", help="training seeds of the lift runs (the data is always seed 0)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))  # the lift figures were made with 2
    result: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="chronos-bench-covariates-") as tmp:
        for part in args.only.split(","):
            result[part] = {"lift": lift, "throughput": throughput}[part](args, Path(tmp) / part)
    result["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
