"""Hold-out evaluation: WQL and MASE on the last `prediction_length` points of every series.

The same split feeds training (which never sees the held-out points) and scoring. Scores are
reported for the fine-tuned model, the base model zero-shot (when it is a pretrained model) and
a seasonal-naive baseline, so a fine-tune that did not help is visible at a glance.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .dataset import ID, TARGET, TIME

log = logging.getLogger(__name__)

QUANTILE_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
MEDIAN = QUANTILE_LEVELS.index(0.5)
# Seasonal period by pandas frequency prefix (as in GluonTS/AutoGluon's defaults).
SEASONALITY = {"s": 60, "min": 60, "t": 60, "h": 24, "d": 7, "b": 5, "w": 52, "m": 12, "ms": 12, "me": 12, "q": 4, "qs": 4, "qe": 4, "y": 1, "a": 1, "ys": 1, "ye": 1}
# Scoring a huge dataset would dominate a short run; the first series (sorted by id) suffice.
MAX_EVAL_SERIES = 5000


@dataclass
class HoldoutSplit:
    context: Any  # frame: every series without its last prediction_length points
    actuals: Any  # ndarray (n_series, prediction_length)
    items: list[str]
    frequency: str | None
    seasonality: int


def seasonality_of(freq: str | None) -> int:
    if not freq:
        return 1
    base = freq.split("-")[0].lstrip("0123456789").lower()
    return SEASONALITY.get(base, 1)


def holdout_split(data, prediction_length: int) -> HoldoutSplit:
    """`data` (an Arrow table or a pandas frame) sorted by (item_id, timestamp), as
    dataset.load_long_table returns it.

    Vectorised over the rows: series are the runs of equal ids, each row's place from its series'
    end comes from the run ends, and the context is one Arrow filter, converted to pandas once.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    n = table.num_rows
    ids = table.column(ID)
    change = pc.not_equal(ids.slice(1), ids.slice(0, max(n - 1, 0))).to_numpy() if n > 1 else np.zeros(0, bool)
    starts = np.flatnonzero(np.r_[n > 0, change]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n]
    lengths = ends - starts
    held = (np.repeat(ends, lengths) - np.arange(n) - 1) < prediction_length
    actuals = table.column(TARGET).filter(pa.array(held)).to_numpy().astype("float64")
    items = [str(i) for i in ids.take(pa.array(starts)).to_pylist()]
    first = next((i for i, size in enumerate(lengths) if size >= 3), None)
    freq = None
    if first is not None:
        freq = _frequency(table.column(TIME).slice(int(starts[first]), int(lengths[first])).to_pandas())
    context = table.filter(pa.array(~held)).to_pandas()
    return HoldoutSplit(context, actuals.reshape(len(items), prediction_length), items, freq, seasonality_of(freq))


def _frequency(times) -> str | None:
    import warnings

    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas 3 warns that infer_freq will return an offset
            freq = pd.infer_freq(pd.DatetimeIndex(times))
    except (TypeError, ValueError):
        return None
    return getattr(freq, "freqstr", freq)


def training_data(files, prediction_length: int):
    """(hold-out split, Chronos inputs of its context): what training and scoring start from."""
    from .dataset import load_long_table

    split = holdout_split(load_long_table(files), prediction_length)
    return split, to_chronos_inputs(split.context, prediction_length)


def to_chronos_inputs(context_df, prediction_length: int):
    """Long frame → Chronos prepared inputs; extra numeric columns become past covariates.

    The frame comes from holdout_split: grouped by item and in time order (load_long_table sorts
    it), and checked by the validator. So Chronos's own validation, which re-sorts a copy of the
    whole frame (seconds and a frame's worth of memory on 10 M rows), is skipped.
    """
    from chronos.chronos2.preprocess import from_data_frame

    return from_data_frame(context_df, target_columns=[TARGET], prediction_length=prediction_length,
                           validate_inputs=False)


def wql(actuals, quantiles) -> float | None:
    """Weighted quantile loss: 2·Σ pinball / Σ|y|, averaged over QUANTILE_LEVELS."""
    import numpy as np

    mask = np.isfinite(actuals)
    denom = np.abs(actuals[mask]).sum()
    if denom == 0:
        return None
    losses = []
    for j, q in enumerate(QUANTILE_LEVELS):
        diff = actuals - quantiles[..., j]
        pinball = np.where(diff >= 0, q * diff, (q - 1) * diff)
        losses.append(2 * pinball[mask].sum() / denom)
    return float(np.mean(losses))


def mase(actuals, point, insample: list, season: int) -> float | None:
    """Mean absolute scaled error, each series scaled by its in-sample seasonal-naive error.
    Series whose scale is zero (constant) are left out rather than dividing by zero."""
    import numpy as np

    scores = []
    for y, f, past in zip(actuals, point, insample):
        m = season if len(past) > season else 1
        diffs = np.abs(past[m:] - past[:-m])
        scale = np.nanmean(diffs) if diffs.size else np.nan
        err = np.abs(y - f)
        if not np.isfinite(scale) or scale == 0 or not np.isfinite(err).any():
            continue
        scores.append(np.nanmean(err) / scale)
    return float(np.mean(scores)) if scores else None


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


def _insample(split: HoldoutSplit) -> list:
    return [g.to_numpy(dtype="float64") for _, g in split.context.groupby(ID, sort=False)[TARGET]]


def score_pipeline(pipeline, split: HoldoutSplit, prediction_length: int, batch_size: int, context_length: int | None = None) -> dict[str, float | None]:
    import numpy as np
    import torch

    inputs = to_chronos_inputs(split.context, prediction_length)
    quantiles, _ = pipeline.predict_quantiles(
        inputs,
        prediction_length=prediction_length,
        quantile_levels=QUANTILE_LEVELS,
        batch_size=batch_size,
        context_length=context_length,
    )
    q = torch.stack([x[0] for x in quantiles]).float().cpu().numpy()  # (series, horizon, levels)
    q = np.asarray(q, dtype="float64")
    return {
        "wql": wql(split.actuals, q),
        "mase": mase(split.actuals, q[..., MEDIAN], _insample(split), split.seasonality),
    }


def score_seasonal_naive(split: HoldoutSplit, prediction_length: int) -> dict[str, float | None]:
    import numpy as np

    insample = _insample(split)
    point = seasonal_naive(insample, prediction_length, split.seasonality)
    q = np.repeat(point[..., None], len(QUANTILE_LEVELS), axis=-1)
    return {"wql": wql(split.actuals, q), "mase": mase(split.actuals, point, insample, split.seasonality)}


def limit_series(split: HoldoutSplit, max_series: int = MAX_EVAL_SERIES) -> HoldoutSplit:
    if len(split.items) <= max_series:
        return split
    keep = split.items[:max_series]
    context = split.context[split.context[ID].isin(set(keep))].reset_index(drop=True)
    return HoldoutSplit(context, split.actuals[:max_series], keep, split.frequency, split.seasonality)


def evaluate(finetuned, base, split: HoldoutSplit, prediction_length: int, batch_size: int, context_length: int | None = None) -> tuple[dict, dict]:
    """(metrics, evaluation info). `base` is None for a scratch model (no zero-shot score)."""
    split = limit_series(split)
    metrics = {
        "finetuned": score_pipeline(finetuned, split, prediction_length, batch_size, context_length),
        "zero_shot": score_pipeline(base, split, prediction_length, batch_size, context_length) if base is not None else None,
        "seasonal_naive": score_seasonal_naive(split, prediction_length),
    }
    info = {
        "series": len(split.items),
        "prediction_length": prediction_length,
        "quantile_levels": QUANTILE_LEVELS,
        "frequency": split.frequency,
        "seasonality": split.seasonality,
        "holdout": "last prediction_length points of every series",
    }
    log.info("evaluation: %s", metrics)
    return metrics, info
