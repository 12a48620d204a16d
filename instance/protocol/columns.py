"""Column roles: the names a run config gives them (`ColumnNames`) and, once the data is read,
every column with its role and kind (`ColumnRoles`): what model_metadata.json records under
`columns`, what `data validate` shows, and what a forecast's input is checked against.

The run config names the roles (`columns:`, parsed by runconfig.ColumnsSpec into ColumnNames);
the data fills in the rest: every other column is a past-only covariate, and each covariate is
numeric or categorical by its parquet type (instance/model/covariates.py decides). Pure data, no
imports of the project, no pydantic: the validator (`data validate`) stays light.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ID, TIMESTAMP, TARGET, KNOWN, PAST = "id", "timestamp", "target", "known_covariate", "past_covariate"
NUMERIC, CATEGORICAL, DATETIME, IDENTIFIER = "numeric", "categorical", "datetime", "identifier"
ROLE_NAMES = {ID: "id", TIMESTAMP: "timestamp", TARGET: "target", KNOWN: "known covariate", PAST: "past covariate"}
# The long format's defaults (AutoGluon's and Chronos-2 predict_df's).
DEFAULT_ID, DEFAULT_TIMESTAMP, DEFAULT_TARGET = "item_id", "timestamp", "target"


@dataclass(frozen=True)
class ColumnNames:
    """The roles as a run config names them; every column not named is a past-only covariate."""

    id: str = DEFAULT_ID
    timestamp: str = DEFAULT_TIMESTAMP
    targets: tuple[str, ...] = (DEFAULT_TARGET,)
    known_covariates: tuple[str, ...] = ()

    @property
    def is_default(self) -> bool:
        return self == ColumnNames()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "timestamp": self.timestamp, "targets": list(self.targets),
                "known_covariates": list(self.known_covariates)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ColumnNames":
        return cls(doc["id"], doc["timestamp"], tuple(doc["targets"]), tuple(doc["known_covariates"]))


@dataclass(frozen=True)
class Column:
    name: str
    role: str  # ID, TIMESTAMP, TARGET, KNOWN or PAST
    kind: str  # NUMERIC or CATEGORICAL (covariates, targets), DATETIME (timestamp), IDENTIFIER (id)
    dtype: str  # the parquet (Arrow) type, as the data holds it

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "kind": self.kind, "dtype": self.dtype}


@dataclass(frozen=True)
class ColumnRoles:
    """Every column of the data with its role and kind, in the order the data has them."""

    columns: tuple[Column, ...]

    def _named(self, role: str) -> list[str]:
        return [c.name for c in self.columns if c.role == role]

    @property
    def id(self) -> str:
        return self._named(ID)[0]

    @property
    def timestamp(self) -> str:
        return self._named(TIMESTAMP)[0]

    @property
    def targets(self) -> list[str]:
        return self._named(TARGET)

    @property
    def known_covariates(self) -> list[str]:
        return self._named(KNOWN)

    @property
    def past_covariates(self) -> list[str]:
        return self._named(PAST)

    @property
    def covariates(self) -> list[Column]:
        return [c for c in self.columns if c.role in (KNOWN, PAST)]

    def get(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    def model_columns(self) -> list[str]:
        """The columns Chronos is given, in one fixed order (targets, past-only, known) whatever
        the order of a file's columns, so training, backtest and forecasts line up."""
        return [self.id, self.timestamp, *self.targets, *self.past_covariates, *self.known_covariates]

    def target_only(self) -> "ColumnRoles":
        """The same data without its covariates (what a model given the target(s) alone sees)."""
        return ColumnRoles(tuple(c for c in self.columns if c.role in (ID, TIMESTAMP, TARGET)))

    def describe(self) -> list[str]:
        """One line per covariate, e.g. "promo (known covariate, numeric)"."""
        return [f"{c.name} ({ROLE_NAMES[c.role]}, {c.kind})" for c in self.covariates]

    def sentence(self) -> str:
        """"target sales; known covariates: promo (numeric); past-only: weather (categorical)"."""
        parts = [("targets " if len(self.targets) > 1 else "target ") + ", ".join(self.targets)]
        for role, title in ((KNOWN, "known covariates"), (PAST, "past-only covariates")):
            named = [f"{c.name} ({c.kind})" for c in self.covariates if c.role == role]
            if named:
                parts.append(f"{title}: {', '.join(named)}")
        return "; ".join(parts if len(parts) > 1 else [*parts, "no covariates"])

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "timestamp": self.timestamp, "targets": self.targets,
            "known_covariates": self.known_covariates, "past_covariates": self.past_covariates,
            "columns": [c.to_json() for c in self.columns],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "ColumnRoles":
        return cls(tuple(Column(c["name"], c["role"], c["kind"], c.get("dtype", "")) for c in doc["columns"]))

