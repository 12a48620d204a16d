"""The forecast a run left (`{env}/{run_id}/forecasts/`), read for the report's fan charts of the future.

A run's forecast.parquet holds every series (a hundred thousand of them for a large run: about
100 MB at 24 steps), so the report reads only the few series it draws: those whose history tail
the run kept beside it (history.parquet, instance/model/forecasting.py `history_sample`), from
the small file of their forecast rows the run kept too (sample.parquet). A run from before that
file reads those series out of forecast.parquet; one from before history.parquet falls back to
the backtest's history (evaluation/history.parquet: the end of the series whose backtest
forecasts were kept), and failing that draws the first series without history.

Names: forecast.parquet keeps the data's own id and timestamp names (forecast.json `columns`
starts with them); what this returns uses the evaluation files' (item_id, timestamp, target), and
with several targets each (series, target) is one "item · target", as the rest of the report.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

from instance.protocol.artifacts import get_json

from ..context import Target

CHARTS = 6  # fan charts of the future a report shows at most
_RUN_IN_URI = re.compile(r"(run-\d{8}-\d{6}-[0-9a-f]{4})/models/")


@dataclass
class FutureForecast:
    info: dict[str, Any]  # forecast.json
    frame: Any  # the charted series' forecast: item_id, timestamp, predictions, the quantile columns
    history: Any  # their last points: item_id, timestamp, target (None: no history to draw)
    items: list[str]  # the charted series, in the order they are drawn

    @property
    def model_run(self) -> str | None:
        """The run whose model made this forecast (a forecast-only run names another run's model)."""
        found = _RUN_IN_URI.search(str(self.info.get("model") or ""))
        return found.group(1) if found else None

    @property
    def quantile_columns(self) -> list[str]:
        return [str(q) for q in self.info.get("quantile_levels") or []]


def load_future(target: Target, run_id: str, present: set[str], backtest_history=None) -> FutureForecast | None:
    """`present`: the keys under the run's forecasts/ prefix (relative). None when the run left no
    forecast (it was off, it was killed first, or it had no future values for its covariates)."""
    import pandas as pd
    import pyarrow.parquet as pq

    if "forecast.parquet" not in present or "forecast.json" not in present:
        return None
    layout = target.layout
    info = get_json(target.s3, target.bucket, layout.forecast_info(run_id)) or {}
    columns = info.get("columns") or []
    if len(columns) < 2:
        return None
    id_col, time_col = info.get("id_column", columns[0]), columns[1]  # runs before id_column: the first
    history = None
    if "history.parquet" in present:
        history = _normalise(pd.read_parquet(_body(target, layout.forecast_history(run_id))), id_col, time_col)
    elif backtest_history is not None and len(backtest_history):
        history = backtest_history
    if history is not None and "sample.parquet" in present:
        frame = _normalise(pd.read_parquet(_body(target, layout.forecast_sample(run_id))), id_col, time_col)
        return FutureForecast(info, frame, history, _spread(_drawn(frame, history), CHARTS))
    body = _body(target, layout.forecast_file(run_id))
    if history is not None:
        raw = history["raw_id"].unique().tolist() if "raw_id" in history else _raw_ids(history)
    else:
        ids = pq.read_table(body, columns=[id_col]).column(0).to_pandas()
        raw = ids.drop_duplicates().head(CHARTS).tolist()
        body.seek(0)
    table = pq.read_table(body, filters=[(id_col, "in", [str(r) for r in raw])])
    frame = _normalise(table.to_pandas(), id_col, time_col)
    return FutureForecast(info, frame, history, _spread(_drawn(frame, history), CHARTS))


def _drawn(frame, history) -> list[str]:
    """The forecast's items, in its order, that have history to draw (all of them, if none has)."""
    items = list(dict.fromkeys(frame["item_id"]))
    if history is None:
        return items
    drawn = set(history["item_id"])
    return [i for i in items if i in drawn] or items


def _spread(items: list[str], n: int) -> list[str]:
    """n of the items, evenly over their order, the first and the last among them."""
    if len(items) <= n:
        return items
    return [items[round(k * (len(items) - 1) / (n - 1))] for k in range(n)]


def _body(target: Target, key: str) -> io.BytesIO:
    return io.BytesIO(target.s3.get_object(Bucket=target.bucket, Key=key)["Body"].read())


def _normalise(frame, id_col: str, time_col: str):
    """The data's id and timestamp names to the report's; each (series, target) one item."""
    frame = frame.rename(columns={id_col: "item_id", time_col: "timestamp"})
    frame["raw_id"] = frame["item_id"].astype(str)
    if "target_name" in frame:
        frame["item_id"] = frame["item_id"].astype(str) + " · " + frame["target_name"].astype(str)
    return frame


def _raw_ids(history) -> list[str]:
    """The data's ids of the backtest history's items ("item · target" with several targets)."""
    ids = history["item_id"].astype(str)
    if "target_name" in history:
        ids = [i.rsplit(" · ", 1)[0] for i in ids]
    return list(dict.fromkeys(ids))
