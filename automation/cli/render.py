"""How runs look for people (rich). Imported only by commands that print for people.

In a terminal: a live panel while following, panels and tables after. Anywhere else (a pipe, a
log, CI): one line per change while following, and nothing is ever cut to fit a width, so run
ids and S3 URIs can be copied from the output.
"""
from __future__ import annotations

import time
from typing import Callable

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from instance.protocol.pricing import PRICES
from instance.protocol.status import MAIN_CHAIN

from ..runs.records import RunView, duration

STATUS_STYLE = {"completed": "bold green", "failed": "bold red", "killed": "bold yellow", "training": "bold cyan"}


def money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:,.2f}"


def timeline(v: RunView) -> Text:
    seen = [h.get("status") for h in v.history]
    text = Text()
    for i, status in enumerate(MAIN_CHAIN):
        style = "green" if status.value in seen[:-1] or (not v.active and status.value in seen) else "dim"
        if v.active and seen and status.value == seen[-1]:
            style = "bold cyan"
        text.append(status.value, style=style)
        if i < len(MAIN_CHAIN) - 1:
            text.append(" → ", style="dim")
    for extra in ("failed", "killed"):
        if extra in seen:
            text.append(f"  ✗ {extra}", style=STATUS_STYLE[extra])
    return text


def run_panel(v: RunView) -> Panel:
    status = v.final_status or v.status
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_row("status", Text(status, style=STATUS_STYLE.get(status, "bold")))
    head.add_row("phases", timeline(v))
    p = v.progress or {}
    total, step = p.get("total_steps"), p.get("step") or p.get("steps_done")
    if total:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=total, completed=min(step or 0, total), width=30),
                    Text(f"step {step or 0}/{total}"),
                    Text(f"loss {p['loss']:.4f}" if p.get("loss") is not None else
                         (f"loss {p['final_loss']:.4f}" if p.get("final_loss") is not None else "")),
                    Text(f"ETA {duration(p.get('eta_seconds'))}" if v.active and p.get("eta_seconds") else ""))
        head.add_row("progress", bar)
    if v.sweep:
        head.add_row("trials", sweep_line(v.sweep))
    head.add_row("elapsed", duration(v.elapsed_seconds))
    where = v.executor or "?"
    if v.instance_type:
        where += f" · {v.instance_type}{' spot' if v.spot else ''}"
    if v.zone:
        where += f" · {v.zone}"
    if v.instance_id:
        where += f" · {v.instance_id}"
    head.add_row("machine", where)
    if v.max_machines and v.max_machines > 1 or v.interruptions:
        n = len(v.interruptions)
        head.add_row("machines", f"attempt {v.attempt or 1} of {v.max_machines or '?'} · "
                                 f"{n} interruption{'s' if n != 1 else ''}")
    if v.lost:
        head.add_row("now", Text(f"{lost_label(v)}: {v.machine_note}; `chronos-train verify-cleanup --fix` records it and "
                                 "releases the lock", style="bold red"))
    elif v.waiting:
        head.add_row("now", Text(v.waiting, style="yellow"))
    saving = ""
    if v.on_demand_usd and v.cost_usd is not None and v.on_demand_usd > v.cost_usd:
        saving = f", {money(v.on_demand_usd - v.cost_usd)} less than on-demand"
    head.add_row("cost so far" if v.active else "cost",
                 money(v.cost_usd) + (" (local)" if v.executor == "local" else f" (estimated{saving})"))
    if v.reason:
        head.add_row("reason", v.reason)
    if v.error:
        head.add_row("error", Text(f"{v.error.get('class')}: {v.error.get('message')} (in {v.error.get('phase')})", style="red"))
    return Panel(head, title=f"[bold]{v.run_id}", border_style=STATUS_STYLE.get(status, "blue").replace("bold ", ""),
                 expand=False)


def metrics_table(metrics: dict, windows: int | None = None) -> Table | None:
    rows = [(name, metrics.get(key)) for name, key in
            (("fine-tuned", "finetuned"), ("fine-tuned, target(s) alone", "finetuned_no_covariates"),
             ("zero-shot (base)", "zero_shot"), ("zero-shot, target(s) alone", "zero_shot_no_covariates"),
             ("seasonal naive", "seasonal_naive"))]
    rows = [(n, m) for n, m in rows if m]
    if not rows:
        return None
    title = (f"backtest: mean of {windows} windows at the end of every series" if windows and windows > 1
             else "held-out evaluation (last window of every series)")
    table = Table(title=title, title_justify="left", min_width=60)
    table.add_column("model")
    table.add_column("WQL ↓", justify="right")
    table.add_column("MASE ↓", justify="right")
    for name, m in rows:
        table.add_row(name, *(f"{m[k]:.4f}" if m.get(k) is not None else "-" for k in ("wql", "mase")))
    return table


def final_report(v: RunView) -> Group:
    parts = [run_panel(v)]
    table = metrics_table(v.metrics, (v.evaluation or {}).get("windows"))
    if table is not None:
        parts.append(table)
    if v.artifacts:
        art = Table.grid(padding=(0, 2))
        art.add_column(style="dim")
        art.add_column()
        for k, uri in v.artifacts.items():
            if uri:
                art.add_row(k.replace("_uri", ""), str(uri))
        parts.append(Panel(art, title="artifacts", border_style="dim", expand=False))
    return Group(*parts)


def runs_table(views: list[RunView]) -> Table:
    table = Table(title="runs", title_justify="left")
    for col, just in (("run", "left"), ("status", "left"), ("reason", "left"), ("duration", "right"),
                      ("cost", "right"), ("WQL", "right"), ("vs naive", "right")):
        table.add_column(col, justify=just)
    for v in views:
        ft, naive = (v.metrics or {}).get("finetuned") or {}, (v.metrics or {}).get("seasonal_naive") or {}
        wql = ft.get("wql")
        ratio = f"{wql / naive['wql']:.2f}×" if wql is not None and naive.get("wql") else "-"
        status = v.status if v.active else (v.final_status or v.status)
        table.add_row(v.run_id + (" · forecast" if v.kind == "forecast" else ""), Text(status + (" (active)" if v.active else ""), style=STATUS_STYLE.get(status, "")),
                      v.reason or "", duration(v.elapsed_seconds), money(v.cost_usd),
                      "-" if wql is None else f"{wql:.4f}", ratio)
    return table


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def compare_tables(comparison) -> Group:
    """`runs compare` for people: the config values that differ, then the metrics, best marked ★."""
    parts = []
    config = Table(title="config values that differ", title_justify="left")
    config.add_column("key")
    for rid in comparison.run_ids:
        config.add_column(rid)
    for key, values in comparison.config.items():
        config.add_row(key, *(_cell(v) for v in values))
    parts.append(config if comparison.config else Text("same config in every run", style="dim"))
    metrics = Table(title="metrics (★ best of the row)", title_justify="left")
    metrics.add_column("")
    for rid in comparison.run_ids:
        metrics.add_column(rid, justify="right")
    for row in comparison.rows:
        cells = [Text(_cell(v) + (" ★" if i in row.best else ""), style="bold green" if i in row.best else "")
                 for i, v in enumerate(row.values)]
        metrics.add_row(row.name + {"lower": " ↓", "higher": " ↑"}.get(row.better or "", ""), *cells)
    parts.append(metrics)
    return Group(*parts)


# Wide enough for any run id, URI or table row: output that is not a terminal is never cut.
UNCUT_WIDTH = 1000


def console(stderr: bool = False) -> Console:
    out = Console(stderr=stderr, highlight=False)
    return out if out.is_terminal else Console(stderr=stderr, highlight=False, width=UNCUT_WIDTH)


def lost_label(v: RunView) -> str:
    """A run whose machine is gone for good: `lost`, or `failed (boot_failed)` when the rule knows
    why (the machine's boot failure record, its deadline)."""
    return f"failed ({v.reason})" if v.reason and v.reason != "lost" else "lost"


def sweep_line(sweep: dict) -> str:
    """"2 done · 2 running · 4 left · best so far: trial 1, wql 0.1234 (learning_rate=0.001)"."""
    line = f"{sweep.get('done', 0)} done · {sweep.get('running', 0)} running · {sweep.get('left', 0)} left"
    best = sweep.get("best")
    if best:
        params = ", ".join(f"{k}={v}" for k, v in (best.get("params") or {}).items())
        line += f" · best so far: trial {best['trial']}, {sweep.get('metric', 'wql')} {best['value']:.4f} ({params})"
    return line


def progress_line(v: RunView) -> str:
    p = v.progress or {}
    step = f" step {p.get('step')}/{p.get('total_steps')}" if p.get("total_steps") else ""
    if v.sweep and v.active:
        step = f" trial {p.get('trial')}{step} ({sweep_line(v.sweep)})"
    loss = f" loss {p['loss']:.4f}" if p.get("loss") is not None else ""
    if v.lost:
        return f"{v.run_id}: {v.status}: {lost_label(v)}: {v.machine_note}"
    if v.waiting:
        return f"{v.run_id}: {v.status}: {v.waiting}"
    return f"{v.run_id}: {v.status}{step}{loss}"


class LinePrinter:
    """Following without a terminal: one line per change. A new status prints at once; progress
    within a status at most every `every` seconds; the same line never twice."""

    def __init__(self, emit: Callable[[str], None], every: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.emit, self.every, self.clock = emit, every, clock
        self._last_line: str | None = None
        self._last_status: str | None = None
        self._last_at = float("-inf")

    def __call__(self, v: RunView) -> None:
        if not v.active:
            return  # the final report follows
        line, now = progress_line(v), self.clock()
        if line == self._last_line:
            return
        if v.status == self._last_status and now - self._last_at < self.every:
            return
        self.emit(line)
        self._last_line, self._last_status, self._last_at = line, v.status, now


def verify_lines(report) -> list[str]:
    """verify-cleanup for people: what was fixed, what bills, what is only a record."""
    lines = [f"fixed: {f.kind} {f.id} ({f.detail})" for f in report.fixed]
    lines += [f"LEFT: {f.kind} {f.id} ({f.detail})" for f in report.leftovers]
    lines += [f"record: {f.kind} {f.id} ({f.detail}; `--fix` removes it)" for f in report.records]
    lines += [f"not fixed: {key} ({why})" for key, why in report.not_fixed.items()]
    lines += [f"starting (inside the launch grace window): instance {i}" for i in report.starting]
    if report.active_run:
        run = report.active
        lines.append(f"active run: {report.active_run} ({run['status']}): {run['why']}")
    st = report.storage
    lines.append(f"S3 at rest: runs and logs ${st['runs_and_logs_usd_per_month']:.4f}/month, "
                 f"datasets ${st['datasets_usd_per_month']:.4f}/month")
    if report.clean and report.active_run:
        # Never "clean" while a lock is held: the run bills until it ends.
        lines.append("1 run active; nothing else bills" + (f" ({len(report.records)} record(s) that cost nothing)"
                                                           if report.records else ""))
    elif report.clean:
        lines.append("clean" + (f" of anything that bills ({len(report.records)} record(s) that cost nothing)"
                                if report.records else ""))
    else:
        lines.append(f"{len(report.leftovers)} leftover(s) that bill; run with --fix")
    return lines


def _preview_facts(inputs: dict) -> str:
    """What a planned step's inputs say about the machine: the template's type and image, the
    group's types (in order) and how many subnets (zones) it may launch in."""
    facts = [f"{key} {inputs[key]}" for key in ("instanceType", "imageId") if inputs.get(key)]
    overrides = ((inputs.get("mixedInstancesPolicy") or {}).get("launchTemplate") or {}).get("overrides") or []
    if overrides:
        facts.append("types " + ", ".join(o.get("instanceType", "?") for o in overrides))
    if inputs.get("vpcZoneIdentifiers"):
        facts.append(f"{len(inputs['vpcZoneIdentifiers'])} subnets")
    return "; ".join(facts)


def dry_run_lines(result) -> list[str]:
    """launch --dry-run for people: the run it would start, the checks, the preview, the verdict."""
    cfg, est = result.plan.config, result.plan.estimate
    market = "spot" if cfg.instance.spot else "on-demand"
    types = cfg.instance.instance_types
    machine = f"{types[0]} ({PRICES[types[0]].gpu})" + (f", else {', '.join(types[1:])}" if len(types) > 1 else "")
    lines = [
        "dry run: no lock taken, nothing written to the bucket, nothing started",
        f"run       {result.plan.config_path}: {machine} {market}, "
        f"{cfg.instance.max_runtime_minutes}-minute limit, model {cfg.model.base} ({cfg.model.finetune_mode}), "
        f"{cfg.training.num_steps} steps",
        f"dataset   {cfg.dataset}" + (f" ({len(result.plan.local_dataset.files)} local file(s), uploaded at launch)"
                                      if result.plan.local_dataset else ""),
        *([f"columns   {result.plan.columns.sentence()}"] if result.plan.columns else []),
        f"price     {est.sentence()}",
        f"zones     {', '.join(result.zones)} (the group launches in whichever has capacity)",
        "checks",
    ]
    lines += [f"  {c.line()}" for c in result.checks]
    lines.append(f"preview   {result.preview_note}")
    for step in getattr(result.preview, "steps", []):
        where = _preview_facts(step.inputs or {})
        lines.append(f"  {step.op:8} {step.type}  {step.name}" + (f"  ({where})" if where else ""))
    changes = getattr(result.preview, "changes", None)
    if changes:
        lines.append("  changes: " + ", ".join(f"{n} to {op}" for op, n in sorted(changes.items())))
    lines.append(f"ready: `chronos-train launch {result.plan.config_path}` would start this run" if result.ready
                 else "not ready: fix the failed check(s) above first (nothing was changed)")
    return lines

