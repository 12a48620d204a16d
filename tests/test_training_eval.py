"""The metrics (WQL, MASE, seasonal naive) on hand-computed cases; the backtest windows are in
test_backtest.py."""
from __future__ import annotations

import numpy as np
import pytest

from instance.model.evaluation import (
    QUANTILE_LEVELS,
    mase,
    seasonal_naive,
    seasonality_of,
    wql,
)


def test_wql_is_zero_for_a_perfect_forecast_and_known_otherwise():
    y = np.array([[1.0, 2.0]])
    perfect = np.repeat(y[..., None], len(QUANTILE_LEVELS), axis=-1)
    assert wql(y, perfect) == 0.0
    zeros = np.zeros_like(perfect)
    # Under-forecasting by y: pinball = q*y, so 2*q*Σy/Σy = 2q, averaged over q = 2 * 0.5.
    assert wql(y, zeros) == pytest.approx(1.0)
    assert wql(np.zeros((1, 2)), zeros) is None  # no scale to weigh by


def test_mase_scales_by_the_in_sample_seasonal_error():
    past = [np.array([0.0, 1.0, 2.0, 3.0])]
    assert mase(np.array([[2.0, 4.0]]), np.array([[1.0, 3.0]]), past, season=1) == pytest.approx(1.0)
    assert mase(np.array([[2.0, 4.0]]), np.array([[1.0, 3.0]]), past, season=2) == pytest.approx(0.5)
    # A constant history has no scale: left out, and with nothing left there is no score.
    assert mase(np.array([[1.0]]), np.array([[1.0]]), [np.ones(5)], season=1) is None


def test_seasonal_naive_repeats_the_last_season():
    out = seasonal_naive([np.arange(1.0, 7.0)], 5, season=3)
    assert out.tolist() == [[4.0, 5.0, 6.0, 4.0, 5.0]]
    assert seasonal_naive([np.array([1.0, 2.0])], 3, season=24).tolist() == [[2.0, 2.0, 2.0]]


@pytest.mark.parametrize("freq,season", [("h", 24), ("D", 7), ("15min", 60), ("W-SUN", 52), ("MS", 12), (None, 1), ("weird", 1)])
def test_seasonality_from_frequency(freq, season):
    assert seasonality_of(freq) == season
