"""What the run report costs: the backtest's scoring time by number of windows (on the agent), and
the report's build time (on the dev machine), on the quickstart data (147 monthly series).

Scoring uses an untrained `scratch:mini` model: forecasting costs the same whatever the weights.
The report is built from an evaluation made here (same files as a run's), without S3, so the
figure is the page itself: reading parquet, drawing the charts, writing the HTML.

Run: .venv/bin/python bench/bench_report.py [--windows 1 3 5] [--repeat 3] [--json]
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
    args = ap.parse_args()

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


def _record(evaluation) -> dict:
    return {"run_id": "run-20261129-000000-beef", "final_status": "completed", "metrics": evaluation.metrics,
            "evaluation": evaluation.info, "started_at": "2026-11-29T00:00:00.000Z",
            "ended_at": "2026-11-29T00:02:00.000Z", "duration_seconds": 120,
            "phases": {"training": {"started_at": "2026-11-29T00:00:10.000Z", "seconds": 100, "result": "ok"}}}


if __name__ == "__main__":
    main()
