"""What the run report costs: the backtest's scoring time by number of windows (on the agent), and
the report's build time (on the dev machine), on the quickstart data (147 monthly series).

Scoring uses an untrained `scratch:mini` model: forecasting costs the same whatever the weights.
The report is built from an evaluation made here (same files as a run's), without S3, so the
figure is the page itself: reading parquet, drawing the charts, writing the HTML.

--future SERIES: the report of a forecast run of SERIES series x --horizon steps instead, through
the CLI against the sandbox (`chronos-train --local report RUN`, wall time and peak RSS): the run's
forecasts/ as the agent writes them (forecasting.Forecast.write: sample.parquet holds the drawn
series' rows), against the same run from before sample.parquet (the report reads the drawn
series out of the whole forecast.parquet), alternated, --repeat pairs.

Run: .venv/bin/python bench/bench_report.py [--windows 1 3 5] [--repeat 3] [--json]
     .venv/bin/python bench/bench_report.py --future 100000 [--horizon 24] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = REPO / "examples" / "data" / "us_employment.parquet"
PREDICTION_LENGTH, CONTEXT_LENGTH, BATCH = 12, 96, 32


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, nargs="+", default=[1, 3, 5])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--future", type=int, metavar="SERIES", help="time `report` of a forecast run of SERIES series")
    ap.add_argument("--horizon", type=int, default=24)
    args = ap.parse_args()
    if args.future:
        future_report(args.future, args.horizon, args.repeat, args.json)
        return

    import torch

    from automation.report import page as report
    from instance.model.basemodel import build_scratch
    from instance.model.evaluation import evaluate, training_data

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = build_scratch("mini", CONTEXT_LENGTH, on="cpu")
    figures: dict[str, dict] = {"scoring_seconds": {}, "report_seconds": None}
    last = None
    for windows in args.windows:
        backtest, _ = training_data([DATA], PREDICTION_LENGTH, windows)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            last = evaluate(model, None, backtest, BATCH, CONTEXT_LENGTH)
            times.append(time.perf_counter() - t0)
        figures["scoring_seconds"][windows] = {"best": round(min(times), 3), "median": round(statistics.median(times), 3)}

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        last.write(folder)
        import pandas as pd

        art = report.RunArtifacts(
            run_id="run-20261129-000000-beef", bucket="bench", record=_record(last), summary=json.loads(
                (folder / "summary.json").read_text()),
            frames={n: pd.read_parquet(folder / f"{n}.parquet") for n in ("forecasts", "series_scores", "history")},
        )
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            page = report.build(art)
            (folder / "report.html").write_text(page)
            times.append(time.perf_counter() - t0)
        figures["report_seconds"] = {"best": round(min(times), 3), "median": round(statistics.median(times), 3),
                                     "first": round(times[0], 3), "bytes": len(page.encode())}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for windows, t in figures["scoring_seconds"].items():
        print(f"scoring, {windows} window(s): best {t['best']:.2f} s, median {t['median']:.2f} s")
    r = figures["report_seconds"]
    print(f"report build: first {r['first']:.2f} s (matplotlib loads), best {r['best']:.2f} s, {r['bytes']:,} bytes")


def future_report(series: int, horizon: int, pairs: int, as_json: bool) -> None:
    import os
    import shutil

    sys.path.insert(0, str(REPO / "bench"))
    from cliruns import CLI, peak_run

    from automation.sandbox import control as sandbox
    from automation.sandbox.strictmoto import DEPLOYER
    from instance.protocol.aws import client
    from instance.protocol.layout import Layout

    home = Path(tempfile.mkdtemp(prefix="chronos-bench-report-"))
    os.environ["CHRONOS_HOME"] = str(home)
    info = sandbox.start(("dev",))
    s3 = client("s3", info.target(DEPLOYER))  # plants the runs, by its named credentials
    bucket, layout = info.bucket("dev"), Layout("dev")
    runs = {"with sample.parquet": "run-20261204-000000-5a3e", "before (whole forecast.parquet)": "run-20261204-000000-01d5"}
    rows: dict[str, list] = {name: [] for name in runs}
    try:
        folder = home / "forecasts"
        size = _write_forecast(folder, series, horizon)
        for name, run_id in runs.items():
            for path in folder.iterdir():
                if name.startswith("before") and path.name == "sample.parquet":
                    continue
                s3.upload_file(str(path), bucket, layout.forecasts(run_id) + path.name)
            s3.put_object(Bucket=bucket, Key=layout.final_record(run_id), Body=json.dumps(_forecast_record(run_id)))
        for _ in range(pairs):
            for name, run_id in runs.items():
                wall, peak = peak_run([CLI, "--local", "report", run_id, "--out", str(home / f"{run_id}.html")], cwd=home)
                rows[name].append((wall, peak))
    finally:
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)
    out = {"series": series, "horizon": horizon, "forecast_parquet_bytes": size, "pairs": pairs,
           **{name: {"wall_s": [round(w, 2) for w, _ in r], "peak_rss_mib": [round(p / 1024) for _, p in r],
                     "median_wall_s": round(statistics.median(w for w, _ in r), 2),
                     "median_peak_rss_mib": round(statistics.median(p for _, p in r) / 1024)} for name, r in rows.items()}}
    if as_json:
        print(json.dumps(out, indent=2))
        return
    print(f"report of a forecast run of {series:,} series x {horizon} steps (forecast.parquet {size / 1e6:.0f} MB), "
          f"{pairs} pairs:")
    for name in runs:
        r = out[name]
        print(f"  {name}: median {r['median_wall_s']:.2f} s, peak RSS {r['median_peak_rss_mib']} MiB  "
              f"(walls {r['wall_s']}, peaks {r['peak_rss_mib']})")


def _write_forecast(folder: Path, series: int, horizon: int) -> int:
    """forecast.parquet and its companions as the agent writes them (Forecast.write), for
    `series` hourly series of random float32 quantiles (predict's dtype), sorted as predict sorts."""
    import numpy as np
    import pandas as pd

    from instance.model.forecasting import QUANTILE_LEVELS, Forecast, quantile_columns

    rng = np.random.default_rng(0)
    ids = np.array([f"item-{i:06d}" for i in range(series)])
    start = pd.Timestamp("2026-12-01")
    steps = pd.date_range(start, periods=horizon, freq="h").to_numpy()
    q = np.sort(rng.normal(100, 10, (series * horizon, len(QUANTILE_LEVELS))).astype("float32"), axis=1)
    frame = pd.DataFrame({"item_id": np.repeat(ids, horizon), "timestamp": np.tile(steps, series),
                          "predictions": q[:, len(QUANTILE_LEVELS) // 2],
                          **{c: q[:, i] for i, c in enumerate(quantile_columns(QUANTILE_LEVELS))}})
    # The history's series as history_sample picks them: 6 spread over the data's order.
    picked = ids[np.unique(np.linspace(0, series - 1, 6).round().astype(int))]
    points = max(4 * horizon, 48)
    past = pd.date_range(start - pd.Timedelta(hours=points), periods=points, freq="h").to_numpy()
    history = pd.DataFrame({"item_id": np.repeat(picked, points), "timestamp": np.tile(past, len(picked)),
                            "target": rng.normal(100, 10, len(picked) * points)})
    info = {"model": "s3://bench/dev/run-20261203-000000-beef/models/", "series": series, "rows": len(frame),
            "prediction_length": horizon, "frequency": "h", "quantile_levels": QUANTILE_LEVELS,
            "columns": list(frame.columns), "targets": ["target"], "known_covariates": [], "past_covariates": [],
            "first_timestamp": str(start), "last_timestamp": str(pd.Timestamp(steps[-1])), "seconds": 60.0}
    Forecast(frame, info, history).write(folder)
    return (folder / "forecast.parquet").stat().st_size


def _forecast_record(run_id: str) -> dict:
    return {"run_id": run_id, "env": "dev", "final_status": "completed", "started_at": "2026-12-04T00:00:00.000Z",
            "ended_at": "2026-12-04T00:05:00.000Z", "duration_seconds": 300,
            "host": {"executor": "ec2", "instance_type": "g5.xlarge", "spot": False},
            "cost": {"hourly_usd": 1.006, "estimated_usd": 0.0838},
            "config": {"kind": "forecast", "model": {"base": "s3://bench/dev/run-20261203-000000-beef/models/"}},
            "data": {"series": 0}, "phases": {"forecast": {"started_at": "2026-12-04T00:03:00.000Z", "seconds": 60,
                                                          "result": "ok"}},
            "artifacts": {"forecast_uri": f"s3://bench/dev/{run_id}/forecasts/forecast.parquet"}}


def _record(evaluation) -> dict:
    return {"run_id": "run-20261129-000000-beef", "final_status": "completed", "metrics": evaluation.metrics,
            "evaluation": evaluation.info, "started_at": "2026-11-29T00:00:00.000Z",
            "ended_at": "2026-11-29T00:02:00.000Z", "duration_seconds": 120,
            "phases": {"training": {"started_at": "2026-11-29T00:00:10.000Z", "seconds": 100, "result": "ok"}}}


if __name__ == "__main__":
    main()
