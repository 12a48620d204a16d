"""Rolling-origin backtest: WQL and MASE over `windows` windows of `prediction_length` points at
the end of every series, none of which training sees.

Window k (0 = the oldest) forecasts the points `(windows - k) * H` to `(windows - k - 1) * H`
from the end of each series, from everything before them; training gets what lies before the
first window (`Backtest.train`). That is AutoGluon's `num_val_windows` and fev's rolling windows.
Each window is scored for the fine-tuned model, the base model zero-shot (when it is a pretrained
model) and a seasonal-naive baseline, so a fine-tune that did not help is visible at a glance. A
model's overall score is the mean of its window scores.

Covariates (covariates.py): in each window a model gets the history of every column and, of the
window itself, the actual values of the known covariates and nothing else. With covariates, the
fine-tuned model (and the base model zero-shot) is scored a second time on the target(s) alone
(`finetuned_no_covariates`, `zero_shot_no_covariates`): what the covariates bring. Several
targets (forecast jointly) are scored each on its own (`per_target`); a model's score in a window
is the mean over its targets.

What a run keeps (`Evaluation.write`, uploaded under `{env}/{run_id}/evaluation/`):
    summary.json           overall and per-window scores, and how they were computed
    forecasts.parquet      item_id, window, model, timestamp, target, one column per quantile
    series_scores.parquet  item_id, window, model, wql, mase
    history.parquet        item_id, timestamp, target: the end of each series whose forecasts are kept
(whatever the data's own column names; with several targets each file has a `target_name` too).
(and loss_history.parquet, which the agent writes: see instance/agent/evaluation_files.py).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..protocol.columns import ColumnNames, ColumnRoles
from .dataset import ID, TARGET, TIME

log = logging.getLogger(__name__)

QUANTILE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
QUANTILE_COLUMNS = [str(q) for q in QUANTILE_LEVELS]
MEDIAN = QUANTILE_LEVELS.index(0.5)
MODELS = ("finetuned", "zero_shot", "seasonal_naive")
# With covariates, the same models given the target(s) alone.
WITHOUT_COVARIATES = {"finetuned": "finetuned_no_covariates", "zero_shot": "zero_shot_no_covariates"}
TARGET_NAME = "target_name"  # the column that says which target a row is of, when there are several
# Seasonal period by pandas frequency prefix (as in GluonTS/AutoGluon's defaults).
SEASONALITY = {"s": 60, "min": 60, "t": 60, "h": 24, "d": 7, "b": 5, "w": 52, "m": 12, "ms": 12, "me": 12, "q": 4, "qs": 4, "qe": 4, "y": 1, "a": 1, "ys": 1, "ye": 1}
# Scoring a huge dataset would dominate a short run: a random sample of series (seed 0) is scored.
MAX_EVAL_SERIES = 5000
# The forecasts themselves are kept for a smaller sample (every window, every quantile, every model).
MAX_FORECAST_SERIES = 1000
SAMPLE_SEED = 0
FILES = ("summary.json", "forecasts.parquet", "series_scores.parquet", "history.parquet")


def infer_frequency(df, id_col: str = ID, time_col: str = TIME) -> str | None:
    """The frequency of the first series (by id) with at least 3 points."""
    return next((_frequency(ts) for _, ts in df.groupby(id_col, sort=True)[time_col] if len(ts) >= 3), None)


def _frequency_of_runs(times, runs, items: list) -> str | None:
    """infer_frequency for a frame grouped by series, from its runs and their ids (`items`): no
    group-by over every row."""
    starts, ends = runs
    long = [i for i, n in enumerate((ends - starts).tolist()) if n >= 3]
    if not long:
        return None
    first = min(long, key=items.__getitem__)
    return _frequency(times.iloc[starts[first]:ends[first]])


def _frequency(ts) -> str | None:
    import warnings

    import pandas as pd

    try:
        with warnings.catch_warnings():
            # pandas 3 warns that infer_freq will return an offset; both forms are handled.
            warnings.simplefilter("ignore")
            freq = pd.infer_freq(pd.DatetimeIndex(ts))
    except (TypeError, ValueError):
        return None
    return getattr(freq, "freqstr", freq)


def seasonality_of(freq: str | None) -> int:
    if not freq:
        return 1
    base = freq.split("-")[0].lstrip("0123456789").lower()
    return SEASONALITY.get(base, 1)


# -- the split -------------------------------------------------------------------------------------
@dataclass
class Window:
    index: int  # 0 = the oldest
    items: list[str]
    context: Any  # frame: every series up to this window, every column
    future: Any  # frame: the window's rows, every column (forecast_inputs passes on the known covariates alone)
    actuals: Any  # ndarray (series, targets, prediction_length)
    timestamps: Any  # ndarray (series, prediction_length) of datetime64


@dataclass
class Backtest:
    frame: Any  # every series, sorted by (id, timestamp), with its position from the end
    prediction_length: int
    windows: int
    items: list[str]
    frequency: str | None
    seasonality: int
    roles: ColumnRoles
    runs: Any  # (starts, ends) of each series' rows in `frame` (dataset.series_runs)

    @property
    def held_out(self) -> int:
        return self.windows * self.prediction_length

    def _rows(self, lo: int, hi: int | None = None):
        """Rows whose position from the end of their series is in [lo, hi)."""
        return self.frame[rows_from_end(self.runs, len(self.frame), lo, hi)]

    def train(self):
        """What training sees: every series without its last `windows * prediction_length` points."""
        return self._rows(self.held_out).reset_index(drop=True)

    def window(self, k: int) -> Window:
        h = self.prediction_length
        start = (self.windows - k) * h  # first point of window k, counted from the end
        context = self._rows(start).reset_index(drop=True)
        future = self._rows(start - h, start).reset_index(drop=True)
        n, targets = len(self.items), self.roles.targets
        actuals = future[targets].to_numpy(dtype="float64").reshape(n, h, len(targets)).transpose(0, 2, 1)
        return Window(index=k, items=self.items, context=context, future=future, actuals=actuals,
                      timestamps=future[self.roles.timestamp].to_numpy().reshape(n, h))

    def restrict(self, items: list[str]) -> "Backtest":
        """The backtest of the named series alone, in the backtest's own order (its rows' order)."""
        import numpy as np

        from .dataset import segments

        kept = np.isin(np.asarray(self.items, dtype=object), np.asarray(list(items), dtype=object))
        if kept.all():
            return self
        items = [item for item, keep in zip(self.items, kept.tolist()) if keep]
        starts, ends = self.runs
        frame = self.frame[segments(len(self.frame), starts[kept], ends[kept] - starts[kept])].reset_index(drop=True)
        lengths = ends[kept] - starts[kept]
        runs = (np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64), np.cumsum(lengths).astype(np.int64))
        return Backtest(frame, self.prediction_length, self.windows, items, self.frequency, self.seasonality,
                        self.roles, runs)

    def tail(self, items: list[str], points: int):
        """The last `points` of each named series (history and every window), for the report:
        item_id, timestamp, target (and target_name, with several targets)."""
        import pandas as pd

        rows = self.restrict(items)._rows(0, points).reset_index(drop=True)
        r = self.roles

        def of(target: str):  # the evaluation files' names, whatever the data's
            return rows[[r.id, r.timestamp, target]].set_axis([ID, TIME, TARGET], axis=1)

        if len(r.targets) == 1:
            return of(r.targets[0])
        return pd.concat([of(name).assign(**{TARGET_NAME: name}) for name in r.targets], ignore_index=True)


def backtest_split(data, prediction_length: int, windows: int = 1, roles: ColumnRoles | None = None) -> Backtest:
    """`data` (an Arrow table or a pandas frame) sorted by (id, timestamp), as
    dataset.load_long_table returns it; `roles`: its columns' (by default: item_id, timestamp,
    target, every other column a past-only covariate). An Arrow table becomes pandas once."""
    import pyarrow as pa

    from .covariates import roles_of_frame

    from .dataset import series_runs, values_at

    roles = roles or roles_of_frame(data)
    if isinstance(data, pa.Table):
        runs = series_runs(data.column(roles.id))
        return _backtest(data.to_pandas(), runs, values_at(data.column(roles.id), runs[0]), prediction_length,
                         windows, roles)
    # A shallow copy: copy-on-write (pandas 3) keeps the caller's later edits out of the backtest.
    frame = data.copy(deep=False)
    ids = frame[roles.id].to_numpy()
    runs = series_runs(ids)
    return _backtest(frame, runs, ids[runs[0]].tolist(), prediction_length, windows, roles)


def _backtest(frame, runs, items: list, prediction_length: int, windows: int, roles: ColumnRoles) -> Backtest:
    """The backtest over `frame`, which it keeps as it is: each row's place from its series' end
    comes from the series' runs when asked (no per-row column: 80 MB for 10 M rows)."""
    freq = _frequency_of_runs(frame[roles.timestamp], runs, items)
    return Backtest(frame, prediction_length, windows, items, freq, seasonality_of(freq), roles, runs)


def rows_from_end(runs, n: int, lo: int, hi: int | None = None):
    """bool ndarray over the `n` rows: those whose position from their series' end is in [lo, hi)."""
    import numpy as np

    from .dataset import segments

    starts, ends = runs
    first = np.maximum(starts, ends - hi) if hi is not None else starts
    last = ends - lo
    return segments(n, first, np.maximum(last - first, 0))


def training_data(files, prediction_length: int, windows: int = 1, columns: ColumnNames | None = None):
    """(backtest, Chronos inputs of what training may see): what training and scoring start from.
    `columns`: the run config's roles (by default the long format's names, every other column a
    past-only covariate), resolved against the data's own types as the validator does.

    The Arrow table becomes the backtest's pandas frame column by column, each Arrow column freed
    as it is converted (dataset.frame_from), and Chronos's inputs are built per series from that
    frame's numpy views (covariates.series_training_inputs): the table, the frame and a frame of
    the training rows are never alive at once (20,000 series x 500 points: docs/benchmarks.md)."""
    frame, roles, runs, items = _load(files, columns)
    inputs = _inputs(frame, roles, runs, prediction_length, windows)
    return _backtest(frame, runs, items, prediction_length, windows, roles), inputs


def training_inputs_of_files(files, prediction_length: int, windows: int = 1, columns: ColumnNames | None = None):
    """training_data's Chronos inputs alone, without the backtest (a rank of distributed training
    trains; the agent's own process scores)."""
    frame, roles, runs, _ = _load(files, columns)
    return _inputs(frame, roles, runs, prediction_length, windows)


def backtest_of_files(files, prediction_length: int, windows: int = 1, columns: ColumnNames | None = None):
    """training_data's backtest alone: the agent's own process when ranks train (each builds its
    inputs itself, training_inputs_of_files), so they are not built a second time here."""
    frame, roles, runs, items = _load(files, columns)
    return _backtest(frame, runs, items, prediction_length, windows, roles)


def _load(files, columns: ColumnNames | None):
    """(frame, roles, runs, ids of the series) of the dataset's files."""
    from .covariates import DEFAULT_COLUMNS, roles_of_frame
    from .dataset import frame_from, load_long_table, series_runs, values_at

    columns = columns or DEFAULT_COLUMNS
    table = load_long_table(files, columns)
    roles = roles_of_frame(table, columns)
    runs = series_runs(table.column(roles.id))
    items = values_at(table.column(roles.id), runs[0])
    box = [table]
    del table  # frame_from frees each column as it converts it: no reference may be left here
    return frame_from(box), roles, runs, items


def _inputs(frame, roles: ColumnRoles, runs, prediction_length: int, windows: int):
    from .covariates import series_training_inputs

    starts, ends = runs
    return series_training_inputs(frame, roles, starts, ends - starts - windows * prediction_length, prediction_length)


def to_chronos_inputs(context_df, prediction_length: int, roles: ColumnRoles | None = None):
    """A long frame (grouped by series, in time order) → Chronos's fit inputs (covariates.py)."""
    from .covariates import roles_of_frame, training_inputs

    return training_inputs(context_df, roles or roles_of_frame(context_df), prediction_length)


def sample_items(items: list[str], n: int, seed: int = SAMPLE_SEED) -> list[str]:
    """All items when there are at most n, else a random sample of n (kept in id order)."""
    import numpy as np

    if len(items) <= n:
        return list(items)
    chosen = np.random.default_rng(seed).choice(len(items), size=n, replace=False)
    return [items[i] for i in sorted(chosen)]


# -- metrics ---------------------------------------------------------------------------------------
def _pinball(actuals, quantiles):
    """(series, horizon, levels) pinball losses; NaN where the actual is missing."""
    import numpy as np

    levels = np.asarray(QUANTILE_LEVELS)
    diff = actuals[..., None] - quantiles
    return np.where(diff >= 0, levels * diff, (levels - 1) * diff)


def wql(actuals, quantiles) -> float | None:
    """Weighted quantile loss: 2·Σ pinball / Σ|y|, averaged over QUANTILE_LEVELS."""
    import numpy as np

    mask = np.isfinite(actuals)
    denom = np.abs(actuals[mask]).sum()
    if denom == 0:
        return None
    loss = _pinball(np.where(mask, actuals, 0.0), quantiles)[mask]  # (points, levels)
    return float(np.mean(2 * loss.sum(axis=0) / denom))


def wql_by_series(actuals, quantiles):
    """WQL of each series alone (NaN where the series' actuals sum to zero)."""
    import numpy as np

    mask = np.isfinite(actuals)
    denom = np.where(mask, np.abs(actuals), 0.0).sum(axis=1)
    loss = np.where(mask[..., None], _pinball(np.where(mask, actuals, 0.0), quantiles), 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (2 * loss / denom[:, None]).mean(axis=1), np.nan)


def mase_by_series(actuals, point, insample: list, season: int):
    """Each series' mean absolute error scaled by its in-sample seasonal-naive error; NaN where
    the scale is zero (a constant history) or nothing can be scored."""
    import numpy as np

    out = np.full(len(actuals), np.nan)
    for i, (y, f, past) in enumerate(zip(actuals, point, insample)):
        m = season if len(past) > season else 1
        diffs = np.abs(past[m:] - past[:-m])
        scale = np.nanmean(diffs) if np.isfinite(diffs).any() else np.nan
        err = np.abs(y - f)
        if np.isfinite(scale) and scale != 0 and np.isfinite(err).any():
            out[i] = np.nanmean(err) / scale
    return out


def mase(actuals, point, insample: list, season: int) -> float | None:
    """Mean absolute scaled error over the series that have a scale (constant ones are left out)."""
    import numpy as np

    scores = mase_by_series(actuals, point, insample, season)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else None


def seasonal_naive(insample: list, prediction_length: int, season: int):
    import numpy as np

    out = np.empty((len(insample), prediction_length))
    for i, past in enumerate(insample):
        m = season if len(past) >= season else 1
        last = past[-m:]
        out[i] = np.resize(last, prediction_length) if m > 1 else past[-1]
        if not np.isfinite(out[i]).all():  # a NaN at the end of history: fall back to the last finite value
            finite = past[np.isfinite(past)]
            out[i] = np.where(np.isfinite(out[i]), out[i], finite[-1] if finite.size else 0.0)
    return out


def _insample(context, roles: ColumnRoles) -> list[list]:
    """Per target, each series' history as a float array."""
    return [[g.to_numpy(dtype="float64") for _, g in context.groupby(roles.id, sort=False)[target]]
            for target in roles.targets]


# -- forecasting -----------------------------------------------------------------------------------
def forecast_pipeline(pipeline, inputs, prediction_length: int, batch_size: int, context_length: int | None = None):
    """(series, targets, horizon, levels) quantile forecasts of a Chronos-2 pipeline from its
    prepared inputs (covariates.forecast_inputs)."""
    import numpy as np
    import torch

    quantiles, _ = pipeline.predict_quantiles(
        inputs,
        prediction_length=prediction_length,
        quantile_levels=QUANTILE_LEVELS,
        batch_size=batch_size,
        context_length=context_length,
    )
    q = torch.stack(quantiles).float().cpu().numpy()
    # Quantile heads are trained independently and may cross; a forecast's levels are kept in order.
    return np.sort(np.asarray(q, dtype="float64"), axis=-1)


def forecast_seasonal_naive(insample: list[list], prediction_length: int, season: int):
    """(series, targets, horizon, levels): the last season repeated, the same at every level."""
    import numpy as np

    point = np.stack([seasonal_naive(per_series, prediction_length, season) for per_series in insample], axis=1)
    return np.repeat(point[..., None], len(QUANTILE_LEVELS), axis=-1)


# -- the evaluation --------------------------------------------------------------------------------
@dataclass
class Evaluation:
    metrics: dict[str, dict | None]  # model -> {wql, mase} overall (mean of the windows)
    per_window: dict[str, list[dict]]  # model -> one {window, wql, mase} per window
    info: dict[str, Any]
    forecasts: Any = None  # frames, written by `write`
    series_scores: Any = None
    history: Any = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "per_window": self.per_window, **self.info}

    def write(self, folder: Path) -> list[Path]:
        from ..protocol.artifacts import write_json_atomic

        folder.mkdir(parents=True, exist_ok=True)
        written = [write_json_atomic(folder / "summary.json", self.summary())]
        for name, frame in (("forecasts", self.forecasts), ("series_scores", self.series_scores), ("history", self.history)):
            path = folder / f"{name}.parquet"
            frame.to_parquet(path, index=False)
            written.append(path)
        return written


def _mean(values) -> float | None:
    kept = [v for v in values if v is not None]
    return float(sum(kept) / len(kept)) if kept else None


def evaluate(finetuned, base, backtest: Backtest, batch_size: int, context_length: int | None = None) -> Evaluation:
    """Score every window. `base` is None for a scratch model (no zero-shot score)."""
    import numpy as np
    import pandas as pd

    from .covariates import forecast_inputs

    started = time.monotonic()
    h = backtest.prediction_length
    roles = backtest.roles
    targets = roles.targets
    several = len(targets) > 1
    scored = backtest.restrict(sample_items(backtest.items, MAX_EVAL_SERIES))
    kept = set(sample_items(scored.items, MAX_FORECAST_SERIES))
    keep_rows = np.array([item in kept for item in scored.items])
    given = {"all": roles, "alone": roles.target_only()}  # the columns a model is given
    # (model, pipeline, which columns it is given); the seasonal-naive baseline last.
    runs: list[tuple[str, Any, str]] = [("finetuned", finetuned, "all")]
    if base is not None:
        runs.append(("zero_shot", base, "all"))
    if roles.covariates:
        runs += [(WITHOUT_COVARIATES[m], p, "alone") for m, p, _ in list(runs)]
    runs.append(("seasonal_naive", None, ""))
    per_window: dict[str, list[dict]] = {m: [] for m, _, _ in runs}
    by_target: dict[str, dict[str, list[dict]]] = {t: {m: [] for m, _, _ in runs} for t in targets}
    forecast_frames, score_frames, bounds = [], [], []
    for k in range(backtest.windows):
        window = scored.window(k)
        insample = _insample(window.context, roles)
        bounds.append({"window": k, "first": str(window.timestamps[:, 0].min()), "last": str(window.timestamps[:, -1].max())})
        inputs: dict[str, list] = {}  # built once per window for each set of columns, shared by the pipelines
        for model, pipeline, columns in runs:
            if pipeline is None:
                q = forecast_seasonal_naive(insample, h, scored.seasonality)
            else:
                if columns not in inputs:
                    inputs[columns] = forecast_inputs(window.context, window.future, given[columns], h)
                q = forecast_pipeline(pipeline, inputs[columns], h, batch_size, context_length)
            scores = []
            for j, target in enumerate(targets):
                actuals, quantiles = window.actuals[:, j], q[:, j]
                series_mase = mase_by_series(actuals, quantiles[..., MEDIAN], insample[j], scored.seasonality)
                score = {"window": k, "wql": wql(actuals, quantiles),
                         "mase": float(np.nanmean(series_mase)) if np.isfinite(series_mase).any() else None}
                by_target[target][model].append(score)
                scores.append(score)
                named = {TARGET_NAME: target} if several else {}
                score_frames.append(pd.DataFrame({
                    ID: window.items, "window": k, "model": model, **named,
                    "wql": wql_by_series(actuals, quantiles), "mase": series_mase,
                }))
                if keep_rows.any():
                    forecast_frames.append(pd.DataFrame({
                        ID: np.repeat(np.asarray(window.items, dtype=object)[keep_rows], h),
                        "window": k, "model": model, **named,
                        TIME: window.timestamps[keep_rows].reshape(-1),
                        TARGET: actuals[keep_rows].reshape(-1),
                        **{col: quantiles[keep_rows][..., i].reshape(-1) for i, col in enumerate(QUANTILE_COLUMNS)},
                    }))
            per_window[model].append({"window": k, "wql": _mean(s["wql"] for s in scores),
                                      "mase": _mean(s["mase"] for s in scores)})
    metrics: dict[str, dict | None] = {m: None for m in MODELS}
    for model, rows in per_window.items():
        metrics[model] = _overall(rows)
    history_points = backtest.held_out + max(3 * h, 2 * scored.seasonality)
    info = {
        "windows": backtest.windows,
        "prediction_length": h,
        "series": len(scored.items),
        "dataset_series": len(backtest.items),
        "dataset_points": int(len(backtest.frame)),
        "forecast_series": len(kept),
        "sample": _sample_note(len(backtest.items), len(scored.items), len(kept)),
        "quantile_levels": QUANTILE_LEVELS,
        "frequency": scored.frequency,
        "seasonality": scored.seasonality,
        "window_bounds": bounds,
        "holdout": f"the last {backtest.windows} windows of {h} points of every series (rolling origin); "
                   "training saw none of them; overall = mean of the windows",
        "seconds": round(time.monotonic() - started, 3),
    }
    if roles.covariates:
        info["covariates"] = {
            "known": roles.known_covariates, "past": roles.past_covariates,
            "note": "in each window the model is given the history of every column and the window's actual values "
                    "of the known covariates, nothing else of the window; *_no_covariates: the same model given "
                    "the target(s) alone",
        }
    if several:
        info["targets"] = targets
        info["per_target"] = {t: {m: _overall(rows) for m, rows in models.items()} for t, models in by_target.items()}
        info["holdout"] += f"; {len(targets)} targets scored each on its own, a window's score the mean over them"
    log.info("evaluation over %d window(s): %s", backtest.windows, metrics)
    return Evaluation(
        metrics=metrics, per_window=per_window, info=info,
        forecasts=pd.concat(forecast_frames, ignore_index=True),
        series_scores=pd.concat(score_frames, ignore_index=True),
        history=scored.tail(sorted(kept), history_points),
    )


def _overall(rows: list[dict]) -> dict[str, float | None]:
    return {"wql": _mean(r["wql"] for r in rows), "mase": _mean(r["mase"] for r in rows)}


def _sample_note(total: int, scored: int, kept: int) -> str:
    if total == kept:
        return f"all {total} series scored, forecasts kept for all"
    scored_part = f"all {total} series scored" if scored == total else \
        f"a random sample of {scored} of {total} series scored (seed {SAMPLE_SEED})"
    return f"{scored_part}; forecasts kept for a random sample of {kept} of them (seed {SAMPLE_SEED})"
