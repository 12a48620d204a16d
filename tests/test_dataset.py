"""The long-format validator: one sentence per problem, naming file, column and item (the sync
is tests/test_datasync.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from instance.model.dataset import (
    DataProblem,
    expand_dataset_path,
    load_long_frame,
    min_series_length,
    validate_parquet_paths,
)
from tests.agent_fixtures import synthetic_frame, write_parquet

H, C = 8, 64


def _problems(tmp_path, frame_or_bytes, name="data.parquet", **kw):
    path = tmp_path / name
    if isinstance(frame_or_bytes, bytes):
        path.write_bytes(frame_or_bytes)
    else:
        write_parquet(path, frame_or_bytes)
    return validate_parquet_paths([path], context_length=kw.get("context_length", C), prediction_length=kw.get("prediction_length", H))


def _one(problems, **expected):
    matching = [p for p in problems if all(getattr(p, k) == v for k, v in expected.items())]
    assert matching, f"no problem with {expected} in {[str(p) for p in problems]}"
    return matching[0]


def test_a_good_dataset_has_no_problems(tmp_path):
    assert _problems(tmp_path, synthetic_frame()) == []


def test_problem_sentence_names_file_column_and_item():
    p = DataProblem("a.parquet", "target", "item-3", "the target is NaN everywhere in this series")
    assert str(p) == "a.parquet (column 'target', item 'item-3'): the target is NaN everywhere in this series"
    assert str(DataProblem("a.parquet", None, None, "has no rows")) == "a.parquet: has no rows"


def test_not_parquet(tmp_path):
    p = _one(_problems(tmp_path, b"item_id,timestamp,target\n", name="data.csv"), file=str(tmp_path / "data.csv"))
    assert "not a readable parquet file" in p.message


def test_missing_file_and_empty_folder(tmp_path):
    assert "no such file" in validate_parquet_paths([tmp_path / "nope.parquet"])[0].message
    assert expand_dataset_path(tmp_path) == []
    assert "no parquet files" in validate_parquet_paths([])[0].message


def test_empty_file(tmp_path):
    empty = synthetic_frame().head(0)
    _one(_problems(tmp_path, empty), message="has no rows")


@pytest.mark.parametrize("column", ["item_id", "timestamp", "target"])
def test_missing_required_column(tmp_path, column):
    p = _one(_problems(tmp_path, synthetic_frame().drop(columns=[column])), column=column)
    assert "required column is missing" in p.message


def test_non_numeric_target_and_covariate_of_no_usable_type(tmp_path):
    frame = synthetic_frame()
    frame["target"] = frame["target"].astype(str)
    frame["readings"] = [[1.0, 2.0]] * len(frame)
    problems = _problems(tmp_path, frame)
    assert "is the target and must be numeric, found large_string" in _one(problems, column="target").message
    assert "is a past-only covariate (every column without a role is one) and must be numeric (integer, float, " \
           "decimal) or categorical (string, bool, dictionary), found list<element: double>" in \
           _one(problems, column="readings").message


def test_string_bool_and_dictionary_covariates_are_categorical(tmp_path):
    from instance.model.dataset import validate_dataset

    frame = synthetic_frame()
    frame["weather"] = np.where(frame.index % 3, "sunny", "rain")
    frame["holiday"] = frame.index % 7 == 0
    frame["store"] = pd.Categorical(frame["item_id"].str[-1])
    path = write_parquet(tmp_path / "d.parquet", frame)
    result = validate_dataset([path], C, H)
    assert result.ok, result.problems
    kinds = {c.name: (c.role, c.kind) for c in result.roles.columns}
    assert kinds == {"item_id": ("id", "identifier"), "timestamp": ("timestamp", "datetime"),
                     "target": ("target", "numeric"), "temperature": ("past_covariate", "numeric"),
                     "weather": ("past_covariate", "categorical"), "holiday": ("past_covariate", "categorical"),
                     "store": ("past_covariate", "categorical")}


def test_non_datetime_timestamp(tmp_path):
    frame = synthetic_frame()
    frame["timestamp"] = frame["timestamp"].astype(str)
    assert "datetime" in _one(_problems(tmp_path, frame), column="timestamp").message


def test_duplicate_timestamps_name_the_item(tmp_path):
    frame = synthetic_frame(n_items=3)
    dup = pd.concat([frame, frame[frame.item_id == "item-1"].head(2)])
    problems = [p for p in _problems(tmp_path, dup) if "duplicate" in p.message]
    assert [(p.item, p.column) for p in problems] == [("item-1", "timestamp")]
    assert "2 duplicate timestamp(s), first at 2026-11-01 00:00:00" in problems[0].message


def test_unsorted_timestamps_name_the_item(tmp_path):
    frame = synthetic_frame(n_items=3)
    rows = frame[frame.item_id == "item-2"].iloc[::-1]
    shuffled = pd.concat([frame[frame.item_id != "item-2"], rows])
    problems = _problems(tmp_path, shuffled)
    assert [p.item for p in problems] == ["item-2"]
    assert "not in increasing order" in problems[0].message


def test_short_series_says_what_it_needs(tmp_path):
    frame = synthetic_frame(n_items=2, length=30)
    need = min_series_length(H, C)
    assert need == 2 * H + 16
    problems = _problems(tmp_path, frame)
    assert {p.item for p in problems} == {"item-0", "item-1"}
    assert f"has 30 points but needs at least {need}" in problems[0].message
    assert "held out for evaluation" in problems[0].message
    # Without a prediction length (data validate without a config) the length is not judged.
    assert validate_parquet_paths([tmp_path / "data.parquet"]) == []


def test_all_nan_series(tmp_path):
    frame = synthetic_frame(n_items=3)
    frame.loc[frame.item_id == "item-0", "target"] = np.nan
    p = _one(_problems(tmp_path, frame), item="item-0")
    assert p.column == "target" and "NaN everywhere" in p.message


def test_many_bad_items_are_summarised(tmp_path):
    frame = synthetic_frame(n_items=25, length=20, covariate=False)
    problems = _problems(tmp_path, frame)
    assert len([p for p in problems if p.item]) == 10
    assert "15 more items too short" in problems[-1].message


def test_series_split_over_files_is_judged_whole(tmp_path):
    frame = synthetic_frame(n_items=2, length=40)
    first = frame.groupby("item_id").head(20)
    second = frame.drop(first.index)
    a = write_parquet(tmp_path / "a.parquet", first)
    b = write_parquet(tmp_path / "b.parquet", second)
    assert validate_parquet_paths([a, b], C, H) == []
    overlap = write_parquet(tmp_path / "c.parquet", first.head(3))
    p = _one(validate_parquet_paths([a, b, overlap], C, H), item="item-0")
    assert "a.parquet" in p.file and "c.parquet" in p.file and "duplicate" in p.message
    loaded = load_long_frame([b, a])
    assert len(loaded) == 80 and loaded["timestamp"].is_monotonic_increasing is False
    assert (loaded.groupby("item_id")["timestamp"].diff().dropna() > pd.Timedelta(0)).all()


def test_expand_folder(tmp_path):
    write_parquet(tmp_path / "b.parquet", synthetic_frame(1))
    write_parquet(tmp_path / "a.parquet", synthetic_frame(1))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in expand_dataset_path(tmp_path)] == ["a.parquet", "b.parquet"]
    assert expand_dataset_path(tmp_path / "a.parquet") == [tmp_path / "a.parquet"]
