"""Forecast throughput: `instance.model.forecasting` (what every run's forecast phase and
`chronos-train forecast` run) against a bare `Chronos2Pipeline.predict_df` call on the same model,
data and batch size.

    .venv/bin/python bench/bench_forecast.py [--data quickstart|synthetic] [--series 1000] [--length 600]
                                             [--size mini] [--prediction-length 24] [--context 512]
                                             [--batch-size 256] [--repeat 3] [--json] [--whole]

quickstart: the 147 monthly series of examples/data/us_employment.parquet (prediction length 12,
context 96, as the demo). synthetic: `--series` daily series of `--length` points (a level, a
weekly pattern, noise). The model is `scratch:<size>` (random weights: the cost of a forward pass
does not depend on them). Runs alternate (ours, predict_df, ours, ...) so drift on a shared
machine hits both alike; reported: the median seconds and series a second of each, and their
ratio (goal: ours / predict_df >= 0.95 in series a second).

--whole: the command's whole time instead, each a fresh process: `chronos-train forecast FOLDER
DATA --out F.parquet` (a model folder on disk, as a warm cache of a run's model is) against a bare
script doing what a user would write (import chronos and pandas, from_pretrained, read_parquet,
predict_df, to_parquet), alternated; medians and their difference (goal: within 3 s).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def data(kind: str, series: int, length: int):
    import numpy as np
    import pandas as pd

    if kind == "quickstart":
        frame = pd.read_parquet(REPO / "examples" / "data" / "us_employment.parquet")
        return frame.sort_values(["item_id", "timestamp"]).reset_index(drop=True).astype({"item_id": str})
    rng = np.random.default_rng(0)
    t = np.arange(length)
    level = rng.uniform(20, 100, series)[:, None]
    values = level * (1 + 0.2 * (t % 7 >= 5)) + rng.normal(0, 1, (series, length)) * level * 0.05
    return pd.DataFrame({
        "item_id": np.repeat([f"s{i:06d}" for i in range(series)], length),
        "timestamp": np.tile(pd.date_range("2024-01-01", periods=length, freq="D").to_numpy(), series),
        "target": values.reshape(-1),
    })


BARE = """
import sys
import pandas as pd
from chronos import Chronos2Pipeline
folder, data, out, h, batch = sys.argv[1:6]
pipeline = Chronos2Pipeline.from_pretrained(folder)
frame = pd.read_parquet(data)
pipeline.predict_df(frame, prediction_length=int(h), batch_size=int(batch)).to_parquet(out, index=False)
"""


def whole(frame, size: str, h: int, context: int, batch: int, repeat: int) -> dict:
    """Fresh processes, alternated: the command against the bare script, on the same folder and file."""
    import subprocess
    import tempfile

    from instance.model.basemodel import build_scratch

    tmp = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
    build_scratch(size, context, on="cpu").save_pretrained(tmp / "model")
    frame.to_parquet(tmp / "data.parquet", index=False)
    commands = {
        "command": [sys.executable, "-m", "automation.cli", "forecast", str(tmp / "model"), str(tmp / "data.parquet"),
                    "--out", str(tmp / "ours.parquet"), "--prediction-length", str(h), "--batch-size", str(batch)],
        "bare": [sys.executable, "-c", BARE, str(tmp / "model"), str(tmp / "data.parquet"), str(tmp / "bare.parquet"),
                 str(h), str(batch)],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(repeat):
        for name, cmd in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
            times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"series": frame["item_id"].nunique(), "size": size, "prediction_length": h, "batch_size": batch,
            "seconds": {k: [round(x, 2) for x in v] for k, v in times.items()},
            "median_seconds": {k: round(v, 2) for k, v in med.items()},
            "command_minus_bare_seconds": round(med["command"] - med["bare"], 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", choices=("quickstart", "synthetic"), default="quickstart")
    p.add_argument("--series", type=int, default=1000)
    p.add_argument("--length", type=int, default=600)
    p.add_argument("--size", default="mini")
    p.add_argument("--prediction-length", type=int)
    p.add_argument("--context", type=int)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--whole", action="store_true", help="the command's whole time against a bare script's")
    a = p.parse_args()
    quick = a.data == "quickstart"
    h = a.prediction_length or (12 if quick else 24)
    context = a.context or (96 if quick else 512)
    if a.whole:
        print(json.dumps(whole(data(a.data, a.series, a.length), a.size, h, context, a.batch_size, a.repeat), indent=2))
        return

    import torch

    from instance.model.basemodel import build_scratch
    from instance.model.covariates import roles_of_frame
    from instance.model.forecasting import forecast_frame

    frame = data(a.data, a.series, a.length)
    roles = roles_of_frame(frame)
    pipeline = build_scratch(a.size, context, on="cpu")
    pipeline.model.eval()
    n = frame["item_id"].nunique()

    def ours():
        forecast_frame(pipeline, frame, roles, h, batch_size=a.batch_size, context_length=context)

    def bare():
        pipeline.predict_df(frame, prediction_length=h, batch_size=a.batch_size, context_length=context)

    times: dict[str, list[float]] = {"ours": [], "predict_df": []}
    with torch.inference_mode():
        ours()  # warm-up: first calls pay for lazy imports and allocator growth
        for _ in range(a.repeat):
            for name, fn in (("ours", ours), ("predict_df", bare)):
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    med = {k: statistics.median(v) for k, v in times.items()}
    doc = {"data": a.data, "series": n, "points": len(frame), "size": a.size, "prediction_length": h,
           "context_length": context, "batch_size": a.batch_size, "threads": torch.get_num_threads(),
           "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "median_seconds": {k: round(v, 3) for k, v in med.items()},
           "series_per_second": {k: round(n / v, 1) for k, v in med.items()},
           "ratio_ours_to_predict_df": round(med["predict_df"] / med["ours"], 3)}
    if a.json:
        print(json.dumps(doc, indent=2))
        return
    for k in times:
        print(f"{k:>10}: median {med[k]:.2f} s, {n / med[k]:.1f} series/s  (runs: {doc['seconds'][k]})")
    print(f"ours / predict_df (series/s): {doc['ratio_ours_to_predict_df']}")


if __name__ == "__main__":
    main()
