"""Forecasts past the end of every series: what a user trains a model for.

One function (`forecast_files`) serves the run's last working phase (the fine-tuned model on all
of the run's data, instance/agent/phases.py) and `chronos-train forecast` (any model, any data,
on the user's machine). It is Chronos-2's own `predict_df` made to take our data as it is:

- the data's columns are given to the model in the roles it was trained with (model_metadata.json
  `columns`, protocol/columns.py), and data that does not match them is refused before the model
  is run (`ForecastInputError`, one sentence);
- a model trained with known covariates needs their values over the horizon (`future`): exactly
  `prediction_length` rows for every series, at the timestamps that continue it, and no other
  column; predict_df would take a target or an unknown column there as one more covariate;
- the quantile columns are kept in order (Chronos-2's quantile heads are trained independently and
  may cross), which predict_df does not do; otherwise the output is predict_df's to float
  tolerance (tests/test_forecasting.py): its column names (`predictions`: the model's median,
  `"0.1"` ... `"0.9"`), its row order (series in the data's order, then targets, then steps) and
  the data's own id and timestamp column names, so the result joins back onto the data;
- the work goes in chunks of whole batches, so a progress callback hears how far it is.

What a run keeps (`Forecast.write`, uploaded under `{env}/{run_id}/forecasts/`):
    forecast.parquet   id, timestamp, [target_name,] predictions, one column per quantile
    forecast.json      the model, the data's fingerprint, quantiles, series, frequency, columns
    history.parquet    id, timestamp, [target_name,] target: the last points of a few series
                       (SAMPLE_SERIES, spread over the data's order), so the report can draw
                       their fan charts without reading the whole dataset back
    sample.parquet     forecast.parquet's rows of those few series, so the report need not
                       read the whole forecast either (about 100 MB at 100,000 series x 24 steps)
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..protocol.columns import ColumnRoles
from .basemodel import PATCH
from .dataset import series_runs

log = logging.getLogger(__name__)

QUANTILE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # predict_df's default
POINT = "predictions"  # predict_df's name for the point forecast (Chronos-2's median)
TARGET_NAME = "target_name"  # which target a row is of, with several targets (predict_df's name)
FORECAST_FILE, INFO_FILE, HISTORY_FILE = "forecast.parquet", "forecast.json", "history.parquet"
SAMPLE_FILE = "sample.parquet"
HISTORY_VALUE = "target"  # history.parquet's value column (with several targets, target_name says whose)
SAMPLE_SERIES = 6  # series whose history tail is kept beside the forecast, for the report's fan charts
BATCH_SIZE = 256  # predict_df's default: series (with their covariates) a forward pass
CHUNK_BATCHES = 16  # batches between two progress reports


class ForecastInputError(ValueError):
    """Data or future values that this model cannot forecast from: one sentence saying what is
    wrong and what to do. Raised before the model runs."""


def quantile_columns(levels: Sequence[float]) -> list[str]:
    return [str(q) for q in levels]


@dataclass
class Forecast:
    frame: Any  # pandas: one row per series (and target) and future timestamp
    info: dict[str, Any] = field(default_factory=dict)
    history: Any = None  # pandas: the tail of a few series (history_sample), or None

    def write(self, folder: Path) -> list[Path]:
        from ..protocol.artifacts import write_json_atomic

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / FORECAST_FILE
        self.frame.to_parquet(path, index=False)
        written = [path, write_json_atomic(folder / INFO_FILE, self.info)]
        if self.history is not None:
            self.history.to_parquet(folder / HISTORY_FILE, index=False)
            id_col = self.info["id_column"]
            sample = self.frame[self.frame[id_col].isin(self.history[id_col].unique())]
            sample.to_parquet(folder / SAMPLE_FILE, index=False)
            written += [folder / HISTORY_FILE, folder / SAMPLE_FILE]
        return written


def check_quantiles(levels: Sequence[float | str], where: str = "quantile levels") -> list[float]:
    """The levels as numbers, in order; anything else (a word, 0, 1, nothing) is one sentence,
    the same for the command's --quantiles (`where`) and for a caller of predict."""
    try:
        numbers = [float(q) for q in levels]
    except (TypeError, ValueError):
        numbers = []
    if not numbers or any(not 0 < q < 1 for q in numbers):
        shown = ",".join(str(q) for q in levels) or "(none)"
        raise ForecastInputError(f"{where} {shown}: give numbers strictly between 0 and 1, such as 0.1,0.5,0.9")
    return sorted(set(numbers))


# -- checks -------------------------------------------------------------------------------------
def check_roles(found: ColumnRoles | None, trained: ColumnRoles, where: str) -> None:
    """The data's columns against the roles the model was trained with: every target and covariate
    there, of the same kind; a column the model never saw is refused (predict_df would take it as
    one more past-only covariate, which the model was not trained with)."""
    if found is None:
        raise ForecastInputError(f"{where} lacks the id, timestamp or target column the model was trained with "
                                 f"({trained.id}, {trained.timestamp}, {', '.join(trained.targets)})")
    for column in trained.columns:
        have = found.get(column.name)
        if have is None:
            raise ForecastInputError(f"{where} has no column {column.name!r}, which the model was trained with as "
                                     f"{_role(column.role)}; add it or forecast with a model trained without it")
        if column.kind != have.kind:
            raise ForecastInputError(f"{where}: column {column.name!r} is {have.kind} ({have.dtype}) but the model "
                                     f"was trained with it {column.kind} ({column.dtype}); convert it")
    extra = [c.name for c in found.columns if trained.get(c.name) is None]
    if extra:
        raise ForecastInputError(f"{where} has column(s) {', '.join(map(repr, extra))} that the model was not "
                                 "trained with; drop them")


def _role(role: str) -> str:
    from ..protocol.columns import ROLE_NAMES

    return ("the " if role in ("id", "timestamp") else "a ") + ROLE_NAMES[role]


def frequency(data, roles: ColumnRoles, where: str) -> str:
    from .evaluation import infer_frequency

    freq = infer_frequency(data, roles.id, roles.timestamp)
    if not freq:
        raise ForecastInputError(f"{where}: the timestamps' frequency cannot be inferred (every series needs at least "
                                 "3 regularly spaced points, such as hourly or daily); fill the gaps or resample")
    return freq


def future_timestamps(data, roles: ColumnRoles, prediction_length: int, freq: str):
    """(ids in the data's order, (series, prediction_length) timestamps continuing each series)."""
    import numpy as np
    import pandas as pd

    ids = data[roles.id].to_numpy()
    last = np.r_[ids[1:] != ids[:-1], True] if len(ids) else np.zeros(0, bool)
    last_ts = pd.DatetimeIndex(data[roles.timestamp].to_numpy()[last])
    offset = pd.tseries.frequencies.to_offset(freq)
    steps = [last_ts + k * offset for k in range(1, prediction_length + 1)]
    return ids[last], np.stack([s.to_numpy() for s in steps], axis=1) if len(last_ts) else np.zeros((0, prediction_length))


def patch_size(pipeline) -> int:
    """The points of one input patch: a series shorter than that gives the model less than one token."""
    config = getattr(getattr(pipeline, "model", None), "chronos_config", None)
    return int(getattr(config, "input_patch_size", PATCH))


def check_lengths(data, roles: ColumnRoles, where: str, minimum: int) -> None:
    ids = data[roles.id].to_numpy()
    if not len(ids):
        raise ForecastInputError(f"{where} holds no rows")
    starts, ends = series_runs(ids)
    lengths = ends - starts
    short = lengths < minimum
    if short.any():
        first = ids[starts[short][0]]
        raise ForecastInputError(f"{where}: {int(short.sum())} series are shorter than {minimum} points (the first: "
                                 f"{first!r}, {int(lengths[short][0])} points), too short for the model to read; "
                                 "drop them or give them more history")


def check_future(future, roles: ColumnRoles, ids, timestamps, where: str):
    """The known covariates' future values, in the data's series order, or ForecastInputError."""
    import numpy as np
    import pandas as pd

    known = roles.known_covariates
    wanted = [roles.id, roles.timestamp, *known]
    missing = [c for c in wanted if c not in future.columns]
    if missing:
        raise ForecastInputError(f"{where} has no column {', '.join(map(repr, missing))}; it needs {', '.join(wanted)}")
    extra = [c for c in future.columns if c not in wanted]
    if extra:
        raise ForecastInputError(f"{where} has column(s) {', '.join(map(repr, extra))} besides the id, the timestamp "
                                 f"and the known covariates ({', '.join(known)}); drop them")
    h = timestamps.shape[1]
    future_ids = future[roles.id].astype(str)
    counts = future_ids.value_counts()
    absent = [i for i in ids if i not in counts.index]
    if absent:
        raise ForecastInputError(f"{where} has no rows for {len(absent)} series (the first: {absent[0]!r}); it needs "
                                 f"{h} rows for every series of the data")
    strangers = sorted(set(counts.index) - set(ids))
    if strangers:
        raise ForecastInputError(f"{where} has rows for {len(strangers)} series the data does not hold (the first: "
                                 f"{strangers[0]!r}); drop them")
    wrong = counts[counts != h]
    if len(wrong):
        raise ForecastInputError(f"{where} has {int(wrong.iloc[0])} rows for series {wrong.index[0]!r} (and "
                                 f"{len(wrong) - 1} more series with the wrong count); it needs exactly {h} rows a "
                                 "series (prediction_length), one for each future timestamp")
    times = pd.to_datetime(future[roles.timestamp]).to_numpy()
    order = pd.Index(ids).get_indexer(future_ids)
    perm = np.lexsort([times, order])
    got = times[perm].reshape(len(ids), h)
    bad = np.flatnonzero((got != timestamps.astype(got.dtype)).any(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ForecastInputError(f"{where}: series {ids[i]!r} has timestamps {pd.Timestamp(got[i, 0])} ... that do not "
                                 f"continue the data (expected {pd.Timestamp(timestamps[i, 0])} ... "
                                 f"{pd.Timestamp(timestamps[i, -1])})")
    out = future.iloc[perm].reset_index(drop=True)
    if null := [c for c in known if out[c].isna().any()]:
        raise ForecastInputError(f"{where}: known covariate {null[0]!r} has missing values; the model needs every "
                                 "one over the horizon")
    return out.assign(**{roles.id: out[roles.id].astype(str)})


def history_sample(data, roles: ColumnRoles, prediction_length: int, series: int = SAMPLE_SERIES):
    """The last max(4 x prediction_length, 48) points of `series` series spread evenly over the
    data's order (the first and the last among them), long by target: what a fan chart shows
    before the forecast. `data` sorted by (id, timestamp), as prepare takes it."""
    import numpy as np
    import pandas as pd

    ids = data[roles.id].to_numpy()
    if not len(ids):
        return None
    starts, ends = series_runs(ids)
    picked = np.unique(np.linspace(0, len(starts) - 1, min(series, len(starts))).round().astype(int))
    points = max(4 * prediction_length, 48)
    rows = np.concatenate([np.arange(max(starts[i], ends[i] - points), ends[i]) for i in picked])
    tail = data.iloc[rows]
    several = len(roles.targets) > 1
    parts = [pd.DataFrame({roles.id: tail[roles.id].to_numpy(), roles.timestamp: tail[roles.timestamp].to_numpy(),
                           **({TARGET_NAME: target} if several else {}),
                           HISTORY_VALUE: tail[target].to_numpy(dtype="float64")}) for target in roles.targets]
    return pd.concat(parts, ignore_index=True)


# -- the forecast -------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Data and future values checked against the model's roles, before any model is loaded."""

    data: Any
    roles: ColumnRoles
    prediction_length: int
    frequency: str
    ids: Any  # the series, in the data's order
    timestamps: Any  # (series, prediction_length): the future timestamps of each
    future: Any = None  # the known covariates' values over the horizon, in the data's order


def prepare(data, roles: ColumnRoles, prediction_length: int, *, future=None, min_length: int = PATCH,
            where: str = "the data", future_where: str = "the future file") -> Prepared:
    """`data`: a pandas frame sorted by (id, timestamp) with string ids, as
    dataset.load_long_frame reads it, in `roles` (the model's). `future`: the known covariates'
    values over the horizon (required when there are known covariates). ForecastInputError for
    anything the model cannot forecast from."""
    check_lengths(data, roles, where, min_length)
    freq = frequency(data, roles, where)
    ids, timestamps = future_timestamps(data, roles, prediction_length, freq)
    if roles.known_covariates:
        if future is None:
            raise ForecastInputError(f"the model was trained with known covariates ({', '.join(roles.known_covariates)}) "
                                     f"and needs their values for the next {prediction_length} steps of every series; "
                                     "give them as a future file")
        future = check_future(future, roles, ids, timestamps, future_where)
    else:
        future = None
    return Prepared(data, roles, prediction_length, freq, ids, timestamps, future)


def predict(pipeline, prepared: Prepared, *, quantile_levels: Sequence[float] = QUANTILE_LEVELS,
            batch_size: int = BATCH_SIZE, context_length: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> Forecast:
    import numpy as np
    import pandas as pd
    import torch

    from .covariates import forecast_inputs

    started = time.monotonic()
    levels = check_quantiles(quantile_levels)
    p, roles, h = prepared, prepared.roles, prepared.prediction_length
    inputs = forecast_inputs(p.data, p.future, roles, h)
    pipeline.model.eval()  # a model fresh from its config or from fit may still be in training mode (dropout on)
    n, chunk = len(inputs), max(1, batch_size) * CHUNK_BATCHES
    quantiles, medians = [], []
    for lo in range(0, n, chunk):
        q, m = pipeline.predict_quantiles(inputs[lo:lo + chunk], prediction_length=h, quantile_levels=levels,
                                          batch_size=batch_size, context_length=context_length,
                                          limit_prediction_length=False)
        quantiles += [t.float().cpu() for t in q]
        medians += [t.float().cpu() for t in m]
        if progress is not None:
            progress(min(lo + chunk, n), n)
    q = np.sort(torch.stack(quantiles).numpy(), axis=-1)  # (series, targets, steps, levels), in order
    point = torch.stack(medians).numpy()  # (series, targets, steps)
    targets = roles.targets
    t = len(targets)
    frame = pd.DataFrame({
        roles.id: np.repeat(p.ids, t * h),
        roles.timestamp: np.repeat(p.timestamps[:, None, :], t, axis=1).reshape(-1),
        **({TARGET_NAME: np.tile(np.repeat(targets, h), n)} if t > 1 else {}),
        POINT: point.reshape(-1),
        **{col: q[..., i].reshape(-1) for i, col in enumerate(quantile_columns(levels))},
    })
    info = {
        "series": n, "rows": len(frame), "id_column": roles.id, "prediction_length": h, "frequency": p.frequency,
        "quantile_levels": levels, "columns": list(frame.columns), "targets": targets,
        "known_covariates": roles.known_covariates, "past_covariates": roles.past_covariates,
        "first_timestamp": str(pd.Timestamp(p.timestamps.min())) if n else None,
        "last_timestamp": str(pd.Timestamp(p.timestamps.max())) if n else None,
        "seconds": round(time.monotonic() - started, 3),
    }
    log.info("forecast: %d series x %d steps in %.1f s", n, h, info["seconds"])
    return Forecast(frame, info, history_sample(p.data, roles, h))


def forecast_frame(pipeline, data, roles: ColumnRoles, prediction_length: int, *, future=None,
                   where: str = "the data", future_where: str = "the future file", **options) -> Forecast:
    """prepare, then predict with `pipeline` (options: predict's)."""
    prepared = prepare(data, roles, prediction_length, future=future, min_length=patch_size(pipeline),
                       where=where, future_where=future_where)
    return predict(pipeline, prepared, **options)


def forecast_files(load_pipeline: Callable[[], Any], files: Sequence[Path], roles: ColumnRoles,
                   prediction_length: int, *, future_files: Sequence[Path] | None = None,
                   about: dict[str, Any] | None = None, where: str = "the data", future_where: str = "the future file",
                   **options) -> Forecast:
    """The forecast of a dataset's files (and the future values' files) in the model's roles: the
    inputs checked first, then the model loaded (`load_pipeline()`), then predict (options:
    predict's). `about` (the model, the data's fingerprint) goes into forecast.json first."""
    from .dataset import load_long_frame

    data = load_long_frame(files, roles)
    future = None
    if future_files:
        import pandas as pd

        future = pd.concat([pd.read_parquet(f) for f in future_files], ignore_index=True)
    prepared = prepare(data, roles, prediction_length, future=future, where=where, future_where=future_where)
    result = predict(load_pipeline(), prepared, **options)
    result.info = {**(about or {}), **result.info}
    return result
