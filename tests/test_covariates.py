"""Covariates as Chronos-2 takes them (instance/model/covariates.py): the roles a run config gives
columns and what it refuses; what Chronos is given in training windows and in backtest windows
(a known covariate's horizon values, and nothing of a past-only one); a categorical column and
two targets through training and the backtest. Refusals through the real CLI are in
tests/test_reliability_bad_inputs.py; a data-parallel run in tests/test_distributed.py; a whole
`--local` run in tests/test_covariates_cli.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from chronos.chronos2.dataset import Chronos2Dataset, DatasetMode

from instance.model.covariates import forecast_inputs, roles_of_frame, training_inputs
from instance.model.dataset import validate_dataset
from instance.model.evaluation import backtest_split, evaluate
from instance.protocol.columns import ColumnNames, ColumnRoles
from instance.protocol.runconfig import ColumnsSpec, ConfigError, parse_config
from tests.agent_fixtures import write_parquet

H, W, C, LENGTH = 8, 2, 64, 72
def names(**columns) -> ColumnNames:
    """The roles as a run config's `columns:` gives them to the validator and to training."""
    return ColumnsSpec(**columns).names()


PROMO = names(target="sales", known_covariates=["promo"])


def promo_frame(n_items: int = 4, length: int = LENGTH) -> pd.DataFrame:
    """`promo` is known into the future and tells where it is: 1000 x item + position (so a
    window's values name themselves); `footfall` is past-only, `store` categorical."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n_items):
        t = np.arange(length)
        frames.append(pd.DataFrame({
            "item_id": f"item-{i}", "timestamp": pd.date_range("2026-01-01", periods=length, freq="D"),
            "sales": 20 + i + 5 * (t % 7 == 5) + rng.normal(0, 0.5, length),
            "footfall": -(1000.0 * i + t),
            "store": np.where(t % 2, "north", "south"),
            "promo": 1000.0 * i + t,
        }))
    return pd.concat(frames, ignore_index=True)


# -- the roles -------------------------------------------------------------------------------------
def test_roles_default_to_the_long_format_and_read_back_from_json():
    cfg = parse_config({"dataset": "d.parquet"})
    assert cfg.columns.names() == ColumnNames() and ColumnNames().is_default
    assert cfg.columns.targets == ["target"] and cfg.columns.known_covariates == []
    cfg = parse_config({"dataset": "d.parquet", "columns": {"id": "store_id", "timestamp": "day",
                                                            "target": ["sales", "returns"], "known_covariates": ["price"]}})
    assert cfg.columns.names() == ColumnNames("store_id", "day", ("sales", "returns"), ("price",))
    assert ColumnNames.from_json(cfg.columns.names().to_json()) == cfg.columns.names()
    roles = roles_of_frame(promo_frame(), PROMO)
    assert roles.targets == ["sales"] and roles.known_covariates == ["promo"]
    assert roles.past_covariates == ["footfall", "store"]
    assert [c.kind for c in roles.covariates] == ["numeric", "categorical", "numeric"]
    assert roles.model_columns() == ["item_id", "timestamp", "sales", "footfall", "store", "promo"]
    assert ColumnRoles.from_json(roles.to_json()) == roles
    assert roles.to_json()["known_covariates"] == ["promo"]


@pytest.mark.parametrize("columns,expected", [
    ({"target": "price", "known_covariates": ["price"]},
     "columns: column 'price' is both a target and a known covariate; give each column one role"),
    ({"id": "day", "timestamp": "day"}, "column 'day' is both the id and the timestamp"),
    ({"target": ["sales", "sales"]}, "column 'sales' is listed twice as a target"),
    ({"target": []}, "columns.target: must name a column, or a list of columns forecast jointly"),
    ({"known": ["promo"]}, "columns.known: unknown key"),
])
def test_a_column_in_two_roles_is_refused_in_one_sentence(columns, expected):
    with pytest.raises(ConfigError) as err:
        parse_config({"dataset": "d.parquet", "columns": columns})
    assert expected in str(err.value) and str(err.value).count(";") <= 1


def test_the_validator_refuses_what_the_roles_cannot_train_on(tmp_path):
    frame = promo_frame()
    frame["label"] = frame["sales"].astype(str)
    path = write_parquet(tmp_path / "d.parquet", frame)
    refused = validate_dataset([path], C, H, W, names(target="label", known_covariates=["price"]))
    said = {p.column: p.message for p in refused.problems}
    assert said["price"] == ("the run config names it as a known covariate (columns.known_covariates) but the file "
                             "has no such column; fix columns.known_covariates or the data")
    assert said["label"] == "is the target and must be numeric, found large_string"
    assert validate_dataset([path], C, H, W, PROMO).ok


def test_a_known_covariate_missing_where_the_backtest_shows_it_is_refused(tmp_path):
    frame = promo_frame()
    held = frame.groupby("item_id").cumcount(ascending=False) < W * H
    early = frame.index[(frame.item_id == "item-1") & ~held][:5]  # before the windows: Chronos masks a gap
    frame.loc[early, "promo"] = np.nan
    assert validate_dataset([write_parquet(tmp_path / "a.parquet", frame)], C, H, W, PROMO).ok
    late = frame.index[(frame.item_id == "item-2") & held][-3:]
    frame.loc[late, "promo"] = np.nan
    problems = validate_dataset([write_parquet(tmp_path / "b.parquet", frame)], C, H, W, PROMO).problems
    assert [(p.column, p.item) for p in problems] == [("promo", "item-2")]
    assert problems[0].message.startswith(f"the known covariate is missing at 3 of the last {W * H} points, which "
                                          f"the backtest shows the model ({W} windows of {H}; first at 2026-03-11")
    # The same gap in a past-only covariate is no problem: the model never sees its future.
    assert validate_dataset([tmp_path / "b.parquet"], C, H, W, names(target="sales")).ok


# -- what Chronos is given ----------------------------------------------------------------------------
def _rows(prepared, roles: ColumnRoles) -> dict[str, int]:
    """Row of each model column in Chronos's stacked input: targets, past-only, known (its order)."""
    names = [*roles.targets, *roles.past_covariates, *roles.known_covariates]
    assert prepared["n_targets"] == len(roles.targets)
    assert prepared["n_covariates"] == len(roles.covariates)
    assert prepared["n_future_covariates"] == len(roles.known_covariates)
    return {name: i for i, name in enumerate(names)}


def test_training_windows_show_the_known_covariate_over_the_horizon_and_mask_the_rest():
    frame = promo_frame()
    roles = roles_of_frame(frame, PROMO)
    bt = backtest_split(frame, H, W, roles)
    inputs = training_inputs(bt.train(), roles, H)  # what fit is given (evaluation.training_data)
    row = _rows(inputs[0], roles)
    np.random.seed(0)
    dataset = Chronos2Dataset(inputs, context_length=C, prediction_length=H, batch_size=64, output_patch_size=16,
                              min_past=16, mode=DatasetMode.TRAIN)
    batch = next(iter(dataset))
    groups = batch["group_ids"].unique()
    assert len(groups) >= 8
    for g in groups:
        at = (batch["group_ids"] == g).nonzero().flatten()
        context, future = batch["context"][at], batch["future_covariates"][at]
        last = float(context[row["promo"], -1])  # the position just before this window's horizon
        expected = last + torch.arange(1, H + 1, dtype=torch.float32)
        assert torch.equal(future[row["promo"]], expected), "the horizon's promo values, revealed"
        for masked in ("sales", "footfall", "store"):
            assert torch.isnan(future[row[masked]]).all(), f"{masked} over the horizon must be hidden"
        # The horizon lies within what training may see: before the first backtest window.
        assert expected.max() % 1000 < LENGTH - W * H


class Recording:
    """A real pipeline whose every `predict` call is noted (inputs as Chronos gets them)."""

    def __init__(self, pipeline):
        self.pipeline, self.calls = pipeline, []

    def predict_quantiles(self, inputs, **kw):
        self.calls.append(inputs)
        return self.pipeline.predict_quantiles(inputs, **kw)


def test_backtest_windows_give_the_model_the_window_s_known_values_and_nothing_else():
    from instance.model.basemodel import build_scratch

    frame = promo_frame()
    roles = roles_of_frame(frame, PROMO)
    bt = backtest_split(frame, H, W, roles)
    model = Recording(build_scratch("tiny", C, on="cpu"))
    result = evaluate(model, None, bt, batch_size=64, context_length=C)
    # Per window: the model with its covariates, then the same model given the target alone.
    assert len(model.calls) == 2 * W and set(result.metrics) >= {"finetuned", "finetuned_no_covariates"}
    for k in range(W):
        with_covariates, alone = model.calls[2 * k], model.calls[2 * k + 1]
        row = _rows(with_covariates[0], roles)
        _rows(alone[0], roles.target_only())
        dataset = Chronos2Dataset(with_covariates, context_length=C, prediction_length=H, batch_size=64,
                                  output_patch_size=16, mode=DatasetMode.TEST)  # as predict builds it
        batch = next(iter(dataset))
        window = bt.window(k)
        for i, item in enumerate(window.items):
            at = (batch["group_ids"] == i).nonzero().flatten()
            context, future = batch["context"][at], batch["future_covariates"][at]
            first = LENGTH - (W - k) * H  # the window's first position in the series
            assert float(context[row["promo"], -1]) % 1000 == first - 1, "the context ends where the window starts"
            promo = window.future.loc[window.future.item_id == item, "promo"].to_numpy(dtype="float32")
            assert torch.equal(future[row["promo"]], torch.from_numpy(promo))
            assert [v % 1000 for v in promo] == list(range(first, first + H))
            for hidden in ("sales", "footfall", "store"):
                assert torch.isnan(future[row[hidden]]).all(), f"{hidden} of the window must not reach the model"
        assert all(x["n_covariates"] == 0 for x in alone)


def test_a_categorical_known_covariate_is_encoded_by_chronos_in_the_window_too():
    frame = promo_frame().assign(promo=lambda f: np.where(f["promo"] % 3 == 0, "big", "none"))
    roles = roles_of_frame(frame, PROMO)
    assert roles.get("promo").kind == "categorical"
    window = backtest_split(frame, H, W, roles).window(0)
    prepared = forecast_inputs(window.context, window.future, roles, H)
    row = _rows(prepared[0], roles)
    future = prepared[0]["future_covariates"]
    assert torch.isfinite(future[row["promo"]]).all() and torch.isnan(future[row["footfall"]]).all()
    assert future[row["promo"]].unique().numel() == 2  # target-encoded: one value a category (per series)


# -- training and scoring with covariates ------------------------------------------------------------
def _train(frame, spec: ColumnNames, tmp_path, steps: int = 6):
    from instance.model.basemodel import build_scratch
    from instance.model.evaluation import training_data
    from instance.model.training import TrainingSettings, train_model

    path = write_parquet(tmp_path / "data.parquet", frame)
    assert validate_dataset([path], C, H, W, spec).ok
    bt, inputs = training_data([path], H, W, spec)
    settings = TrainingSettings(prediction_length=H, context_length=C, num_steps=steps, batch_size=16,
                                learning_rate=1e-3, eval_windows=W)
    outcome = train_model(build_scratch("tiny", C, on="cpu"), inputs, settings, tmp_path / "train")
    assert outcome.steps_done == steps
    return bt, evaluate(outcome.pipeline, None, bt, batch_size=64, context_length=C)


def test_a_categorical_string_column_trains_and_is_scored(tmp_path):
    frame = promo_frame()
    frame["weekday"] = frame["timestamp"].dt.day_name()  # a string Chronos encodes
    frame["open"] = frame["timestamp"].dt.day_of_week < 6  # bool: categorical too
    frame["region"] = np.where(frame["item_id"].isin(["item-0", "item-1"]), "east", "west")  # static: constant a series
    bt, result = _train(frame, names(target="sales", known_covariates=["weekday", "open"]), tmp_path)
    assert [c.kind for c in bt.roles.covariates] == ["numeric", "categorical", "numeric", "categorical", "categorical",
                                                     "categorical"]
    for model in ("finetuned", "finetuned_no_covariates", "seasonal_naive"):
        assert 0 < result.metrics[model]["wql"] < 10 and np.isfinite(result.metrics[model]["mase"])
    assert result.info["covariates"] | {"note": ""} == {"known": ["weekday", "open"],
                                                        "past": ["footfall", "store", "promo", "region"], "note": ""}


def test_two_targets_train_jointly_and_are_scored_each(tmp_path):
    frame = promo_frame()
    frame["returns"] = 0.1 * frame["sales"] + 1
    bt, result = _train(frame, names(target=["sales", "returns"], known_covariates=["promo"]), tmp_path)
    per_target = result.info["per_target"]
    assert list(per_target) == ["sales", "returns"] and result.info["targets"] == ["sales", "returns"]
    for model in ("finetuned", "finetuned_no_covariates", "seasonal_naive"):
        scores = [per_target[t][model]["wql"] for t in ("sales", "returns")]
        assert all(0 < s < 10 for s in scores)
        assert result.metrics[model]["wql"] == pytest.approx(np.mean(scores))  # overall: the mean of the targets
    s = result.series_scores
    assert set(s.target_name) == {"sales", "returns"} and len(s) == 4 * W * 3 * 2
    f = result.forecasts
    returns = f[(f.target_name == "returns") & (f.model == "finetuned") & (f.item_id == "item-1")]
    truth = frame[frame.item_id == "item-1"]["returns"].to_numpy()[-W * H:]
    assert np.allclose(returns.sort_values("timestamp").target.to_numpy(), truth)
    assert set(result.history.target_name) == {"sales", "returns"}


# -- training inputs straight from the Arrow table ---------------------------------------------------
def every_kind_of_column(path):
    """Unequal series, a NaN target, and covariates of each kind: numeric past-only (an integer with
    nulls), string, bool and dictionary categoricals (the dictionary unsorted, with a value no row
    uses), numeric and categorical known ones; written as Arrow writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = promo_frame(n_items=5)
    frame = frame[~((frame.item_id == "item-3") & (frame.index % LENGTH < 9))].reset_index(drop=True)
    frame.loc[3, "sales"] = np.nan
    frame["returns"] = 0.1 * frame["sales"] + 1
    t = frame.groupby("item_id").cumcount().to_numpy()
    table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
        "visits", pa.array(np.where(t % 5 == 0, None, t % 11), type=pa.int64())).append_column(
        "open", pa.array(t % 7 < 6)).append_column(
        "size", pa.DictionaryArray.from_arrays(pa.array(t % 3, pa.int8()), pa.array(["west", "east", "north", "gone"]))
    ).append_column("weekday", pa.array(frame["timestamp"].dt.day_name().to_numpy(dtype=object)))
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("targets", [["sales"], ["sales", "returns"]], ids=["target-encoded", "ordinal"])
def test_inputs_built_per_series_are_what_the_frame_path_gave_chronos(tmp_path, targets):
    from instance.model.dataset import load_long_table
    from instance.model.evaluation import training_data, training_inputs_of_files

    path = every_kind_of_column(tmp_path / "d.parquet")
    spec = names(target=targets, known_covariates=["promo", "weekday"])
    assert validate_dataset([path], C, H, W, spec).ok
    table = load_long_table([path], spec)
    roles = roles_of_frame(table, spec)
    assert pa_kinds(table, ["size", "open", "weekday", "visits"]) == ["dictionary", "bool", "string", "int64"]
    old = backtest_split(table, H, W, roles)
    before = training_inputs(old.train(), roles, H)  # the frame path, as it was
    bt, inputs = training_data([path], H, W, spec)
    assert bt.roles == roles and len(inputs) == len(before) == 5
    assert (bt.items, bt.frequency) == (old.items, old.frequency)  # the backtest: the same frame, windows, items
    pd.testing.assert_frame_equal(bt.frame, old.frame)
    assert roles.known_covariates == ["promo", "weekday"]
    assert {"footfall", "store", "visits", "open", "size"} <= set(roles.past_covariates)
    for ours, theirs in zip(inputs, before, strict=True):
        for key in ("n_targets", "n_covariates", "n_future_covariates"):
            assert ours[key] == theirs[key]
        # Targets, covariates in the model's order, categoricals as Chronos encoded them: bit for bit.
        assert torch.equal(ours["context"].isnan(), theirs["context"].isnan())
        assert torch.equal(ours["context"].nan_to_num(), theirs["context"].nan_to_num())
        assert torch.equal(ours["future_covariates"].isnan(), theirs["future_covariates"].isnan())
    if len(targets) > 1:  # ordinal codes in the dictionary's order (west, east, north), not sorted
        size = len(targets) + roles.past_covariates.index("size")
        assert [float(inputs[0]["context"][size, i]) for i in range(3)] == [0.0, 1.0, 2.0]
    ranked = training_inputs_of_files([path], H, W, spec)  # what a rank of distributed training builds
    assert all(torch.equal(a["context"].nan_to_num(), b["context"].nan_to_num()) for a, b in zip(ranked, inputs, strict=True))


def pa_kinds(table, columns):
    import pyarrow as pa

    return ["dictionary" if pa.types.is_dictionary(t) else str(t) for t in (table.schema.field(c).type for c in columns)]
