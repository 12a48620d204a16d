"""The report's charts, drawn by matplotlib on the dev machine and returned as SVG text.

Each function takes plain data (frames, lists) and returns one figure; nothing here reads S3 or
knows about HTML. matplotlib loads on the first chart (the Agg backend: no display needed), so
importing this module costs nothing.

Sizes: every chart is drawn at the width it is shown on a desktop (the page is 920 px wide) with
10-11 pt text, so on a phone, scaled down to about 40 %, its labels still read.
"""
from __future__ import annotations

import io
from typing import Any, Sequence

# One colour per model, the same in every chart and in the tables.
COLORS = {"finetuned": "#1f6feb", "zero_shot": "#8250df", "seasonal_naive": "#d4760a"}
HISTORY, ACTUAL, GRID = "#8c959f", "#1f2328", "#d0d7de"
HELPED, HURT = "#1a7f37", "#cf222e"
PHASE_COLORS = {"ok": "#1f6feb", "running": "#8c959f", "failed": HURT, "killed": "#bf8700"}
WIDE = (7.6, 3.0)  # inches: loss curve, histogram, timeline on a desktop
NARROW = (4.4, 3.2)  # the same charts for a phone (the page picks one by its width)
SMALL = (4.6, 2.6)  # one fan chart; two to a row on a desktop, one on a phone

_plt = None


def pyplot():
    global _plt
    if _plt is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.rcParams.update({
            "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
            "ytick.labelsize": 9, "legend.fontsize": 9, "axes.spines.top": False, "axes.spines.right": False,
            "axes.edgecolor": "#57606a", "axes.grid": True, "grid.color": GRID, "grid.linewidth": 0.6,
            "axes.titleweight": "bold", "axes.titlelocation": "left", "figure.dpi": 100,
            "svg.hashsalt": "chronos-train",  # the same run gives the same file
            "svg.fonttype": "path",  # text as shapes: no font needed where the page is opened
        })
        _plt = plt
    return _plt


def to_svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.08, metadata={"Date": None})
    pyplot().close(fig)
    return buf.getvalue()


def _compact_y(ax) -> None:
    """Tick labels that stay short: 110k rather than 110000."""
    from matplotlib.ticker import FuncFormatter

    def fmt(value, _pos):
        if abs(value) >= 10_000:
            return f"{value / 1000:,.0f}k" if abs(value) < 10_000_000 else f"{value / 1e6:,.0f}M"
        return f"{value:g}"

    ax.yaxis.set_major_formatter(FuncFormatter(fmt))


def _date_axis(ax) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


# -- loss ------------------------------------------------------------------------------------------
def loss_curve(loss, total_steps: int | None = None, stopped_at: int | None = None, size=WIDE) -> str:
    """Training loss by step, the learning rate beside it (right axis), a new attempt marked
    where the run resumed after an interruption. `loss`: frame with step, loss, learning_rate,
    attempt."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    steps, values = loss["step"].to_numpy(), loss["loss"].to_numpy(dtype=float)
    ax.plot(steps, values, color=COLORS["finetuned"], lw=1.6, marker="o" if len(steps) <= 30 else None, ms=3,
            label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if total_steps:
        ax.set_xlim(0, max(total_steps, int(steps.max()) if len(steps) else 0) * 1.02)
    if "learning_rate" in loss and loss["learning_rate"].notna().any():
        lr = ax.twinx()
        lr.plot(steps, loss["learning_rate"].to_numpy(dtype=float), color=HISTORY, lw=1, ls="--", label="learning rate")
        lr.set_ylabel("learning rate", color=HISTORY)
        lr.tick_params(axis="y", colors=HISTORY)
        lr.grid(False)
        lr.spines["right"].set_visible(True)
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        lr.yaxis.set_major_locator(MaxNLocator(4))
        lr.yaxis.set_major_formatter(FuncFormatter(lambda v, _: "0" if v == 0 else f"{v:.0e}".replace("e-0", "e-")))
        lr.set_ylim(bottom=0)
    if "attempt" in loss and loss["attempt"].nunique() > 1:
        first = loss.groupby("attempt")["step"].min().sort_index()
        for attempt, step in list(first.items())[1:]:
            ax.axvline(step, color=HURT, lw=1, ls=":")
            ax.annotate(f"resumed (attempt {attempt})", (step, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -12), textcoords="offset points", color=HURT, fontsize=9)
    if stopped_at is not None:
        ax.axvline(stopped_at, color=HURT, lw=1.2)
        ax.annotate("stopped", (stopped_at, 1), xycoords=("data", "axes fraction"), xytext=(-4, -12),
                    textcoords="offset points", ha="right", color=HURT, fontsize=9)
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")
    ax.set_title("Training loss")
    return to_svg(fig)


# -- forecasts -------------------------------------------------------------------------------------
def fan_chart(history, forecasts, title: str, subtitle: str, naive=None) -> str:
    """One series: its history, the actuals of every window, the fine-tuned median and 10-90 %
    band per window (and the seasonal-naive forecast, thin and dashed). `history`: timestamp,
    target; `forecasts`: window, timestamp and the quantile columns "0.1" … "0.9". The legend is
    the page's, once for all fan charts (FAN_LEGEND)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=SMALL)
    first = forecasts["timestamp"].min()
    before = history[history["timestamp"] < first]
    ax.plot(before["timestamp"], before["target"], color=HISTORY, lw=1.2)
    inside = history[history["timestamp"] >= first]
    ax.plot(inside["timestamp"], inside["target"], color=ACTUAL, lw=1.3)
    for i, (_, w) in enumerate(forecasts.sort_values("timestamp").groupby("window", sort=True)):
        ax.fill_between(w["timestamp"], w["0.1"], w["0.9"], color=COLORS["finetuned"], alpha=0.18, lw=0)
        ax.plot(w["timestamp"], w["0.5"], color=COLORS["finetuned"], lw=1.5)
        if i:
            ax.axvline(w["timestamp"].min(), color=GRID, lw=1, zorder=0)
    if naive is not None and len(naive):
        for _, w in naive.sort_values("timestamp").groupby("window", sort=True):
            ax.plot(w["timestamp"], w["0.5"], color=COLORS["seasonal_naive"], lw=1, ls="--")
    ax.axvline(first, color="#57606a", lw=1, ls=":")
    _date_axis(ax)
    _compact_y(ax)
    ax.set_title(title, fontsize=10.5, pad=17)
    ax.text(0, 1.03, subtitle, transform=ax.transAxes, fontsize=9, color="#57606a", va="bottom")
    return to_svg(fig)


def bands(levels: Sequence[str]) -> list[tuple[str, str]]:
    """The quantile columns drawn as bands around the median: the widest symmetric pair and the
    next one inside it, such as ("0.1", "0.9") and ("0.2", "0.8")."""
    values = sorted(float(q) for q in levels)
    pairs = [(str(lo), str(hi)) for lo in values for hi in values if lo < 0.5 < hi and abs(lo + hi - 1) < 1e-9]
    return sorted(pairs, key=lambda p: float(p[0]))[:2]


def future_fan_chart(history, forecast, title: str, subtitle: str, levels: Sequence[str]) -> str:
    """One series' forecast past the end of its data: the last points of its history, the median
    (`predictions`) and up to two quantile bands (bands()). `history`: timestamp, target (or None);
    `forecast`: timestamp, predictions and the quantile columns."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=SMALL)
    f = forecast.sort_values("timestamp")
    if history is not None and len(history):
        h = history.sort_values("timestamp")
        ax.plot(h["timestamp"], h["target"], color=ACTUAL, lw=1.3)
    for (lo, hi), alpha in zip(bands(levels), (0.15, 0.25)):
        ax.fill_between(f["timestamp"], f[lo], f[hi], color=COLORS["finetuned"], alpha=alpha, lw=0)
    ax.plot(f["timestamp"], f["predictions"], color=COLORS["finetuned"], lw=1.5)
    if len(f):
        ax.axvline(f["timestamp"].min(), color="#57606a", lw=1, ls=":")
    _date_axis(ax)
    _compact_y(ax)
    ax.set_title(title, fontsize=10.5, pad=17)
    ax.text(0, 1.03, subtitle, transform=ax.transAxes, fontsize=9, color="#57606a", va="bottom")
    return to_svg(fig)


def future_legend(levels: Sequence[str], history: bool = True) -> list[tuple[str, str, str]]:
    """What future_fan_chart draws, for the page's legend: (label, colour, style); "history" only
    when some chart has history to draw (a run that kept none shows the forecast alone)."""
    drawn = [(f"{float(lo) * 100:g}-{float(hi) * 100:g} %", COLORS["finetuned"], "band") for lo, hi in bands(levels)]
    return [*([("history", ACTUAL, "line")] if history else []), ("median forecast", COLORS["finetuned"], "line"),
            *drawn]


# What fan_chart draws, for the page's legend: (label, colour, style).
FAN_LEGEND = [("history", HISTORY, "line"), ("actual", ACTUAL, "line"), ("median", COLORS["finetuned"], "line"),
              ("10-90 %", COLORS["finetuned"], "band"), ("seasonal naive", COLORS["seasonal_naive"], "dash")]


# -- where fine-tuning helped -----------------------------------------------------------------------
def ratio_histogram(ratios: Sequence[float], baseline: str = "seasonal naive", size=WIDE) -> str:
    """Per-series WQL of the fine-tuned model divided by the baseline's, on a log axis: left of
    1× it helped, right of it it hurt."""
    import numpy as np

    plt = pyplot()
    values = np.asarray([r for r in ratios if r is not None and np.isfinite(r) and r > 0], dtype=float)
    fig, ax = plt.subplots(figsize=size)
    if not len(values):
        ax.text(0.5, 0.5, "no series could be compared", ha="center", va="center", transform=ax.transAxes)
        return to_svg(fig)
    logs = np.log2(values)
    span = max(1.0, float(np.ceil(np.abs(logs).max() * 2) / 2))
    bins = np.linspace(-span, span, int(span * 8) + 1)
    counts, edges = np.histogram(np.clip(logs, -span, span), bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    ax.bar(centers, counts, width=np.diff(edges) * 0.92, color=[HELPED if c < 0 else HURT for c in centers])
    ax.axvline(0, color=ACTUAL, lw=1)
    ticks = np.arange(-np.floor(span), np.floor(span) + 1)
    ax.set_xticks(ticks, [f"{2.0 ** t:g}×" for t in ticks])
    ax.set_xlim(-span, span)
    narrow = size[0] < WIDE[0]
    if narrow:
        ticks = ticks[::2] if len(ticks) > 5 else ticks
        ax.set_xticks(ticks, [f"{2.0 ** t:g}×" for t in ticks])
    ax.set_xlabel("fine-tuned WQL ÷ " + baseline + " WQL, per series" if narrow else
                  f"WQL of the fine-tuned model ÷ WQL of {baseline}, per series (log scale)")
    ax.set_ylabel("series")
    helped = int((values < 1).sum())
    ax.set_title(f"Better than {baseline} on {helped} of {len(values)} series")
    ax.text(0.01, 0.97, "← helped" if narrow else "← fine-tuning helped", transform=ax.transAxes, color=HELPED,
            va="top", fontsize=9)
    ax.text(0.99, 0.97, "hurt →" if narrow else "fine-tuning hurt →", transform=ax.transAxes, color=HURT, va="top",
            ha="right", fontsize=9)
    ax.set_axisbelow(True)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return to_svg(fig)


# -- where the time went ----------------------------------------------------------------------------
def phase_timeline(phases: list[dict[str, Any]], size=WIDE) -> str:
    """One bar per phase from its start to its end (since the run began), each labelled with its
    duration and cost. `phases`: name, start and seconds (in seconds), result, label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(size[0], 0.5 + 0.42 * len(phases)))
    total = max((p["start"] + p["seconds"] for p in phases), default=1.0) or 1.0
    # The axis in the unit a person reads at that scale: a 4-hour run in hours, not 14,400 s.
    unit, per = next((u for u in (("hours", 3600.0), ("minutes", 60.0)) if total >= 5 * u[1]), ("seconds", 1.0))
    phases = [dict(p, start=p["start"] / per, seconds=p["seconds"] / per) for p in phases]
    total /= per
    for i, p in enumerate(phases):
        ax.barh(i, max(p["seconds"], total * 0.004), left=p["start"], height=0.6,
                color=PHASE_COLORS.get(p["result"], PHASE_COLORS["ok"]))
        end = p["start"] + p["seconds"]
        inside = p["seconds"] > total * 0.45
        ax.text(end - total * 0.01 if inside else end + total * 0.01, i, p["label"], va="center",
                ha="right" if inside else "left", fontsize=9, color="white" if inside else ACTUAL)
    ax.set_yticks(range(len(phases)), [p["name"] for p in phases])
    ax.invert_yaxis()
    ax.set_xlim(0, total * (1.3 if size[0] >= WIDE[0] else 1.55))
    ax.set_xlabel(f"{unit} since the run started")
    ax.grid(axis="y", visible=False)
    ax.set_axisbelow(True)
    ax.set_title("Where the time went")
    return to_svg(fig)


# -- a sweep's trials -------------------------------------------------------------------------------
def metric_by_setting(trials: list[dict[str, Any]], setting: str, metric: str, best: int | None, size=SMALL) -> str:
    """The backtest metric of every completed trial against one swept setting (log axis for a
    learning rate, categories for words); the winner ringed, pruned trials marked on the axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    scored = [t for t in trials if t.get("value") is not None and setting in (t.get("params") or {})]
    values = [t["params"][setting] for t in trials if setting in (t.get("params") or {})]
    words = any(isinstance(v, str) for v in values)
    order = sorted({str(v) for v in values}) if words else None

    def x(v):
        return order.index(str(v)) if words else v

    ax.scatter([x(t["params"][setting]) for t in scored], [t["value"] for t in scored], color=COLORS["finetuned"], zorder=3)
    for t in scored:
        if t["number"] == best:
            ax.scatter([x(t["params"][setting])], [t["value"]], s=160, facecolors="none", edgecolors=HELPED, lw=2, zorder=4)
    pruned = [t for t in trials if t.get("state") == "pruned" and setting in (t.get("params") or {})]
    if pruned and scored:
        floor = min(t["value"] for t in scored)
        ax.scatter([x(t["params"][setting]) for t in pruned], [floor] * len(pruned), marker="x", color=HURT, zorder=3,
                   label="pruned (no score)")
        ax.legend(loc="best")
    if words:
        ax.set_xticks(range(len(order)), order)
        ax.set_xlim(-0.5, len(order) - 0.5)
    elif setting == "learning_rate" and values and min(values) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(setting)
    ax.set_ylabel(f"backtest {metric.upper()} ↓")
    ax.set_title(f"{metric.upper()} by {setting}")
    ax.set_axisbelow(True)
    return to_svg(fig)
