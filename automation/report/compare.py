"""`chronos-train runs compare A B [...]`: what differs between runs' configs, and their metrics
side by side with the best of each row marked. Read from the runs' training.json only, so runs
from before the evaluation folder existed compare too. Runs with covariates add the covariates
used (role, type) and each model's scores given the target(s) alone; runs with several targets,
each target's scores."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..context import Target
from ..errors import BadInput, NoSuchRun, RunNotFinished
from ..runs.records import read_record


@dataclass
class Row:
    name: str
    values: list[Any]
    better: str | None  # "lower", "higher" or None (nothing to rank)
    best: list[int] = field(default_factory=list)  # indexes of the runs that are best on this row

    def to_json(self, run_ids: list[str]) -> dict[str, Any]:
        return {"name": self.name, "values": dict(zip(run_ids, self.values)), "better": self.better,
                "best": [run_ids[i] for i in self.best]}


@dataclass
class Comparison:
    run_ids: list[str]
    config: dict[str, list[Any]]  # dotted key -> one value per run, only keys whose values differ
    rows: list[Row]

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.run_ids,
                "config": {k: dict(zip(self.run_ids, v)) for k, v in self.config.items()},
                "metrics": [r.to_json(self.run_ids) for r in self.rows]}


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {prefix: doc}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def config_diff(configs: list[dict]) -> dict[str, list[Any]]:
    flat = [flatten(c or {}) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


def _metric(model: str, name: str) -> Callable[[dict], Any]:
    return lambda r: ((r.get("metrics") or {}).get(model) or {}).get(name)


def _ratio(r: dict) -> float | None:
    ft, naive = _metric("finetuned", "wql")(r), _metric("seasonal_naive", "wql")(r)
    return ft / naive if ft is not None and naive else None


def _covariates(r: dict) -> str | None:
    """"promo (known, numeric), store (past-only, categorical)"; None without covariates (or from
    before runs recorded their columns)."""
    columns = ((r.get("data") or {}).get("columns") or {}).get("columns")
    if columns is None:
        return None
    roles = {"known_covariate": "known", "past_covariate": "past-only"}
    named = [f"{c['name']} ({roles[c['role']]}, {c.get('kind')})" for c in columns if c.get("role") in roles]
    return ", ".join(named) or None


def _per_target(target: str, model: str, name: str) -> Callable[[dict], Any]:
    return lambda r: ((((r.get("evaluation") or {}).get("per_target") or {}).get(target) or {}).get(model) or {}).get(name)


# (row name, how to read it from a record, which way is better)
ROWS: list[tuple[str, Callable[[dict], Any], str | None]] = [
    ("status", lambda r: r.get("final_status"), None),
    ("WQL fine-tuned", _metric("finetuned", "wql"), "lower"),
    ("MASE fine-tuned", _metric("finetuned", "mase"), "lower"),
    ("WQL zero-shot", _metric("zero_shot", "wql"), "lower"),
    ("MASE zero-shot", _metric("zero_shot", "mase"), "lower"),
    ("WQL seasonal naive", _metric("seasonal_naive", "wql"), "lower"),
    ("MASE seasonal naive", _metric("seasonal_naive", "mase"), "lower"),
    ("WQL fine-tuned ÷ naive", _ratio, "lower"),
    ("covariates", _covariates, None),
    ("WQL fine-tuned, target(s) alone", _metric("finetuned_no_covariates", "wql"), "lower"),
    ("MASE fine-tuned, target(s) alone", _metric("finetuned_no_covariates", "mase"), "lower"),
    ("WQL zero-shot, target(s) alone", _metric("zero_shot_no_covariates", "wql"), "lower"),
    ("MASE zero-shot, target(s) alone", _metric("zero_shot_no_covariates", "mase"), "lower"),
    ("backtest windows", lambda r: (r.get("evaluation") or {}).get("windows", 1 if r.get("metrics") else None), None),
    ("final loss", lambda r: (r.get("training") or {}).get("final_loss"), "lower"),
    ("steps", lambda r: (r.get("training") or {}).get("steps_done"), None),
    ("samples/s", lambda r: (r.get("training") or {}).get("samples_per_second"), "higher"),
    ("duration (s)", lambda r: r.get("duration_seconds"), "lower"),
    ("cost (USD)", lambda r: (r.get("cost") or {}).get("estimated_usd"), "lower"),
]


def best_of(values: list[Any], better: str | None) -> list[int]:
    numbers = [(i, v) for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if better is None or len(numbers) < 2:
        return []
    pick = min if better == "lower" else max
    target = pick(v for _, v in numbers)
    best = [i for i, v in numbers if v == target]
    return [] if len(best) == len(numbers) else best  # a tie between all is no news


def target_rows(records: list[dict]) -> list[tuple[str, Callable[[dict], Any], str | None]]:
    """For runs with several targets: the fine-tuned model's WQL and MASE on each, in the runs' order."""
    targets = dict.fromkeys(t for r in records for t in ((r.get("evaluation") or {}).get("targets") or []))
    return [(f"{name} fine-tuned · {target}", _per_target(target, "finetuned", name.lower()), "lower")
            for target in targets for name in ("WQL", "MASE")]


def compare_records(run_ids: list[str], records: list[dict]) -> Comparison:
    rows = []
    for name, read, better in ROWS + target_rows(records):
        values = [read(r) for r in records]
        if all(v is None for v in values):
            continue
        rows.append(Row(name, values, better, best_of(values, better)))
    return Comparison(run_ids, config_diff([r.get("config") for r in records]), rows)


def trial_record(record: dict, number: int) -> dict | None:
    """Trial `number` of a sweep run, as a run's record reads (its settings applied to the run's
    config, its own scores, time and cost share): what `runs compare RUN#N` compares."""
    from instance.protocol.sweepspec import apply

    trial = next((t for t in ((record.get("sweep") or {}).get("trials") or []) if t.get("number") == number), None)
    if trial is None:
        return None
    config = {k: v for k, v in (record.get("config") or {}).items() if k != "sweep"}
    return {
        "final_status": trial.get("state"), "metrics": trial.get("metrics"),
        "evaluation": {"windows": (record.get("evaluation") or {}).get("windows")} if trial.get("metrics") else {},
        "config": apply(config, trial.get("params") or {}),
        "training": {"final_loss": trial.get("final_loss"), "steps_done": trial.get("steps_done")},
        "duration_seconds": trial.get("seconds"), "cost": {"estimated_usd": trial.get("cost_usd")},
    }


def compare(target: Target, run_ids: list[str]) -> Comparison:
    ids = list(dict.fromkeys(run_ids))
    lease = target.state_store().read()
    if lease is not None and lease.run_id in {i.partition("#")[0] for i in ids}:
        raise RunNotFinished(f"run {lease.run_id} has not finished (it is in {lease.state.get('status')}); "
                             "compare it once it ends")
    runs = list(dict.fromkeys(i.partition("#")[0] for i in ids))
    with ThreadPoolExecutor(8) as pool:
        found = dict(zip(runs, pool.map(lambda r: read_record(target, r), runs)))
    unknown = [r for r, doc in found.items() if doc is None]
    if unknown:
        raise NoSuchRun(f"run {unknown[0]} is neither active nor recorded in env {target.env}; "
                        "list runs with `chronos-train runs`")
    if len(ids) == 1 and (found[ids[0]].get("sweep") or {}).get("trials"):  # a sweep alone: its trials
        ids = [f"{ids[0]}#{t['number']}" for t in found[ids[0]]["sweep"]["trials"]]
    if len(ids) < 2:
        raise BadInput("name at least two different runs to compare, e.g. `chronos-train runs compare RUN_A RUN_B`, "
                       "or a sweep run, whose trials compare")
    records = []
    for i in ids:
        run_id, _, trial = i.partition("#")
        if not trial:
            records.append(found[run_id])
            continue
        doc = trial_record(found[run_id], int(trial)) if trial.isdigit() else None
        if doc is None:
            raise NoSuchRun(f"{i}: run {run_id} has no trial {trial} (a sweep's trials are numbered from 0; "
                            f"`chronos-train runs compare {run_id}` lists them)")
        records.append(doc)
    return compare_records(ids, records)
