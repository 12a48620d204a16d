"""How runs look in a terminal (rich). Imported only by commands that print for people."""
from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from instance.protocol.status import MAIN_CHAIN

from .runs import RunView

STATUS_STYLE = {"completed": "bold green", "failed": "bold red", "killed": "bold yellow", "training": "bold cyan"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
    head.add_row("elapsed", duration(v.elapsed_seconds))
    where = v.executor or "?"
    if v.instance_type:
        where += f" · {v.instance_type}{' spot' if v.spot else ''}"
    if v.instance_id:
        where += f" · {v.instance_id}"
    head.add_row("machine", where)
    head.add_row("cost so far" if v.active else "cost", money(v.cost_usd) + (" (local)" if v.executor == "local" else " (estimated)"))
    if v.reason:
        head.add_row("reason", v.reason)
    if v.error:
        head.add_row("error", Text(f"{v.error.get('class')}: {v.error.get('message')} (in {v.error.get('phase')})", style="red"))
    return Panel(head, title=f"[bold]{v.run_id}", border_style=STATUS_STYLE.get(status, "blue").replace("bold ", ""))


def metrics_table(metrics: dict) -> Table | None:
    rows = [(name, metrics.get(key)) for name, key in
            (("fine-tuned", "finetuned"), ("zero-shot (base)", "zero_shot"), ("seasonal naive", "seasonal_naive"))]
    rows = [(n, m) for n, m in rows if m]
    if not rows:
        return None
    table = Table(title="held-out evaluation (last window of every series)", title_justify="left", min_width=60)
    table.add_column("model")
    table.add_column("WQL ↓", justify="right")
    table.add_column("MASE ↓", justify="right")
    for name, m in rows:
        table.add_row(name, f"{m.get('wql', float('nan')):.4f}", f"{m.get('mase', float('nan')):.4f}")
    return table


def final_report(v: RunView) -> Group:
    parts = [run_panel(v)]
    table = metrics_table(v.metrics)
    if table is not None:
        parts.append(table)
    if v.artifacts:
        art = Table.grid(padding=(0, 2))
        art.add_column(style="dim")
        art.add_column()
        for k, uri in v.artifacts.items():
            if uri:
                art.add_row(k.replace("_uri", ""), str(uri))
        parts.append(Panel(art, title="artifacts", border_style="dim"))
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
        table.add_row(v.run_id, Text(status + (" (active)" if v.active else ""), style=STATUS_STYLE.get(status, "")),
                      v.reason or "", duration(v.elapsed_seconds), money(v.cost_usd),
                      "-" if wql is None else f"{wql:.4f}", ratio)
    return table


def console(stderr: bool = False) -> Console:
    return Console(stderr=stderr, highlight=False)
