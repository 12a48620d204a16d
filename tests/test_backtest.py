"""The rolling-origin backtest: windows at the end of every series, none of them seen by training;
what the evaluation keeps (forecasts, per-series scores, history) and its shapes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instance.model.evaluation import (
    QUANTILE_COLUMNS,
    backtest_split,
    evaluate,
    sample_items,
    wql,
    wql_by_series,
)
from tests.agent_fixtures import synthetic_frame

H, W = 8, 3


@pytest.fixture(scope="module")
def frame():
    # Unequal lengths: the windows are counted from each series' own end.
    full = synthetic_frame(n_items=4, length=72)
    return full[~((full.item_id == "item-3") & (full.index % 72 < 10))].reset_index(drop=True)


def test_windows_tile_the_end_of_every_series_and_training_sees_none_of_them(frame):
    bt = backtest_split(frame, H, W)
    train = bt.train()
    evaluated = []
    for k in range(W):
        window = bt.window(k)
        assert window.actuals.shape == (4, 1, H) and window.timestamps.shape == (4, H)
        for i, item in enumerate(window.items):
            series = frame[frame.item_id == item]
            end = len(series) - (W - k - 1) * H
            assert np.array_equal(window.actuals[i, 0], series.target.to_numpy()[end - H:end])
            # A window's context is everything before it, and nothing of it.
            ctx = window.context[window.context.item_id == item]
            assert ctx.timestamp.max() < window.timestamps[i, 0]
            assert len(ctx) == end - H
        evaluated.append(pd.DataFrame({"item_id": np.repeat(window.items, H), "timestamp": window.timestamps.reshape(-1)}))
    evaluated = pd.concat(evaluated)
    # No leakage: no evaluated point is in what training gets, and every other point is.
    seen = set(zip(train.item_id, train.timestamp))
    assert not seen & set(zip(evaluated.item_id, evaluated.timestamp))
    assert len(train) + len(evaluated) == len(frame)
    assert evaluated.groupby("item_id").size().eq(W * H).all()
    # The windows follow one another without a gap: W*H consecutive points at the end.
    last = frame.groupby("item_id").timestamp.max()
    assert (evaluated.groupby("item_id").timestamp.max() == last).all()


def test_training_data_feeds_chronos_only_the_points_before_the_first_window(frame, tmp_path):
    from instance.model.evaluation import training_data

    path = tmp_path / "d.parquet"
    frame.to_parquet(path, index=False)
    bt, inputs = training_data([path], H, W)
    lengths = frame.groupby("item_id").size()
    assert [x["context"].shape[-1] for x in inputs] == [n - W * H for n in lengths]


def test_a_sample_of_series_keeps_their_rows_and_windows(frame):
    """What evaluate scores on a large dataset (restrict): the named series whole, with their windows."""
    picked = ["item-1", "item-3"]
    sample = backtest_split(frame, H, W).restrict(picked)
    pd.testing.assert_frame_equal(sample.frame, frame[frame.item_id.isin(picked)].reset_index(drop=True))
    window = sample.window(W - 1)
    last = frame[frame.item_id == "item-3"].target.to_numpy()[-H:]
    assert window.items == picked and np.array_equal(window.actuals[1, 0], last)
    assert sample.train().groupby("item_id").size().to_dict() == {
        item: int((frame.item_id == item).sum()) - W * H for item in picked}
    # Named in another order, the series keep the backtest's own (that of their rows and actuals).
    again = backtest_split(frame, H, W).restrict(picked[::-1]).window(W - 1)
    assert again.items == picked and np.array_equal(again.actuals, window.actuals)


def test_per_series_wql_weights_like_the_whole():
    y = np.array([[1.0, 2.0], [10.0, 10.0]])
    q = np.repeat(np.zeros_like(y)[..., None], 9, axis=-1)
    assert wql_by_series(y, q) == pytest.approx([1.0, 1.0])
    assert wql(y, q) == pytest.approx(1.0)
    assert np.isnan(wql_by_series(np.zeros((1, 2)), q[:1]))[0]


def test_a_large_dataset_is_sampled_the_same_way_every_time():
    items = [f"s{i:05d}" for i in range(20)]
    assert sample_items(items, 50) == items
    picked = sample_items(items, 5)
    assert picked == sample_items(items, 5) and picked == sorted(picked) and len(set(picked)) == 5


class MedianOfContext:
    """A stand-in pipeline: every quantile is the context's last value, crossing on purpose."""

    def predict_quantiles(self, inputs, prediction_length, quantile_levels, **kw):
        import torch

        out = []
        for x in inputs:
            last = float(np.asarray(x["context"])[0, -1])
            levels = torch.tensor(quantile_levels[::-1], dtype=torch.float32)  # descending: crossed
            out.append(torch.full((1, prediction_length, len(quantile_levels)), last) + levels)
        return out, None


def test_the_evaluation_keeps_forecasts_scores_and_history_in_shape(frame, tmp_path):
    bt = backtest_split(frame, H, W)
    result = evaluate(MedianOfContext(), None, bt, batch_size=8)
    # The frame has a covariate (temperature): the model is scored on the target alone too.
    assert set(result.per_window) == {"finetuned", "finetuned_no_covariates", "seasonal_naive"}
    assert result.metrics["zero_shot"] is None
    assert all(len(rows) == W for rows in result.per_window.values())
    for model, rows in result.per_window.items():
        mean = np.mean([r["wql"] for r in rows])
        assert result.metrics[model]["wql"] == pytest.approx(mean)

    f = result.forecasts
    assert len(f) == 4 * W * H * 3  # series x windows x horizon x models
    assert list(f.columns) == ["item_id", "window", "model", "timestamp", "target", *QUANTILE_COLUMNS]
    q = f[QUANTILE_COLUMNS].to_numpy()
    assert (np.diff(q, axis=1) >= 0).all(), "quantiles are in increasing order in every row"
    s = result.series_scores
    assert len(s) == 4 * W * 3 and set(s.columns) == {"item_id", "window", "model", "wql", "mase"}
    # History holds every evaluated point and some context before the first window.
    merged = f[f.model == "finetuned"].merge(result.history, on=["item_id", "timestamp"], suffixes=("", "_h"))
    assert len(merged) == 4 * W * H and np.allclose(merged.target, merged.target_h)
    assert result.history.groupby("item_id").size().gt(W * H).all()

    written = {p.name for p in result.write(tmp_path / "evaluation")}
    assert written == {"summary.json", "forecasts.parquet", "series_scores.parquet", "history.parquet"}
    back = pd.read_parquet(tmp_path / "evaluation" / "forecasts.parquet")
    assert len(back) == len(f) and back.timestamp.dtype.kind == "M"
    assert result.info["windows"] == W and result.info["sample"].startswith("all 4 series")
