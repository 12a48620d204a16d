"""`chronos-train report RUN_ID`: one self-contained HTML file that shows what a run did.

The data goes one way: `load` reads what the run left in S3 (its record, model metadata and
evaluation folder) into `RunArtifacts`, `build` turns that into a page (charts from plots.py,
inline as SVG images: no network is needed to view it), `write_report` saves it. A run with
covariates shows them (role, type) and what they bring: each model's scores with them against
the same model given the target(s) alone; a run with several targets, the scores of each. A run that
failed or was killed gets the report of what exists (timeline, loss so far, reason), and the
page says what is missing and why. A run's forecast of the future (forecasts/, every run's last
working phase) gets its own section: what was forecast, from which model, at what cost, and fan
charts of a few series (future.py); a forecast-only run (`kind: forecast`, no training, no
backtest) is reported by that section, its phases and its files. pandas and matplotlib load only
when a report is made.

Refused, one sentence each: an unknown run (exit 2), a run still holding the lock (exit 3), a
completed training run from before runs kept an evaluation folder (exit 1).
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instance.protocol.artifacts import get_json
from instance.protocol.layout import s3_uri
from instance.protocol.timeutil import parse_iso

from ..context import Target
from ..errors import NoEvaluation, NoSuchRun, RunNotFinished
from ..runs.records import duration, read_record
from .future import FutureForecast, load_future

PHONE_PX = 640  # at most this wide, the page stacks its parts and shows the narrow charts
MODEL_NAMES = {"finetuned": "fine-tuned", "zero_shot": "zero-shot (base)", "seasonal_naive": "seasonal naive"}
# The same models given the target(s) alone (runs with covariates; evaluation.WITHOUT_COVARIATES).
WITHOUT_COVARIATES = {"finetuned": "finetuned_no_covariates", "zero_shot": "zero_shot_no_covariates"}
ROLE_NAMES = {"id": "id", "timestamp": "timestamp", "target": "target", "known_covariate": "known covariate",
              "past_covariate": "past-only covariate"}
PARQUETS = ("forecasts", "series_scores", "history", "loss_history")
TYPICAL_SERIES = 4  # fan charts besides the best and the worst


@dataclass
class RunArtifacts:
    run_id: str
    bucket: str
    record: dict
    metadata: dict | None = None
    summary: dict | None = None
    frames: dict[str, Any] = field(default_factory=dict)  # name -> DataFrame, for the files that exist
    evaluation_uri: str = ""
    future: FutureForecast | None = None  # the forecast past the data's end, when the run left one

    @property
    def status(self) -> str:
        return self.record.get("final_status") or "unknown"

    @property
    def kind(self) -> str:
        """train, or forecast: a forecast-only run (no training, no backtest)."""
        return (self.record.get("config") or {}).get("kind") or "train"


# -- load ------------------------------------------------------------------------------------------
def load(target: Target, run_id: str) -> RunArtifacts:
    """Everything the report shows, read from S3; refuses a run it cannot report on."""
    import pandas as pd

    lease = target.state_store().read()
    if lease is not None and lease.run_id == run_id:
        raise RunNotFinished(f"run {run_id} has not finished (it is in {lease.state.get('status')}); its report "
                             f"can be made once it ends: `chronos-train monitor {run_id} --follow`")
    layout = target.layout
    record = read_record(target, run_id)
    if record is None:
        raise NoSuchRun(f"run {run_id} is neither active nor recorded in env {target.env}; "
                        "list runs with `chronos-train runs`")
    prefix = layout.evaluation(run_id)
    present = _keys_under(target, prefix)
    art = RunArtifacts(run_id, target.bucket, record, evaluation_uri=s3_uri(target.bucket, prefix))
    if not record.get("final_status"):
        raise RunNotFinished(f"run {run_id} has no final status yet and holds no lock (lost?); "
                             "`chronos-train verify-cleanup --fix` records how it ended")
    if art.status == "completed" and art.kind != "forecast" and "summary.json" not in present:
        raise NoEvaluation(f"run {run_id} completed before runs kept an evaluation folder (nothing under "
                           f"{art.evaluation_uri}), so it has no report; its metrics are in "
                           f"`chronos-train monitor {run_id}`")
    art.metadata = get_json(target.s3, target.bucket, layout.model_metadata(run_id))
    if "summary.json" in present:
        art.summary = get_json(target.s3, target.bucket, prefix + "summary.json")
    for name in PARQUETS:
        if f"{name}.parquet" in present:
            body = target.s3.get_object(Bucket=target.bucket, Key=f"{prefix}{name}.parquet")["Body"].read()
            art.frames[name] = by_series_and_target(pd.read_parquet(io.BytesIO(body)))
    art.future = load_future(target, run_id, _keys_under(target, layout.forecasts(run_id)), art.frames.get("history"))
    return art


def _keys_under(target: Target, prefix: str) -> set[str]:
    pages = target.s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def by_series_and_target(frame):
    """With several targets, each (series, target) is charted and ranked as a series of its own:
    `item_id` becomes "item · target"."""
    if "target_name" not in frame:
        return frame
    return frame.assign(item_id=frame["item_id"].astype(str) + " · " + frame["target_name"].astype(str))


def write_report(target: Target, run_id: str, out: Path) -> Path:
    page = build(load(target, run_id))
    out.parent.mkdir(parents=True, exist_ok=True)
    from instance.protocol.artifacts import write_atomic

    path = write_atomic(out, page)
    path.chmod(0o644)  # a page to open and to share, not a secret
    return path


# -- what the numbers say ----------------------------------------------------------------------------
def series_gain(scores, baseline: str = "seasonal_naive"):
    """Per series: WQL of the fine-tuned model and of the baseline (mean over windows), their
    ratio and the gain (1 - ratio), best first. Series without a baseline score are left out."""
    import numpy as np

    wide = scores.pivot_table(index="item_id", columns="model", values="wql", aggfunc="mean")
    if "finetuned" not in wide or baseline not in wide:
        return wide.iloc[0:0]
    out = wide[["finetuned", baseline]].rename(columns={baseline: "baseline"})
    out = out[np.isfinite(out["baseline"]) & (out["baseline"] > 0) & np.isfinite(out["finetuned"])]
    out = out.assign(ratio=out["finetuned"] / out["baseline"])
    return out.assign(gain=1 - out["ratio"]).sort_values("gain", ascending=False)


def pick_series(gains, kept: set[str], typical: int = TYPICAL_SERIES) -> list[tuple[str, str]]:
    """(item, why) for the fan charts: the best, the worst, and `typical` around the median gain,
    among the series whose forecasts were kept."""
    ranked = gains[gains.index.isin(kept)]
    if ranked.empty:
        return []
    items = list(ranked.index)
    middle = items[1:-1]
    lo = max(0, len(middle) // 2 - typical // 2)
    picks = [(items[0], "best")] + [(item, "typical") for item in middle[lo:lo + typical]]
    return picks + ([(items[-1], "worst")] if len(items) > 1 else [])


def gain_text(value: float | None, base: float | None) -> tuple[str, str]:
    """('−36 %', 'better') for a metric against a baseline's (lower is better)."""
    if value is None or not base:
        return "–", ""
    change = (value - base) / base
    return f"{change * 100:+.0f} %".replace("-", "−"), "better" if change < 0 else ("worse" if change > 0 else "")


def phase_rows(record: dict) -> list[dict[str, Any]]:
    """The phases as bars: start (s since the run began), seconds, result, and a label with the
    duration and the cost (the run's hourly price for that long). A gap before the first phase is
    the launch and the machine's boot."""
    phases = record.get("phases") or {}
    began = parse_iso(record.get("started_at"))
    hourly = (record.get("cost") or {}).get("hourly_usd") or None  # a local run costs nothing: no figure
    ended = parse_iso(record.get("ended_at"))
    rows = []
    ordered = sorted(phases.items(), key=lambda kv: kv[1].get("started_at") or "")
    if ordered and began is not None:
        first = parse_iso(ordered[0][1].get("started_at"))
        if first is not None and (first - began).total_seconds() > 0.5:
            rows.append(dict(name="launch and boot", start=0.0, seconds=(first - began).total_seconds(), result="ok"))
    for name, p in ordered:
        start, end = parse_iso(p.get("started_at")), parse_iso(p.get("ended_at")) or ended
        if start is None or began is None:
            continue
        seconds = p.get("seconds") if p.get("seconds") is not None else ((end - start).total_seconds() if end else 0.0)
        rows.append(dict(name=name, start=(start - began).total_seconds(), seconds=float(seconds),
                         result=p.get("result") or "ok"))
    for row in rows:
        cost = "" if hourly is None else f" · {_usd(hourly * row['seconds'] / 3600)}"
        row["label"] = f"{_secs(row['seconds'])}{cost}"
        row["cost_usd"] = None if hourly is None else hourly * row["seconds"] / 3600
    return rows


def _secs(seconds: float) -> str:
    return duration(seconds) if seconds >= 1 else f"{seconds:.1f}s"


def _usd(value: float | None) -> str:
    return "–" if value is None else f"${value:,.4f}"


def missing(art: RunArtifacts) -> list[str]:
    """What the report cannot show, one sentence each."""
    out = []
    status, reason = art.status, art.record.get("reason")
    ended = f"the run {'was ' if status == 'killed' else ''}{status}" + (f" ({reason})" if reason else "")
    if art.kind == "forecast":  # it trains and scores nothing: only its forecast can be missing
        return [] if art.future else [f"No forecast: {ended} before its forecast was uploaded."]
    if art.summary is None:
        out.append(f"No evaluation: {ended} before its model was scored.")
    if "loss_history" not in art.frames:
        out.append(f"No loss history: {ended} before training logged a loss." if status != "completed"
                   else "No loss history: this run's training logged none.")
    if art.metadata is None and status == "completed":
        out.append("No model metadata: model_metadata.json is missing from the run's folder.")
    if status != "completed" and art.metadata is None:
        out.append("No model: only a completed run uploads one.")
    return out


# -- build -----------------------------------------------------------------------------------------
def _data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _img(svg: str, alt: str, cls: str = "chart", phone: str | None = None) -> str:
    """An inline image; with `phone`, a narrower drawing that phone-width screens show instead
    (the same text size on a canvas about half as wide)."""
    img = f'<img class="{cls}" alt="{html.escape(alt)}" src="{_data_uri(svg)}">'
    if phone is None:
        return img
    return f'<picture><source media="(max-width: {PHONE_PX}px)" srcset="{_data_uri(phone)}">{img}</picture>'


def _num(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fact(name: str, value: str) -> str:
    return f"<div><dt>{html.escape(name)}</dt><dd>{value}</dd></div>"


def header(art: RunArtifacts) -> str:
    r, e = art.record, html.escape
    host, cost, training = r.get("host") or {}, r.get("cost") or {}, r.get("training") or {}
    cfg = r.get("config") or {}
    trained_on = (art.metadata or {}).get("trained_on") or {}
    data, summary = r.get("data") or {}, art.summary or {}
    machine = host.get("instance_type") or "?"
    if host.get("executor") == "local":
        machine = f"this machine (local run; priced as {machine})"
    gpus = trained_on.get("gpus", host.get("gpus"))
    if isinstance(gpus, list):
        gpus = len(gpus)
    device = training.get("device")
    machine += f" · {gpus} GPU{'s' if gpus != 1 else ''}" if gpus else (f" · trained on {device}" if device else "")
    if host.get("spot"):
        machine += " · spot"
    model = cfg.get("model") or {}
    model_text = f"{model.get('base', '?')} · {model.get('finetune_mode', '?')}"
    if art.kind == "forecast":
        source = art.future.model_run if art.future else None
        model_text = f"{source}'s model (forecast only)" if source else f"{model.get('base', '?')} (forecast only)"
    series = data.get("series") or summary.get("dataset_series")
    points = data.get("points") or summary.get("dataset_points")
    size = ", ".join(x for x in (f"{series:,} series" if series else "", f"{points:,} points" if points else "") if x)
    steps = f"{training.get('steps_done')} of {training.get('total_steps')}" if training.get("total_steps") else "–"
    status = art.status
    reason = r.get("reason")
    error = r.get("error") or {}
    facts = [
        _fact("status", f'<span class="badge {e(status)}">{e(status)}</span>' + (f" {e(reason)}" if reason else "")),
        _fact("duration", e(duration(r.get("duration_seconds")))),
        _fact("cost", e("$0.00 (local run)" if host.get("executor") == "local" else
                        ("–" if cost.get("estimated_usd") is None else f"${cost['estimated_usd']:,.4f} (estimated)"))),
        _fact("machine", e(machine)),
        _fact("model", e(model_text)),
        *([] if art.kind == "forecast" else [_fact("steps", e(steps) + (
            f" · final loss {training['final_loss']:.4f}" if training.get("final_loss") is not None else ""))]),
        _fact("dataset", f"<code>{e(data.get('uri') or cfg.get('dataset') or '?')}</code>" + (f" · {e(size)}" if size else "")),
        _fact("when", e(f"{_when(r.get('started_at'))} → {_when(r.get('ended_at'))} UTC")),
    ]
    if error:
        facts.append(_fact("error", e(f"{error.get('class')}: {error.get('message')} (in {error.get('phase')})")))
    return f'<header><h1>{e(art.run_id)}</h1><dl class="facts">{"".join(facts)}</dl></header>'


def _when(text: str | None) -> str:
    dt = parse_iso(text)
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "?"


def loss_section(art: RunArtifacts) -> str:
    from . import plots

    loss = art.frames.get("loss_history")
    if loss is None or loss.empty:
        return ""
    training = art.record.get("training") or {}
    total = training.get("total_steps") or (art.record.get("config") or {}).get("training", {}).get("num_steps")
    stopped = int(loss["step"].max()) if art.status != "completed" else None
    note = f"{len(loss)} logged steps" + (f" of {total}" if total else "") + \
        ("; the run stopped at the red line" if stopped is not None else "")
    return (f'<section><h2>Training</h2><p class="note">{html.escape(note)}</p>'
            f'{_img(plots.loss_curve(loss, total, stopped), "training loss by step", phone=plots.loss_curve(loss, total, stopped, plots.NARROW))}'
            "</section>")


SHORT_NAMES = {"seasonal_naive": "naive", "zero_shot": "zero-shot"}


def _model_cell(model: str) -> str:
    return f'<td><span class="dot" style="background:{_color(model)}"></span>{MODEL_NAMES[model]}</td>'


def _table(head: list[str], rows: list[str], cls: str = "") -> str:
    """`cls`: "text" left-aligns every column (words, not numbers); "text2" the second too."""
    table = f'<table class="{cls}">' if cls else "<table>"
    return (f'<div class="scroll">{table}<thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def evaluation_table(summary: dict) -> str:
    """Two tables: the overall scores with the change against each baseline (narrow enough for a
    phone), then WQL window by window."""
    metrics, per_window = summary.get("metrics") or {}, summary.get("per_window") or {}
    models = [m for m in MODEL_NAMES if metrics.get(m)]
    windows = summary.get("windows") or 1
    bounds = summary.get("window_bounds") or []
    baselines = [b for b in ("seasonal_naive", "zero_shot") if metrics.get(b)]
    rows = []
    for m in models:
        mm = metrics[m]
        cells = [_model_cell(m), f"<td>{_num(mm.get('wql'))}</td>", f"<td>{_num(mm.get('mase'), 3)}</td>"]
        for b in baselines:
            if b == m:
                cells.append('<td class="muted">baseline</td>')
                continue
            parts = [gain_text(mm.get(k), metrics[b].get(k)) for k in ("wql", "mase")]
            cells.append('<td class="gain">' + '<i class="sep"> / </i>'.join(
                f'<span class="{c}">{t}</span>' for t, c in parts) + "</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    overall = _table(["model", "WQL ↓", "MASE ↓"] + [f"vs {SHORT_NAMES[b]}" for b in baselines], rows)
    by_window = []
    for m in models:
        scores = [f"<td>{_num(w.get('wql'))}</td>" for w in per_window.get(m, [])]
        by_window.append(f"<tr>{_model_cell(m)}{''.join(scores)}{'<td></td>' * (windows - len(scores))}</tr>")
    spans = ""
    if bounds:
        spans = "; ".join(f"w{b['window'] + 1}: {_day(b['first'])} – {_day(b['last'])}" for b in bounds)
        spans = f'<p class="note">Windows, oldest first: {html.escape(spans)}.</p>'
    windowed = _table(["WQL by window"] + [f"w{k + 1}" for k in range(windows)], by_window) if per_window else ""
    legend = ('<p class="note">vs: the change in WQL / MASE against that baseline '
              "(negative: the model's error is lower).</p>")
    return overall + legend + windowed + spans


def _day(text: str) -> str:
    return str(text)[:16].replace("T", " ").removesuffix(" 00:00")


def _color(model: str) -> str:
    from .plots import COLORS

    return COLORS[model]


def evaluation_section(art: RunArtifacts) -> str:
    s = art.summary
    if s is None:
        return ""
    how = (f"Rolling-origin backtest: the last {s.get('windows')} windows of {s.get('prediction_length')} points "
           f"of every series, none of them seen in training; overall = mean of the windows. "
           f"{str(s.get('sample', '')).capitalize()}. Lower is better.")
    if s.get("targets"):
        how += f" {len(s['targets'])} targets, forecast jointly: a score is the mean of theirs (each below)."
    return (f'<section><h2>Evaluation</h2><p class="note">{html.escape(how)}</p>'
            f"{evaluation_table(s)}{per_target_table(s)}</section>")


def per_target_table(summary: dict) -> str:
    """With several targets, each one's overall WQL and MASE by model."""
    per_target = summary.get("per_target") or {}
    if not per_target:
        return ""
    rows = []
    for target in summary.get("targets") or sorted(per_target):  # the config's order (JSON keys are sorted)
        models = per_target.get(target) or {}
        for m in MODEL_NAMES:
            if models.get(m):
                rows.append(f"<tr><td>{html.escape(target)}</td>{_model_cell(m)}<td>{_num(models[m].get('wql'))}</td>"
                            f"<td>{_num(models[m].get('mase'), 3)}</td></tr>")
    return _table(["target", "model", "WQL ↓", "MASE ↓"], rows, "text2")


def covariates_section(art: RunArtifacts) -> str:
    """The columns the model was given (role, type) and, for each model, its scores with the
    covariates against the target(s) alone."""
    columns = ((art.metadata or {}).get("columns") or (art.record.get("data") or {}).get("columns") or {}).get("columns")
    covariates = [c for c in columns or [] if c.get("role") in ("known_covariate", "past_covariate")]
    if not covariates:
        return ""
    e = html.escape
    listed = _table(["covariate", "role", "type"], cls="text", rows=[
        f"<tr><td><code>{e(c['name'])}</code></td><td>{e(ROLE_NAMES.get(c['role'], c['role']))}</td>"
        f"<td>{e(c.get('kind', ''))} <span class=\"muted\">({e(c.get('dtype', ''))})</span></td></tr>"
        for c in covariates])
    metrics = (art.summary or {}).get("metrics") or art.record.get("metrics") or {}
    rows = []
    for model, alone in WITHOUT_COVARIATES.items():
        with_, without = metrics.get(model), metrics.get(alone)
        if not with_ or not without:
            continue
        cells = [_model_cell(model)]
        for key, digits in (("wql", 4), ("mase", 3)):
            change, cls = gain_text(with_.get(key), without.get(key))
            cells += [f"<td>{_num(with_.get(key), digits)}</td>", f"<td>{_num(without.get(key), digits)}</td>",
                      f'<td class="gain"><span class="{cls}">{change}</span></td>']
        rows.append(f"<tr>{''.join(cells)}</tr>")
    brings = ""
    if rows:
        brings = (_table(["model", "WQL with", "WQL alone", "change", "MASE with", "MASE alone", "change"], rows) +
                  '<p class="note">with: the model given its covariates (in each backtest window, the known ones\' '
                  "actual values over the window); alone: the same model given the target(s) only. Negative: the "
                  "covariates lowered the error.</p>")
    note = ('<p class="note">Known covariates are shown to the model over the horizon (training windows, backtest '
            "windows, forecasts); past-only ones up to the forecast's start. Categorical ones are encoded by "
            "Chronos.</p>")
    return f"<section><h2>Covariates</h2>{note}{listed}{brings}</section>"


def forecasts_section(art: RunArtifacts) -> str:
    from . import plots

    scores, forecasts, history = (art.frames.get(n) for n in ("series_scores", "forecasts", "history"))
    if scores is None or forecasts is None or history is None:
        return ""
    gains = series_gain(scores)
    picks = pick_series(gains, set(forecasts["item_id"].unique()))
    charts = []
    for item, why in picks:
        f = forecasts[forecasts["item_id"] == item]
        g = gains.loc[item]
        sub = f"{why} · WQL {g['finetuned']:.3f} vs {g['baseline']:.3f} naive ({gain_text(g['finetuned'], g['baseline'])[0]})"
        svg = plots.fan_chart(history[history["item_id"] == item], f[f["model"] == "finetuned"], str(item), sub,
                              naive=f[f["model"] == "seasonal_naive"])
        charts.append(_img(svg, f"forecast of {item} ({why})", "chart small"))
    legend = "".join(f'<span class="key"><i class="{style}" style="--c:{color}"></i>{html.escape(label)}</span>'
                     for label, color, style in plots.FAN_LEGEND)
    parts = ['<section><h2>Forecasts</h2><p class="note">The fine-tuned model\'s median and 10-90 % band in '
             "each window against the actuals, for the series where it gained most and least over seasonal naive "
             f'and a few around the median gain.</p><p class="legend">{legend}</p>',
             f'<div class="grid">{"".join(charts)}</div>']
    if len(gains):
        ratios = gains["ratio"].tolist()
        parts.append(_img(plots.ratio_histogram(ratios), "per-series WQL ratio to seasonal naive",
                          phone=plots.ratio_histogram(ratios, size=plots.NARROW)))
    parts.append("</section>")
    return "".join(parts)


def future_section(art: RunArtifacts) -> str:
    """The forecast past the end of the data: what it is, where it came from, what it cost, and
    fan charts of a few series (their last points, the median, the quantile bands)."""
    from . import plots

    fut = art.future
    if fut is None:
        return ""
    e, info = html.escape, fut.info
    h, freq = info.get("prediction_length"), info.get("frequency")
    span = f"{_day(info.get('first_timestamp'))} → {_day(info.get('last_timestamp'))}" if info.get("first_timestamp") else ""
    if art.kind == "forecast":
        made_by = f"{fut.model_run}'s model" if fut.model_run else str(info.get("model") or "?")
    else:
        made_by = "this run's fine-tuned model, given all of each series (the backtest windows too)"
    phase = next((r for r in phase_rows(art.record) if r["name"] == "forecast"), None)
    cost = "–"
    if phase is not None:
        local = phase["cost_usd"] is None and (art.record.get("host") or {}).get("executor") == "local"
        cost = f"{_secs(phase['seconds'])} · {'$0.00 (local run)' if local else _usd(phase['cost_usd'])}"
    covariates = ", ".join(info.get("known_covariates") or [])
    facts = [
        _fact("series", e(f"{info.get('series', 0):,}" + (f" × {len(info['targets'])} targets"
                                                             if len(info.get("targets") or []) > 1 else ""))),
        _fact("horizon", e(f"{h} steps" + (f" (frequency {freq})" if freq else "") + (f" · {span}" if span else ""))),
        _fact("model", f"<code>{e(made_by)}</code>" if art.kind == "forecast" else e(made_by)),
        _fact("quantiles", e(", ".join(fut.quantile_columns) or "–")),
        _fact("cost", e(f"forecast phase {cost}")),
    ]
    if covariates:
        facts.append(_fact("future", e(f"known covariates {covariates} from {info.get('future') or '?'}")))
    charts = []
    drew_history = False
    for item in fut.items:
        f = fut.frame[fut.frame["item_id"] == item]
        # three horizons of history: enough to see the series' pattern, little enough to see the forecast's
        hist = None if fut.history is None else fut.history[fut.history["item_id"] == item].tail(max(3 * (h or 8), 24))
        drew_history = drew_history or (hist is not None and len(hist) > 0)
        sub = f"median {f['predictions'].iloc[-1]:,.4g} at the last step" if len(f) else ""
        charts.append(_img(plots.future_fan_chart(hist, f, str(item), sub, fut.quantile_columns),
                           f"forecast of {item}", "chart small"))
    legend = "".join(f'<span class="key"><i class="{style}" style="--c:{color}"></i>{html.escape(label)}</span>'
                     for label, color, style in plots.future_legend(fut.quantile_columns, drew_history))
    several = len(info.get("targets") or []) > 1
    total = info.get("series", len(charts)) * (len(info["targets"]) if several else 1)
    shown = (f"{len(charts)} of the {total:,} {'series and targets' if several else 'series'}, spread over the "
             "data's order: their last points and the forecast after them.")
    uri = (art.record.get("artifacts") or {}).get("forecast_uri")
    read = f' Every series: <code>pandas.read_parquet("{e(uri)}")</code> where s3fs is installed.' if uri else ""
    return (f'<section><h2>Forecast of the next {e(str(h))} steps</h2><dl class="facts">{"".join(facts)}</dl>'
            f'<p class="note">{e(shown)}{read}</p><p class="legend">{legend}</p>'
            f'<div class="grid">{"".join(charts)}</div></section>')


def timeline_section(art: RunArtifacts) -> str:
    from . import plots

    rows = phase_rows(art.record)
    if not rows:
        return ""
    table = "".join(
        f"<tr><td>{html.escape(r['name'])}</td><td>{_secs(r['seconds'])}</td><td>{_usd(r['cost_usd'])}</td>"
        f"<td>{html.escape(r['result'])}</td></tr>" for r in rows)
    chart = _img(plots.phase_timeline(rows), "phase timeline", phone=plots.phase_timeline(rows, plots.NARROW))
    return (f'<section><h2>Phases</h2>{chart}'
            f'<div class="scroll"><table><thead><tr><th>phase</th><th>time</th><th>cost</th><th>result</th></tr></thead>'
            f"<tbody>{table}</tbody></table></div></section>")


def sweep_section(art: RunArtifacts) -> str:
    """A sweep's trials: one row each (settings, score, steps, time, cost share, state), the
    run's model marked, and the metric against each swept setting."""
    from . import plots

    sweep = art.record.get("sweep") or {}
    trials = sweep.get("trials") or []
    if not trials:
        return ""
    e, metric = html.escape, sweep.get("metric", "wql")
    best = (sweep.get("best") or {}).get("trial") if art.status == "completed" else None
    settings = list(dict.fromkeys(k for t in trials for k in (t.get("params") or {})))
    rows = []
    for t in trials:
        params = t.get("params") or {}
        state = t.get("state") or "?"
        mark = " ★ the run's model" if t["number"] == best else ""
        steps = f"{t.get('steps_done')} / {t.get('total_steps')}" if t.get("total_steps") else "–"
        share = t.get("cost_share")
        rows.append("<tr>" + f"<td>{t['number']}</td>" + "".join(f"<td>{e(str(params.get(k, '–')))}</td>" for k in settings)
                    + f"<td>{_num(t.get('value'))}</td><td>{e(steps)}</td><td>{_secs(t.get('seconds') or 0)}</td>"
                    + f"<td>{'–' if share is None else f'{share:.0%}'}</td><td>{e(state)}{e(mark)}</td></tr>")
    head = ["trial", *map(e, settings), f"{e(metric.upper())} ↓", "steps", "time", "cost share", "state"]
    done = sum(1 for t in trials if t.get("state") in ("complete", "pruned", "failed"))
    note = (f"{len(trials)} trials ({done} finished, {sweep.get('parallel', 1)} at a time, {e(sweep.get('sampler', '?'))} "
            f"sampler{', ' + e(sweep.get('pruner')) + ' pruner' if sweep.get('pruner') not in (None, 'none') else ''}); "
            f"picked by the backtest {e(metric.upper())} of the fine-tuned model, lower is better")
    charts = "".join(_img(plots.metric_by_setting(trials, k, metric, best), f"{metric} by {k}")
                     for k in settings)
    return (f'<section><h2>Sweep</h2><p class="note">{note}</p>{_table(head, rows)}'
            f'<div class="grid">{charts}</div></section>')


def missing_section(art: RunArtifacts) -> str:
    gaps = missing(art)
    if not gaps:
        return ""
    items = "".join(f"<li>{html.escape(g)}</li>" for g in gaps)
    return f'<section class="missing"><h2>Not in this report</h2><ul>{items}</ul></section>'


def files_section(art: RunArtifacts) -> str:
    arts = {k: v for k, v in (art.record.get("artifacts") or {}).items() if v}
    if not arts:
        return ""
    rows = "".join(f"<tr><td>{html.escape(k.removesuffix('_uri'))}</td><td><code>{html.escape(str(v))}</code></td></tr>"
                   for k, v in sorted(arts.items()))
    how = ('<p class="note">The evaluation files are parquet: <code>pandas.read_parquet("'
           f'{html.escape(art.evaluation_uri)}forecasts.parquet")</code> where s3fs is installed.</p>'
           if art.summary else "")
    return f'<section><h2>Files</h2><div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>{how}</section>'


def build(art: RunArtifacts) -> str:
    if art.kind == "forecast":
        parts = [header(art), missing_section(art), future_section(art), timeline_section(art), files_section(art)]
    else:
        parts = [header(art), missing_section(art), sweep_section(art), loss_section(art), evaluation_section(art),
                 covariates_section(art), forecasts_section(art), future_section(art), timeline_section(art),
                 files_section(art)]
    kind = " · forecast run" if art.kind == "forecast" else ""
    return PAGE.format(title=html.escape(f"{art.run_id}{kind} · {art.status}"), css=CSS, body="".join(parts))


CSS = """
:root { color-scheme: light; --fg:#1f2328; --muted:#57606a; --line:#d0d7de; --bg:#ffffff; --soft:#f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--soft); color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", "Helvetica Neue", "DejaVu Sans", Arial, sans-serif; }
main { max-width: 960px; margin: 0 auto; padding: 24px 20px 40px; }
header, section { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
                  margin-bottom: 16px; }
h1 { font-size: 22px; margin: 0 0 12px; word-break: break-all; }
h2 { font-size: 17px; margin: 0 0 8px; }
.facts { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 6px 24px; margin: 0; }
.facts div { display: flex; gap: 10px; min-width: 0; }
dt { color: var(--muted); flex: 0 0 72px; }
dd { margin: 0; min-width: 0; overflow-wrap: anywhere; }
code { font-size: 13px; background: var(--soft); padding: 1px 4px; border-radius: 4px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-weight: 600; color: #fff; background: #57606a; }
.badge.completed { background: #1a7f37; } .badge.failed { background: #cf222e; } .badge.killed { background: #9a6700; }
.note { color: var(--muted); font-size: 13.5px; margin: 0 0 10px; }
.scroll + .note { margin-top: 6px; }
img.chart { display: block; width: 100%; height: auto; margin: 8px 0; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px 16px; }
.grid img.chart { margin: 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 5px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { color: var(--muted); font-weight: 600; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px; }
.sep { font-style: normal; }
.better { color: #1a7f37; font-weight: 600; } .worse { color: #cf222e; font-weight: 600; } .muted { color: var(--muted); }
.missing { border-color: #d4a72c; background: #fff8c5; } .missing ul { margin: 0; padding-left: 20px; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 13px; margin: 0 0 8px; }
.key { display: inline-flex; align-items: center; gap: 6px; }
.key i { display: inline-block; width: 18px; height: 0; border-top: 2px solid var(--c); }
.key i.dash { border-top-style: dashed; }
.key i.band { height: 10px; border: 0; background: var(--c); opacity: .25; }
table.kv td { text-align: left; }
table.text th, table.text td, table.text2 th:nth-child(2), table.text2 td:nth-child(2) { text-align: left; }
@media (max-width: 640px) {
  main { padding: 10px 8px 24px; }
  header, section { padding: 12px; border-radius: 6px; }
  h1 { font-size: 18px; }
  .facts, .grid { grid-template-columns: 1fr; }
  table { font-size: 12.5px; }
  th, td { padding: 5px 5px; }
  td.gain span { display: block; } td.gain .sep { display: none; }
}
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body><main>{body}<footer>chronos-train report · made from the run's records in S3</footer></main></body>
</html>
"""
