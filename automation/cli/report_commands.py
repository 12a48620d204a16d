"""Commands about what a run did: its report page and runs side by side (`runs compare`)."""
from __future__ import annotations

from pathlib import Path

import click

from .group import Options, check_run_id, emit_json, pass_opts


# -- report -----------------------------------------------------------------------------------
@click.command()
@click.argument("run_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the page (default: runs/RUN_ID/report.html, beside a downloaded model).")
@click.option("--open", "open_it", is_flag=True, help="Open it in the default browser.")
@pass_opts
def report(opts: Options, run_id: str, out: Path | None, open_it: bool) -> None:
    """Write one self-contained HTML page of what RUN_ID did, and print its path: status, cost,
    loss curve, backtest scores against the baselines, forecast charts, where the time went.
    It needs no network to view. A failed or killed run's page shows what exists.
    Exit 2 for an unknown run, 3 for one that has not finished, 1 for a run from before runs
    kept an evaluation folder.

    \b
    Example:
      chronos-train report run-20261128-203700-1a2b --open
      chronos-train --local report RUN_ID --out /tmp/report.html
    """
    from ..report.page import write_report

    check_run_id(run_id)
    path = write_report(opts.target(), run_id, out or Path("runs") / run_id / "report.html")
    click.echo(str(path))
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())



@click.command(name="compare")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_A RUN_B [RUN...]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
def runs_compare(opts: Options, run_ids: tuple[str, ...], as_json: bool) -> None:
    """The config values that differ between runs, and their metrics side by side with the best
    of each row marked (★). A sweep's trials compare the same way: RUN#N is trial N of the sweep
    run RUN, and a sweep run named alone compares all its trials. Exit 2 for an unknown run or
    trial, 3 for one that has not finished.

    \b
    Example:
      chronos-train runs compare run-20261128-203700-1a2b run-20261129-101500-3c4d
      chronos-train --local runs compare RUN_A RUN_B RUN_C --json
      chronos-train runs compare SWEEP_RUN              # every trial of a sweep
      chronos-train runs compare 'SWEEP_RUN#0' 'SWEEP_RUN#3' OTHER_RUN
    """
    from ..report.compare import compare

    for run_id in run_ids:
        check_run_id(run_id.partition("#")[0])
    comparison = compare(opts.target(), list(run_ids))
    if as_json:
        emit_json(comparison.to_json())
        return
    from .render import compare_tables, console

    console().print(compare_tables(comparison))
