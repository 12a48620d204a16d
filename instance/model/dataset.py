"""Training data: the long-format parquet validator and the loader (the sync is datasync.py).

Long format (DESIGN.md "Data format"): an id, a timestamp (datetime) and one numeric target or
several; every other column is a covariate, numeric or categorical, known into the future or
past-only. The names and roles are the run config's `columns:` (defaults `item_id`, `timestamp`,
`target`; covariates.py says what each role means to Chronos). The validator is shared: the CLI
calls it for `data validate` and before launch (a bad dataset must cost nothing), the agent calls
it after the sync.
pyarrow, numpy and pandas are imported inside the functions that need them, so importing this
module stays cheap for the CLI.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..protocol.columns import ColumnNames, ColumnRoles
from ..protocol.datasets import DatasetNotFound, RemoteFile, fingerprint  # noqa: F401 - re-exported
from .covariates import DEFAULT_COLUMNS

log = logging.getLogger(__name__)

# The long format's default names (ColumnNames), and the column names of the evaluation files.
ID, TIME, TARGET = "item_id", "timestamp", "target"
# One Chronos-2 patch: the least context worth training or forecasting from.
MIN_CONTEXT = 16
# Beyond this many items with the same problem in one file, one summary line says how many more.
MAX_ITEMS_PER_PROBLEM = 10
READ_THREADS = 4


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with the data, located as precisely as the data allows."""

    file: str
    column: str | None
    item: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.column:
            where.append(f"column {self.column!r}")
        if self.item is not None:
            where.append(f"item {self.item!r}")
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.file}{place}: {self.message}"


class DataError(Exception):
    """The dataset cannot be trained on; `problems` says why, one line each."""

    def __init__(self, message: str, problems: Sequence[DataProblem] = ()):
        self.problems = list(problems)
        if self.problems:
            shown = "; ".join(str(p) for p in self.problems[:5])
            more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
            message = f"{message}: {shown}{more}"
        super().__init__(message)


class DataValidationError(DataError):
    pass


def min_series_length(prediction_length: int, context_length: int | None = None, windows: int = 1) -> int:
    """The last `windows` x `prediction_length` points are held out for evaluation (the backtest
    windows); what is left must hold one training window of `prediction_length` points after at
    least MIN_CONTEXT points of context."""
    context = min(MIN_CONTEXT, context_length) if context_length else MIN_CONTEXT
    return (windows + 1) * prediction_length + context


def expand_dataset_path(path: str | os.PathLike) -> list[Path]:
    """The dataset's files at a local path (protocol/datasets.py's rule: a parquet file, or a
    folder's own parquet files and its `key=value/` partitions).

    A missing path comes back as itself so that the validator names it; a folder without files
    of its own comes back empty.
    """
    from ..protocol.datasets import DatasetError, local_dataset

    path = Path(path)
    try:
        return local_dataset(path).files
    except DatasetError:
        return [] if path.exists() else [path]


# -- validation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Validation:
    problems: list[DataProblem]
    rows: int  # every row of every readable file
    series: int  # distinct item ids
    roles: ColumnRoles | None = None  # every column's role and kind (None: no file had the roles' columns)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_parquet_paths(
    paths: Sequence[Path],
    context_length: int | None = None,
    prediction_length: int | None = None,
    windows: int = 1,
    columns: ColumnNames = DEFAULT_COLUMNS,
) -> list[DataProblem]:
    """Every problem that would stop training, naming file, column and item. Empty = valid."""
    return validate_dataset(paths, context_length, prediction_length, windows, columns).problems


def validate_dataset(
    paths: Sequence[Path],
    context_length: int | None = None,
    prediction_length: int | None = None,
    windows: int = 1,
    columns: ColumnNames = DEFAULT_COLUMNS,
) -> Validation:
    """The problems, the dataset's size and its columns' roles.

    Schema problems are per file, read from the parquet footer: the roles' columns present,
    targets numeric, covariates numeric or categorical, one kind per column in every file.
    Per-series problems are checked on all files together (a dataset may split one series over
    several files), except the order of timestamps, which is checked within each file. With
    known covariates and a prediction length, their values must be present in every point the
    backtest windows give the model (the last `windows` x `prediction_length` of each series).

    Memory stays near the data's own size: only the id, timestamp and target(s) are read (and
    known covariates, when there are any), one row group at a time, and kept as 13 bytes a row
    (an int32 series code, int64 nanoseconds and a flag for a missing target); a known covariate
    adds a flag a row only in a file where it has a gap. Item ids are read dictionary-encoded, so
    each distinct id is one Python string, not one per row. Series checks are vectorised over
    those arrays; a sort is needed only for files whose series are interleaved, for series split
    over files, and for the series whose known covariates have gaps.
    """
    if not paths:
        return Validation([DataProblem("dataset", None, None, "contains no parquet files")], 0, 0)
    from .covariates import merge_files

    problems: list[DataProblem] = []
    codes = _SeriesCodes()
    read_files: list[_FileColumns] = []
    schemas = []
    out = _Collector()
    rows = 0
    # Files are read in parallel (pyarrow lets go of the GIL while it reads and decodes: a
    # partitioned dataset of thousands of small files is bound by that), then checked in order.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(READ_THREADS) as pool:
        for read, file_problems, n, file_columns in pool.map(lambda p: _read_file(Path(p), codes, columns), paths):
            problems += file_problems
            rows += n
            if file_columns is not None:
                schemas.append(file_columns)
            if read is not None:
                read.check_rows(out, codes, columns)
                read_files.append(read)
    roles, conflicts = merge_files(schemas)
    problems += [DataProblem(file, column, None, message) for file, column, message in conflicts]
    if read_files:
        _check_series(read_files, codes, out, context_length, prediction_length, windows, columns)
    problems += out.finish()
    return Validation(problems, rows, len(codes.names), roles)


class _SeriesCodes:
    """Item id -> int32 code, over all files (ids compared as strings, as training reads them).
    Codes are handed out in whatever order the reading threads ask; every report sorts by name."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self._lock = threading.Lock()

    def of(self, values) -> "Any":
        import numpy as np

        out = np.empty(len(values), dtype=np.int32)
        with self._lock:
            for i, v in enumerate(values):
                key = str(v)
                code = self.index.get(key)
                if code is None:
                    code = self.index[key] = len(self.names)
                    self.names.append(key)
                out[i] = code
        return out


@dataclass
class _FileColumns:
    """One file's rows with an id and a timestamp, in file order."""

    name: str
    codes: Any  # int32
    times: Any  # int64 ns
    bad_target: list[Any]  # bool per target: null or NaN
    null_ids: int
    items_without_time: Any  # codes
    known_gaps: dict[str, Any] = field(default_factory=dict)  # known covariate -> bool (missing), where it has gaps
    unsorted: set[int] = field(default_factory=set)  # series whose timestamps go backwards here
    present: Any = None  # the distinct codes of this file
    _grouped: Any = None

    def check_rows(self, out: "_Collector", codes: _SeriesCodes, spec: ColumnNames = DEFAULT_COLUMNS) -> None:
        """What is checked within one file: rows without id or time, timestamps out of order."""
        import numpy as np

        if self.null_ids:
            out.add(self.name, spec.id, None, "null ids", f"{self.null_ids} rows have no {spec.id}")
        if len(self.items_without_time):
            for code in sorted(np.unique(self.items_without_time), key=lambda c: codes.names[c]):
                out.add(self.name, spec.timestamp, codes.names[code], "with missing timestamps",
                        "has rows without a timestamp")
        c, t = self.grouped()
        same = c[1:] == c[:-1]
        back = same & (t[1:] < t[:-1])
        if back.any():
            self.unsorted = set(np.unique(c[1:][back]).tolist())
            for code in sorted(self.unsorted, key=lambda c: codes.names[c]):
                out.add(self.name, spec.timestamp, codes.names[code], "with unsorted timestamps",
                        "timestamps are not in increasing order within the series")
        # Grouped rows: the first code of each run, one per series.
        self.present = c[np.flatnonzero(np.r_[True, ~same])] if len(c) else c

    def grouped(self):
        """(codes, times) with each series' rows together, in file order within the series."""
        import numpy as np

        if self._grouped is None:
            c = self.codes
            runs = int(np.count_nonzero(c[1:] != c[:-1])) + 1 if len(c) else 0
            distinct = int(np.count_nonzero(np.bincount(c))) if len(c) else 0
            if runs == distinct:  # already grouped (the usual layout): no sort
                self._grouped = (c, self.times)
            else:
                order = np.argsort(c, kind="stable")
                self._grouped = (c[order], self.times[order])
        return self._grouped


def _read_file(path: Path, codes: _SeriesCodes, spec: ColumnNames = DEFAULT_COLUMNS):
    """(columns or None, schema problems, row count, (name, its columns' roles) or None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .covariates import check_schema

    name = str(path)
    if not path.exists():
        return None, [DataProblem(name, None, None, "no such file or folder")], 0, None
    if path.is_dir():
        return None, [DataProblem(name, None, None, "is a folder without parquet files")], 0, None
    try:
        try:  # text ids straight from the parquet dictionary: one string per series (others: ignored)
            pf = pq.ParquetFile(path, read_dictionary=[spec.id])
        except KeyError:  # no id column: said below
            pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [DataProblem(name, None, None, f"is not a readable parquet file ({reason})")], 0, None
    num_rows = pf.metadata.num_rows
    file_columns, schema_problems, readable = check_schema(schema, spec)
    problems = [DataProblem(name, column, None, message) for column, message in schema_problems]
    if num_rows == 0:
        problems.append(DataProblem(name, None, None, "has no rows"))
    if num_rows == 0 or not readable:
        return None, problems, num_rows, (name, file_columns)
    try:
        return _read_columns(pf, name, codes, spec), problems, num_rows, (name, file_columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, problems + [DataProblem(name, None, None, f"could not be read ({reason})")], num_rows, (name, file_columns)


def _missing_values(chunk):
    """bool ndarray: null, or NaN in a float column."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_floating(chunk.type):
        return np.isnan(chunk.to_numpy(zero_copy_only=False))  # nulls come back as NaN
    return chunk.is_null().to_numpy(zero_copy_only=False)


def _read_columns(pf, name: str, codes: _SeriesCodes, spec: ColumnNames = DEFAULT_COLUMNS) -> _FileColumns:
    """The id, timestamp and target(s) as flat arrays, one row group at a time into arrays sized
    once from the footer's row count (no list of parts to concatenate: that would double the
    peak); a known covariate's gaps, only where it has any."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    targets, known = spec.targets, spec.known_covariates
    total = pf.metadata.num_rows
    c_all = np.empty(total, dtype=np.int32)
    t_all = np.empty(total, dtype=np.int64)
    bad_all = [np.empty(total, dtype=bool) for _ in targets]
    gaps: dict[str, Any] = {}
    no_time, null_ids, n = [], 0, 0
    wanted = [spec.id, spec.timestamp, *targets, *known]
    for i in range(pf.num_row_groups):
        group = pf.read_row_group(i, columns=wanted)
        for ids, times, *values in zip(*(group.column(col).chunks for col in wanted)):
            target_chunks, known_chunks = values[:len(targets)], values[len(targets):]
            if not pa.types.is_dictionary(ids.type):
                ids = pc.dictionary_encode(ids)
            local = codes.of(ids.dictionary.to_pylist())
            indices = ids.indices
            if indices.null_count:
                idx = indices.fill_null(-1).to_numpy()
                c = np.where(idx >= 0, local[np.maximum(idx, 0)] if len(local) else -1, -1).astype(np.int32)
            else:
                c = local[indices.to_numpy()]
            t = times.cast(pa.timestamp("ns", tz=getattr(times.type, "tz", None))).cast(pa.int64())
            if t.null_count:
                t_null = t.is_null().to_numpy(zero_copy_only=False)
                t = t.fill_null(0)
            else:
                t_null = None
            t = t.to_numpy()
            bad = [_missing_values(chunk) for chunk in target_chunks]
            gap = {col: _missing_values(chunk) for col, chunk in zip(known, known_chunks) if chunk.null_count
                   or pa.types.is_floating(chunk.type)}
            n_null_ids = int(np.count_nonzero(c < 0)) if indices.null_count else 0
            null_ids += n_null_ids
            keep = None
            if t_null is not None or n_null_ids:
                t_null = np.zeros(len(c), bool) if t_null is None else t_null
                if t_null.any():
                    no_time.append(c[t_null & (c >= 0)])
                keep = (c >= 0) & ~t_null
                c, t, bad = c[keep], t[keep], [b[keep] for b in bad]
            k = len(c)
            c_all[n:n + k], t_all[n:n + k] = c, t
            for dest, b in zip(bad_all, bad):
                dest[n:n + k] = b
            for col, missing in gap.items():
                missing = missing if keep is None else missing[keep]
                if col in gaps:
                    gaps[col][n:n + k] = missing
                elif missing.any():  # a flag a row from the first gap on (rows before it: none)
                    gaps[col] = np.zeros(total, dtype=bool)
                    gaps[col][n:n + k] = missing
            n += k
        del group
    pa.default_memory_pool().release_unused()  # Arrow's pool would keep the row groups' pages
    return _FileColumns(name, c_all[:n], t_all[:n], [b[:n] for b in bad_all], null_ids,
                        np.concatenate(no_time) if no_time else np.empty(0, dtype=np.int32),
                        {col: g[:n] for col, g in gaps.items()})


class _Collector:
    """Per (file, message kind), the first items in full and then one summary line."""

    def __init__(self):
        self.problems: list[DataProblem] = []
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, file: str, column: str | None, item: Any, kind: str, message: str) -> None:
        n = self._counts.get((file, kind), 0) + 1
        self._counts[(file, kind)] = n
        if n <= MAX_ITEMS_PER_PROBLEM:
            self.problems.append(DataProblem(file, column, None if item is None else str(item), message))

    def finish(self) -> list[DataProblem]:
        for (file, kind), n in self._counts.items():
            if n > MAX_ITEMS_PER_PROBLEM:
                self.problems.append(DataProblem(file, None, None, f"{n - MAX_ITEMS_PER_PROBLEM} more items {kind}"))
        return self.problems


def _check_series(columns: list[_FileColumns], codes: _SeriesCodes, out: _Collector, context_length,
                  prediction_length, windows: int = 1, spec: ColumnNames = DEFAULT_COLUMNS) -> None:
    """Duplicates, all-NaN targets, lengths and known covariates' gaps in the backtest, per series
    over every file."""
    import numpy as np

    k = len(codes.names)
    if len(columns) < 64:  # a k-sized count per file
        lengths = sum(np.bincount(col.codes, minlength=k) for col in columns)
        bad = [sum(np.bincount(col.codes[col.bad_target[j]], minlength=k) for col in columns)
               for j in range(len(spec.targets))]
    else:  # many small files: one pass over all rows rather than a k-sized array per file
        lengths = np.bincount(np.concatenate([col.codes for col in columns]), minlength=k)
        bad = [np.bincount(np.concatenate([col.codes[col.bad_target[j]] for col in columns]), minlength=k)
               for j in range(len(spec.targets))]
    files_holding = np.bincount(np.concatenate([col.present for col in columns]), minlength=k)
    names_of: dict[int, list[str]] = {}

    def files_of(code: int) -> str:
        if not names_of:  # once, for the few series that have a problem
            wanted = np.asarray(sorted(problem_codes), dtype=np.int32)
            for col in columns:
                for found in np.intersect1d(col.present, wanted).tolist():
                    names_of.setdefault(found, []).append(col.name)
        return ", ".join(names_of[code])

    # Duplicate timestamps: adjacent in each series' rows once they are in time order. A series
    # in one file, already in order, is checked where it lies; the others are gathered and sorted.
    dup_count = np.zeros(k, dtype=np.int64)
    dup_first = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
    hard = files_holding > 1
    for col in columns:
        hard[list(col.unsorted)] = True
    for col in columns:
        c, t = col.grouped()
        if hard.any():
            easy = ~hard[c]
            c, t = c[easy], t[easy]
        _count_adjacent_duplicates(c, t, dup_count, dup_first)
    if hard.any():
        c = np.concatenate([col.codes[hard[col.codes]] for col in columns])
        t = np.concatenate([col.times[hard[col.codes]] for col in columns])
        order = np.lexsort((t, c))
        _count_adjacent_duplicates(c[order], t[order], dup_count, dup_first)
    by_name = lambda found: sorted(found.tolist(), key=lambda c: codes.names[c])  # noqa: E731
    need = min_series_length(prediction_length, context_length, windows) if prediction_length else 0
    duplicated = np.flatnonzero(dup_count)
    all_nan = [np.flatnonzero((lengths > 0) & (lengths - b == 0)) for b in bad]
    short = np.flatnonzero((lengths > 0) & (lengths < need))
    gaps = _known_gaps_in_backtest(columns, windows * prediction_length) if prediction_length else []
    problem_codes = set(duplicated.tolist()) | {c for a in all_nan for c in a.tolist()} | set(short.tolist()) \
        | {code for _, code, _, _ in gaps}
    if len(duplicated):
        import pandas as pd

        for code in by_name(duplicated):
            first = pd.Timestamp(int(dup_first[code]), unit="ns")
            out.add(files_of(code), spec.timestamp, codes.names[code], "with duplicate timestamps",
                    f"{int(dup_count[code])} duplicate timestamp(s), first at {first}")

    for target, nan_codes in zip(spec.targets, all_nan):
        for code in by_name(nan_codes):
            kind = "whose target is all NaN" if len(spec.targets) == 1 else f"whose target {target} is all NaN"
            out.add(files_of(code), target, codes.names[code], kind,
                    "the target is NaN everywhere in this series")

    if gaps:
        import pandas as pd

        held = windows * prediction_length
        for column, code, count, first in sorted(gaps, key=lambda g: (g[0], codes.names[g[1]])):
            out.add(files_of(code), column, codes.names[code], f"missing known covariate {column} in the backtest",
                    f"the known covariate is missing at {count} of the last {held} points, which the backtest "
                    f"shows the model ({windows} window{'s' if windows > 1 else ''} of {prediction_length}; first "
                    f"at {pd.Timestamp(int(first), unit='ns')}); fill them in, or drop it from columns.known_covariates")

    if prediction_length:
        held = windows * prediction_length
        for code in by_name(short):
            out.add(
                files_of(code), spec.targets[0], codes.names[code], "too short",
                f"the series has {int(lengths[code])} points but needs at least {need}: the last {held} "
                f"are held out for evaluation ({windows} window{'s' if windows > 1 else ''} of {prediction_length}), "
                f"and training needs a {prediction_length}-step window after {need - held - prediction_length} "
                "points of context",
            )


def _known_gaps_in_backtest(columns: list[_FileColumns], held: int) -> list[tuple[str, int, int, Any]]:
    """(column, series code, points missing, first missing ns) for each known covariate that has
    gaps among the last `held` points of a series. Only the series with a gap are sorted."""
    import numpy as np

    found = []
    for column in sorted({name for col in columns for name in col.known_gaps}):
        suspects = np.unique(np.concatenate([col.codes[g] for col in columns
                                             if (g := col.known_gaps.get(column)) is not None]))
        parts = []
        for col in columns:
            sel = np.isin(col.codes, suspects)
            if sel.any():
                gap = col.known_gaps.get(column)
                parts.append((col.codes[sel], col.times[sel], gap[sel] if gap is not None else np.zeros(int(sel.sum()), bool)))
        c, t, g = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = np.lexsort((t, c))
        c, t, g = c[order], t[order], g[order]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        ends = np.r_[starts[1:], len(c)]
        from_end = np.repeat(ends, ends - starts) - np.arange(len(c)) - 1
        hit = g & (from_end < held)
        if not hit.any():
            continue
        counts = np.bincount(c[hit])
        for code in np.flatnonzero(counts):
            found.append((column, int(code), int(counts[code]), t[hit & (c == code)].min()))
    return found


def _count_adjacent_duplicates(c, t, count, first) -> None:
    import numpy as np

    if len(c) < 2:
        return
    dup = (c[1:] == c[:-1]) & (t[1:] == t[:-1])
    if dup.any():
        np.add.at(count, c[1:][dup], 1)
        np.minimum.at(first, c[1:][dup], t[1:][dup])


# -- loading ------------------------------------------------------------------------------------
def load_long_frame(paths: Sequence[Path], columns: ColumnNames | ColumnRoles = DEFAULT_COLUMNS):
    """All files as one pandas frame sorted by (id, timestamp); ids as strings."""
    return load_long_table(paths, columns).to_pandas(self_destruct=True, split_blocks=True)


def load_long_table(paths: Sequence[Path], columns: ColumnNames | ColumnRoles = DEFAULT_COLUMNS):
    """All files as one Arrow table sorted by (id, timestamp); ids as strings. `columns` names
    the id and timestamp columns (the run config's, or the roles the validator found).

    Read with pyarrow, ids cast to strings, and the sort done in Arrow, skipped when the files are
    already in order (the usual case); no pandas copy on the way.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    id_col, time_col = columns.id, columns.timestamp
    tables = []
    for p in paths:
        t = pq.read_table(p, pre_buffer=False)  # a local file: buffering its column chunks first costs ~70 MB
        ids = t.column(id_col)
        if not pa.types.is_string(ids.type):
            t = t.set_column(t.schema.get_field_index(id_col), id_col, pc.cast(ids, pa.string()))
        times = t.column(time_col)
        if not pa.types.is_timestamp(times.type):
            t = t.set_column(t.schema.get_field_index(time_col), time_col, pc.cast(times, pa.timestamp("ns")))
        tables.append(t)
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    del tables
    if not _in_order(table, id_col, time_col):
        table = table.sort_by([(id_col, "ascending"), (time_col, "ascending")])
    pa.default_memory_pool().release_unused()  # the pages the reader decoded into: freed, but kept by the pool
    return table


def series_runs(ids):
    """(starts, ends), int64: each series' rows in an id column grouped by series (an Arrow column
    or a numpy array), from where the id changes: no group-by over 10 M rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(ids)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        change = np.flatnonzero(pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).fill_null(False)
                                .to_numpy(zero_copy_only=False))
    else:
        change = np.flatnonzero(ids[1:] != ids[:-1])
    starts = np.r_[0, change + 1].astype(np.int64)
    return starts, np.r_[starts[1:], n].astype(np.int64)


def frame_from(box: list):
    """The Arrow table in `box` (taken out of it, so that no other reference holds its columns) as
    pandas, as Table.to_pandas makes it, with a peak of one column over the table's size rather
    than most of the table's: what to_pandas would copy is done first, one column (or one chunk) at
    a time, each old column freed before the next: strings become large_string (pandas' str dtype
    holds that) a chunk at a time; numbers and times without nulls, spread over chunks (one a row
    group), are joined into one, which pandas then takes without a copy."""
    import pyarrow as pa

    table = box.pop()
    for i, spec in enumerate(table.schema):
        column = table.column(i)
        if pa.types.is_string(spec.type):
            chunks = column.chunks
            del column
            table = table.remove_column(i)
            large = []
            while chunks:
                large.append(chunks.pop(0).cast(pa.large_string()))
            table = table.add_column(i, spec.with_type(pa.large_string()), pa.chunked_array(large, pa.large_string()))
            del large
        elif column.num_chunks > 1 and column.null_count == 0 and (
                pa.types.is_integer(spec.type) or pa.types.is_floating(spec.type) or pa.types.is_timestamp(spec.type)):
            joined = column.combine_chunks()
            del column
            table = table.set_column(i, spec, joined)
            del joined
        else:
            del column
        pa.default_memory_pool().release_unused()
    frame = table.to_pandas(self_destruct=True, split_blocks=True)
    del table
    pa.default_memory_pool().release_unused()
    return frame


def values_at(column, positions) -> list:
    """The Python values of an Arrow column at sorted `positions`, taken chunk by chunk (a take on
    the whole column may first join its chunks: a copy of the column)."""
    import numpy as np
    import pyarrow as pa

    positions = np.asarray(positions)
    out: list = []
    offset = 0
    for chunk in column.chunks:
        lo, hi = np.searchsorted(positions, [offset, offset + len(chunk)])
        if hi > lo:
            out += chunk.take(pa.array(positions[lo:hi] - offset)).to_pylist()
        offset += len(chunk)
    return out


def segments(n: int, starts, lengths):
    """bool ndarray over `n` rows: True in [start, start + length) of each (disjoint) segment, made
    from +1/-1 marks at the edges (a byte a row, not a position array of 8)."""
    import numpy as np

    edges = np.zeros(n + 1, dtype=np.int8)
    np.add.at(edges, starts, 1)
    np.add.at(edges, np.asarray(starts) + lengths, -1)
    return np.cumsum(edges[:-1], dtype=np.int8).astype(bool)


def _in_order(table, id_col: str = ID, time_col: str = TIME) -> bool:
    import pyarrow.compute as pc

    n = table.num_rows
    if n < 2:
        return True
    ids, times = table.column(id_col), table.column(time_col)
    a, b = ids.slice(0, n - 1), ids.slice(1)
    ta, tb = times.slice(0, n - 1), times.slice(1)
    ok = pc.or_(pc.less(a, b), pc.and_(pc.equal(a, b), pc.less_equal(ta, tb)))
    return bool(pc.all(ok.fill_null(False)).as_py())
