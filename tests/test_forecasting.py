"""Forecasts past the end of every series (instance/model/forecasting.py): equal to Chronos-2's own
predict_df on the same model and data, quantiles in order, known covariates' future values taken
(and checked), and every input the model cannot forecast from refused in one sentence before the
model runs. The run's forecast is in tests/test_agent_run.py; the command in tests/test_forecast_cli.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instance.model.basemodel import build_scratch
from instance.model.covariates import roles_of_frame
from instance.model.forecasting import (POINT, TARGET_NAME, ForecastInputError, check_roles, forecast_files,
                                        forecast_frame, quantile_columns)
from instance.protocol.columns import ColumnNames
from tests.agent_fixtures import synthetic_frame, write_parquet
from tests.test_covariates import promo_frame

H, C = 8, 64
LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
PROMO = ColumnNames("item_id", "timestamp", ("sales",), ("promo",))


@pytest.fixture(scope="module")
def model():
    pipeline = build_scratch("tiny", C, seed=3, on="cpu")
    pipeline.model.eval()  # predict_df leaves dropout as it finds it; forecast_frame turns it off
    return pipeline


def _future(frame: pd.DataFrame, h: int = H, shift: float = 0.0) -> pd.DataFrame:
    """The promo values of the next h days of every series, continuing its pattern (+ shift)."""
    rows = []
    for item, g in frame.groupby("item_id", sort=True):
        last, base = g["timestamp"].iloc[-1], g["promo"].iloc[-1]
        rows.append(pd.DataFrame({"item_id": item, "timestamp": pd.date_range(last, periods=h + 1, freq="D")[1:],
                                  "promo": base + np.arange(1, h + 1) + shift}))
    return pd.concat(rows, ignore_index=True)


def test_equals_predict_df_with_quantiles_in_order(model):
    frame = synthetic_frame(n_items=5, length=80, covariate=False)
    roles = roles_of_frame(frame)
    ours = forecast_frame(model, frame, roles, H, batch_size=2, context_length=C).frame
    theirs = model.predict_df(frame, prediction_length=H, batch_size=2, context_length=C)
    assert list(ours.columns) == ["item_id", "timestamp", POINT, *quantile_columns(LEVELS)]
    assert len(ours) == 5 * H
    pd.testing.assert_frame_equal(ours[["item_id", "timestamp"]], theirs[["item_id", "timestamp"]].astype({"item_id": object}),
                                  check_dtype=False)
    q = quantile_columns(LEVELS)
    np.testing.assert_allclose(ours[POINT], theirs[POINT], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[q].to_numpy(), np.sort(theirs[q].to_numpy(), axis=1), rtol=1e-5, atol=1e-6)
    assert (np.diff(ours[q].to_numpy(), axis=1) >= 0).all()
    # Timestamps continue each series at its own frequency.
    assert ours["timestamp"].iloc[0] == frame["timestamp"].iloc[79] + pd.Timedelta(hours=1)


def test_equals_predict_df_with_covariates_and_two_targets(model):
    frame = promo_frame(n_items=3)
    frame["returns"] = frame["sales"] * 0.1
    spec = ColumnNames("item_id", "timestamp", ("sales", "returns"), ("promo",))
    roles = roles_of_frame(frame, spec)
    future = _future(frame)
    ours = forecast_frame(model, frame, roles, H, future=future, batch_size=4, context_length=C).frame
    theirs = model.predict_df(frame, future_df=future, target=["sales", "returns"], prediction_length=H,
                              batch_size=4, context_length=C)
    assert list(ours.columns[:4]) == ["item_id", "timestamp", TARGET_NAME, POINT]
    assert list(ours[TARGET_NAME]) == list(theirs[TARGET_NAME])
    q = quantile_columns(LEVELS)
    np.testing.assert_allclose(ours[POINT], theirs[POINT], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[q].to_numpy(), np.sort(theirs[q].to_numpy(), axis=1), rtol=1e-5, atol=1e-5)


def test_the_known_covariates_future_values_change_the_forecast(model):
    frame = promo_frame(n_items=3)
    roles = roles_of_frame(frame, PROMO)
    one = forecast_frame(model, frame, roles, H, future=_future(frame), context_length=C).frame
    other = forecast_frame(model, frame, roles, H, future=_future(frame, shift=500.0), context_length=C).frame
    assert not np.allclose(one[POINT], other[POINT])
    # A future given in another row order is the same future.
    shuffled = _future(frame).sample(frac=1.0, random_state=1)
    again = forecast_frame(model, frame, roles, H, future=shuffled, context_length=C).frame
    np.testing.assert_allclose(one[POINT], again[POINT], rtol=1e-6)


def test_files_in_and_the_progress_heard(model, tmp_path):
    frame = synthetic_frame(n_items=40, length=64, covariate=False)
    path = write_parquet(tmp_path / "d.parquet", frame)
    heard = []
    result = forecast_files(lambda: model, [path], roles_of_frame(frame), H, about={"model": "m"}, batch_size=2,
                            progress=lambda done, total: heard.append((done, total)))
    assert result.info["model"] == "m" and result.info["series"] == 40 and result.info["rows"] == 40 * H
    assert result.info["id_column"] == "item_id"  # what the sample below and the report select series by
    assert heard[-1] == (40, 40) and len(heard) == 2  # chunks of 16 batches of 2
    written = result.write(tmp_path / "out")
    assert [p.name for p in written] == ["forecast.parquet", "forecast.json", "history.parquet", "sample.parquet"]
    # For the report's fan charts: the last points of 6 series spread over the data's order, as they are.
    history = pd.read_parquet(tmp_path / "out" / "history.parquet")
    order = list(dict.fromkeys(result.frame["item_id"]))
    kept = list(dict.fromkeys(history["item_id"]))
    assert len(kept) == 6 and kept[0] == order[0] and kept[-1] == order[-1] and kept == sorted(kept, key=order.index)
    points = max(4 * H, 48)
    assert (history.groupby("item_id").size() == points).all()
    ends = frame.sort_values(["item_id", "timestamp"]).groupby("item_id").tail(points)
    pd.testing.assert_frame_equal(history, ends[ends["item_id"].isin(kept)].reset_index(drop=True), check_dtype=False)
    # ... and the forecast of those 6 alone, so the report need not read every series' forecast.
    sample = pd.read_parquet(tmp_path / "out" / "sample.parquet")
    pd.testing.assert_frame_equal(sample, result.frame[result.frame["item_id"].isin(kept)].reset_index(drop=True))


# -- what is refused, before the model runs ---------------------------------------------------------
def _refused(model, frame, roles, future=None, **kw) -> str:
    with pytest.raises(ForecastInputError) as err:
        forecast_frame(model, frame, roles, H, future=future, context_length=C, **kw)
    return str(err.value)


def test_a_model_with_known_covariates_needs_their_future(model):
    frame = promo_frame(n_items=2)
    assert "trained with known covariates (promo)" in _refused(model, frame, roles_of_frame(frame, PROMO))


@pytest.mark.parametrize("spoil, said", [
    (lambda f: f[f["item_id"] != "item-1"], "has no rows for 1 series (the first: 'item-1')"),
    (lambda f: f.iloc[1:], "has 7 rows for series 'item-0'"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "has 9 rows for series 'item-0'"),
    (lambda f: f.assign(sales=1.0), "has column(s) 'sales' besides the id, the timestamp and the known covariates"),
    (lambda f: f.drop(columns="promo"), "has no column 'promo'"),
    (lambda f: f.assign(item_id=f["item_id"].replace("item-0", "item-9")), "has no rows for 1 series"),
    (lambda f: f.assign(timestamp=f["timestamp"] + pd.Timedelta(days=1)), "do not continue the data"),
    (lambda f: f.assign(promo=f["promo"].where(f.index != 3)), "known covariate 'promo' has missing values"),
])
def test_a_future_file_that_does_not_fit_is_refused(model, spoil, said):
    frame = promo_frame(n_items=2)
    message = _refused(model, frame, roles_of_frame(frame, PROMO), spoil(_future(frame)))
    assert said in message and message.startswith("the future file")


def test_series_too_short_or_without_a_frequency_are_refused(model):
    frame = synthetic_frame(n_items=2, length=40, covariate=False)
    short = frame[(frame["item_id"] == "item-0") | (frame.index % 40 < 10)].reset_index(drop=True)
    assert "1 series are shorter than 16 points (the first: 'item-1', 10 points)" in _refused(model, short, roles_of_frame(short))
    ragged = frame.drop(index=[3, 7, 8, 20]).reset_index(drop=True)
    assert "frequency cannot be inferred" in _refused(model, ragged, roles_of_frame(ragged))


def test_data_whose_columns_do_not_match_the_model_s_roles_is_refused():
    trained = roles_of_frame(promo_frame(n_items=1), PROMO)
    frame = promo_frame(n_items=1)
    check_roles(roles_of_frame(frame, PROMO), trained, "data.parquet")  # the same roles: fine
    for changed, said in (
        (frame.drop(columns="footfall"), "has no column 'footfall', which the model was trained with as a past covariate"),
        (frame.assign(extra=1.0), "has column(s) 'extra' that the model was not trained with"),
        (frame.assign(store=1.0), "column 'store' is numeric (double) but the model was trained with it categorical"),
    ):
        with pytest.raises(ForecastInputError, match="") as err:
            check_roles(roles_of_frame(changed, PROMO), trained, "data.parquet")
        assert said in str(err.value) and str(err.value).startswith("data.parquet")


# -- the run config's forecast: and launch's check of a local future file ----------------------------
def test_the_run_config_turns_the_forecast_off_or_names_the_future_and_refuses_unknown_keys():
    from instance.protocol.runconfig import ConfigError, parse_config

    assert parse_config({"dataset": "d"}).forecast.enabled
    assert not parse_config({"dataset": "d", "forecast": False}).forecast.enabled
    assert parse_config({"dataset": "d", "forecast": {"future": "f.parquet"}}).forecast.future == "f.parquet"
    with pytest.raises(ConfigError, match=r"^config: forecast.horizon: unknown key; remove it or check its spelling$"):
        parse_config({"dataset": "d", "forecast": {"horizon": 3}})
    with pytest.raises(ConfigError, match="forecast: must be true, false, or a mapping"):
        parse_config({"dataset": "d", "forecast": "yes"})


def test_launch_refuses_a_local_future_file_whose_columns_do_not_fit(tmp_path):
    from automation.datasets import check_local_future
    from automation.errors import BadInput
    from instance.protocol.runconfig import parse_config

    cfg = parse_config({"dataset": "d", "columns": {"target": "sales", "known_covariates": ["promo"]}})
    frame = promo_frame(n_items=2)
    good = write_parquet(tmp_path / "good.parquet", _future(frame))
    assert check_local_future(good, cfg, None).files == [good]
    bad = write_parquet(tmp_path / "bad.parquet", _future(frame).assign(sales=1.0))
    with pytest.raises(BadInput, match="has column\\(s\\) 'sales' besides the id, the timestamp and the known covariates"):
        check_local_future(bad, cfg, None)
    with pytest.raises(BadInput, match="no such file"):
        check_local_future(tmp_path / "nothing.parquet", cfg, None)
