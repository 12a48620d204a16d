"""Covariates as Chronos-2 takes them: which column plays which role, and the inputs Chronos is
given in training and in each backtest window.

Roles come from the run config (`columns:`, as ColumnNames) and the data: the id, the
timestamp, one target or several (forecast jointly), the covariates known into the future
(`known_covariates`), and every other column, a past-only covariate. A covariate is numeric
(integer, float, decimal) or categorical (string, bool, dictionary); anything else is refused.

The encoding and masking are Chronos's own (chronos.chronos2.preprocess.from_data_frame and
Chronos2Dataset), not redone here:
- categoricals become numbers there: target encoding per series with one target, ordinal codes
  with several;
- known covariates are put last; in a training window Chronos2Dataset._construct_slice shows the
  model their values over the horizon and masks the target(s) and past-only covariates there;
- in a backtest window the horizon's actual known values go in as Chronos's `future_df`, and
  nothing else of the horizon (predict_df does the same with the future_df a user gives it).
What is ours: the one column order every input is built in (targets, past-only, known, each in
the data's order; `ColumnRoles.model_columns`), so training, backtest and forecasts line up.
"""
from __future__ import annotations

from typing import Any

from ..protocol.columns import (CATEGORICAL, DATETIME, ID, IDENTIFIER, KNOWN, NUMERIC, PAST, TARGET, TIMESTAMP,
                                Column, ColumnNames, ColumnRoles)

DEFAULT_COLUMNS = ColumnNames()
ACCEPTED = "numeric (integer, float, decimal) or categorical (string, bool, dictionary)"


def kind_of(arrow_type) -> str | None:
    """NUMERIC, CATEGORICAL, or None for a type Chronos cannot take as a covariate."""
    import pyarrow as pa

    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return NUMERIC
    if pa.types.is_dictionary(arrow_type):
        return kind_of(arrow_type.value_type) and CATEGORICAL
    if pa.types.is_boolean(arrow_type) or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) \
            or getattr(pa.types, "is_string_view", lambda _: False)(arrow_type):
        return CATEGORICAL
    return None


def check_schema(schema, spec: ColumnNames = DEFAULT_COLUMNS) -> tuple[list[Column], list[tuple[str, str]], bool]:
    """One file's schema against the roles: (its columns with role and kind, the problems as
    (column, sentence), whether its rows can be read for the series checks). Shared by the
    validator and the check of a bucket dataset's footers before launch."""
    import pyarrow as pa

    problems = [(c, _missing(spec, c)) for c in (spec.id, spec.timestamp, *spec.targets, *spec.known_covariates)
                if c not in schema.names]
    readable = not problems
    if spec.timestamp in schema.names:
        kind = schema.field(spec.timestamp).type
        if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
            problems.append((spec.timestamp, f"must be a datetime column, found {kind}; store timestamps as a "
                                             "parquet timestamp type"))
            readable = False
    columns, kind_problems = resolve_schema(schema, spec)
    readable = readable and not any(c in spec.targets for c, _ in kind_problems)
    return columns, problems + kind_problems, readable


def _missing(spec: ColumnNames, column: str) -> str:
    if spec.is_default:
        return "required column is missing (long format needs item_id, timestamp, target)"
    key, role = (("id", "the id") if column == spec.id else ("timestamp", "the timestamp") if column == spec.timestamp
                 else ("known_covariates", "a known covariate") if column in spec.known_covariates
                 else ("target", "the target" if len(spec.targets) == 1 else "a target"))
    return f"the run config names it as {role} (columns.{key}) but the file has no such column; fix columns.{key} or the data"


def resolve_schema(schema, spec: ColumnNames = DEFAULT_COLUMNS) -> tuple[list[Column], list[tuple[str, str]]]:
    """Each column of one file with its role and kind, and the problems as (column, sentence):
    targets must be numeric, covariates numeric or categorical."""
    import pyarrow as pa

    columns: list[Column] = []
    problems: list[tuple[str, str]] = []
    targets, known = spec.targets, set(spec.known_covariates)
    for name in schema.names:
        arrow_type = schema.field(name).type
        dtype = str(arrow_type)
        if name == spec.id:  # read dictionary-encoded by the validator, whatever the file holds
            value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
            columns.append(Column(name, ID, IDENTIFIER, str(value_type)))
            continue
        if name == spec.timestamp:
            columns.append(Column(name, TIMESTAMP, DATETIME, dtype))
            continue
        kind = kind_of(arrow_type)
        if name in targets:
            if kind != NUMERIC:
                which = "the target" if len(targets) == 1 else "a target"
                problems.append((name, f"is {which} and must be numeric, found {dtype}"))
            columns.append(Column(name, TARGET, NUMERIC, dtype))
            continue
        role = KNOWN if name in known else PAST
        if kind is None:
            what = "a known covariate" if role == KNOWN else "a past-only covariate (every column without a role is one)"
            problems.append((name, f"is {what} and must be {ACCEPTED}, found {dtype}; convert it or drop the column"))
            continue
        columns.append(Column(name, role, kind, dtype))
    # The roles in the config's order for targets (the order Chronos stacks them in).
    order = {n: i for i, n in enumerate(targets)}
    by_target = sorted((c for c in columns if c.role == TARGET), key=lambda c: order[c.name])
    it = iter(by_target)
    columns = [next(it) if c.role == TARGET else c for c in columns]
    return columns, problems


def merge_files(per_file: list[tuple[str, list[Column]]]) -> tuple[ColumnRoles | None, list[tuple[str, str, str]]]:
    """The dataset's roles from every file's (in file order; a column first seen in a later file
    comes after), and (file, column, sentence) for a column whose kind differs between files."""
    seen: dict[str, tuple[Column, str]] = {}
    problems: list[tuple[str, str, str]] = []
    for file, columns in per_file:
        for col in columns:
            if col.name not in seen:
                seen[col.name] = (col, file)
            elif seen[col.name][0].kind != col.kind:
                first, where = seen[col.name]
                problems.append((file, col.name, f"is {col.kind} ({col.dtype}) here but {first.kind} ({first.dtype}) "
                                                  f"in {where}; give it one type in every file"))
    if not seen:
        return None, problems
    roles = ColumnRoles(tuple(col for col, _ in seen.values()))
    if not any(c.role == ID for c in roles.columns) or not any(c.role == TIMESTAMP for c in roles.columns) \
            or not roles.targets:
        return None, problems
    return roles, problems


def roles_of_frame(frame, spec: ColumnNames = DEFAULT_COLUMNS) -> ColumnRoles:
    """The roles of an in-memory frame (pandas or Arrow), for callers that hold one."""
    import pyarrow as pa

    schema = frame.schema if isinstance(frame, pa.Table) else pa.Schema.from_pandas(frame, preserve_index=False)
    columns, problems = resolve_schema(schema, spec)
    if problems:
        raise ValueError("; ".join(f"column {c!r} {m}" for c, m in problems))
    roles, _ = merge_files([("frame", columns)])
    if roles is None:
        raise ValueError(f"the frame lacks one of {spec.id!r}, {spec.timestamp!r}, {spec.targets!r}")
    return roles


# -- what Chronos is given -------------------------------------------------------------------------
def _in_model_order(frame, roles: ColumnRoles):
    """`frame` with exactly the model's columns in the model's order; no copy when it has them."""
    wanted = roles.model_columns()
    return frame if list(frame.columns) == wanted else frame[wanted]


def training_inputs(frame, roles: ColumnRoles, prediction_length: int) -> list[Any]:
    """Chronos's inputs for fit: the known covariates are named, so Chronos2Dataset reveals their
    values over each training window's horizon and masks the target(s) and past-only ones there.

    `frame` is grouped by series and in time order, and checked by the validator, so Chronos's
    own validation (which re-sorts a copy of the whole frame) is skipped."""
    return _fit_inputs(_in_model_order(frame, roles), roles, prediction_length)


def series_training_inputs(frame, roles: ColumnRoles, starts, lengths, prediction_length: int) -> list[Any]:
    """What training_inputs gives for the first `lengths` rows of each series of `frame` (grouped
    by series, in time order; `starts`: where each series' rows begin), built per series from the
    frame's numpy views, without a frame of the training rows.

    Each series' context is written row by row: the target(s), then the covariates in the model's
    order (past-only, then known), float32, as Chronos's preprocessing stacks them; over the
    horizon every row is NaN (Chronos2Dataset reveals the known covariates' values from the
    context). What Chronos does not take as a number (a pandas dtype that is not numeric, or
    bool) is encoded by Chronos itself, on a frame of the training rows of the target(s) and those
    columns alone (_encoded_by_chronos). Chronos's from_list_of_dicts takes per-series arrays too,
    but orders covariates by name, not in the model's order that the backtest's and the forecasts'
    inputs use, and it stacks every series into one array again before it splits them."""
    import numpy as np
    import torch
    from chronos.chronos2.preprocess import PreparedInput

    kept = np.asarray(lengths) > 0
    starts, lengths = np.asarray(starts)[kept], np.asarray(lengths)[kept]
    names = roles.model_columns()[2:]  # targets, past-only, known: the rows of Chronos's context
    contexts = [np.empty((len(names), n), dtype=np.float32) for n in lengths.tolist()]
    encoded = _encoded_by_chronos(frame, roles, starts, lengths, prediction_length)
    for row, name in enumerate(names):
        if name in encoded:
            for context, values in zip(contexts, encoded.pop(name)):
                context[row] = values
            continue
        column = frame[name]
        # A numpy dtype is a view; an extension one (nullable integers) as Chronos converts it.
        values = column.to_numpy() if isinstance(column.dtype, np.dtype) else \
            column.astype(np.float32).to_numpy(dtype=np.float32, na_value=np.nan)
        for context, s, n in zip(contexts, starts.tolist(), lengths.tolist()):
            context[row] = values[s:s + n]
    n_targets, n_known = len(roles.targets), len(roles.known_covariates)
    return [PreparedInput(context=torch.from_numpy(context),
                          future_covariates=torch.full((len(names), prediction_length), torch.nan),
                          n_targets=n_targets, n_covariates=len(names) - n_targets, n_future_covariates=n_known)
            for context in contexts]


def _encoded_by_chronos(frame, roles: ColumnRoles, starts, lengths, prediction_length: int) -> dict[str, list]:
    """Each covariate Chronos takes as a category (its rule: not a numeric pandas dtype, or bool),
    as Chronos encodes it, per series (float32): target encoding with one target, ordinal codes
    with several. The encoding depends only on the column, the target(s) and the series, so
    Chronos is given just those, over the training rows (a categorical keeps its categories)."""
    import numpy as np
    import pandas.api.types as ptypes

    from .dataset import segments

    categorical = [c for c in roles.model_columns()[2 + len(roles.targets):]
                   if not ptypes.is_numeric_dtype(frame[c]) or ptypes.is_bool_dtype(frame[c])]
    if not categorical:
        return {}
    rows = frame.loc[segments(len(frame), starts, lengths), [*roles.targets, *categorical]].reset_index(drop=True)
    rows.insert(0, roles.id, np.repeat(np.arange(len(lengths), dtype=np.int32), lengths))
    known = [c for c in categorical if c in roles.known_covariates]
    prepared = _fit_inputs(rows, roles, prediction_length, known)
    order = [c for c in categorical if c not in known] + known  # Chronos's rows: past-only, then known
    n = len(roles.targets)
    return {c: [x["context"][n + j].numpy() for x in prepared] for j, c in enumerate(order)}


def _fit_inputs(frame, roles: ColumnRoles, prediction_length: int, known: list[str] | None = None) -> list[Any]:
    from chronos.chronos2.preprocess import from_data_frame

    known = roles.known_covariates if known is None else known
    return from_data_frame(
        frame, target_columns=roles.targets, prediction_length=prediction_length,
        known_covariates_names=known or None, id_column=roles.id, timestamp_column=roles.timestamp,
        validate_inputs=False,
    )


def forecast_inputs(context, future, roles: ColumnRoles, prediction_length: int) -> list[Any]:
    """Chronos's inputs for one forecast: the history (`context`, every column) and, in `future`,
    the horizon's rows (prediction_length a series, same order), of which only the known
    covariates' values are passed on."""
    from chronos.chronos2.preprocess import from_data_frame

    known = roles.known_covariates
    future_df = future[[roles.id, roles.timestamp, *known]] if known else None
    return from_data_frame(
        _in_model_order(context, roles), target_columns=roles.targets, prediction_length=prediction_length,
        future_df=future_df, id_column=roles.id, timestamp_column=roles.timestamp, validate_inputs=False,
    )
