"""Commands about runs: launch (and its dry run), doctor, monitor, logs, kill, verify-cleanup and
the history. Each parses, calls one function of automation.runs, and prints.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import BAD_INPUT, ERROR, LEFTOVERS, OK, RUN_FAILED
from .group import FINAL_EXIT, CliError, Options, check_run_id, emit, emit_json, pass_opts, say


# -- launch -----------------------------------------------------------------------------------
@click.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--follow", is_flag=True, help="Stay and watch the run until it ends (exit 0/4/5).")
@click.option("--download/--no-download", default=True, show_default=True,
              help="With --follow: fetch the finished model into ./runs/RUN_ID/.")
@click.option("--dry-run", is_flag=True,
              help="Check everything and preview the run stack; take no lock, write nothing, start nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: machine-readable output.")
@pass_opts
def launch(opts: Options, config: Path, follow: bool, download: bool, dry_run: bool, as_json: bool) -> None:
    """Validate CONFIG, take the lock, start the run; prints the run id.

    A bad config or dataset costs nothing: exit 2, no lock, no instance.
    Exit 3 when another run holds the lock; 130 when interrupted (what was made is removed).
    --dry-run runs every check of a launch plus `chronos-train doctor` and a Pulumi preview of
    the run stack (resources, instance type, zones, price); exit 0 ready, 2 not ready.

    \b
    Example:
      chronos-train --local launch examples/quickstart.yaml --follow
      chronos-train launch run.yaml --dry-run
      RUN=$(chronos-train launch run.yaml)
    """
    from .. import executors

    if as_json and not dry_run:
        raise CliError("--json goes with --dry-run (a launch prints its run id on stdout)", BAD_INPUT)
    if follow and dry_run:
        raise CliError("--follow and --dry-run exclude each other: a dry run starts nothing to follow", BAD_INPUT)
    target = opts.target(verify=True)  # a launch builds on the infrastructure: --local asks the sandbox
    executor = executors.for_target(target, progress=say)
    if dry_run:
        _dry_run(target, config, executor, as_json)
        return
    from ..runs.launch import launch as do_launch, plan

    lp = plan(target, config)
    if lp.columns is not None:
        say(f"columns: {lp.columns.sentence()}")
    say(lp.estimate.sentence())
    launched = do_launch(target, lp, executor, progress=say)
    click.echo(launched.run_id)
    flag = " --local" if opts.local else ""
    machine = f"instance {launched.instance_id}" if launched.instance_id else "waiting for its first machine"
    say(f"run {launched.run_id} started on {executor.name} ({machine}, dataset "
        f"{launched.dataset_prefix})\n  watch: chronos-train{flag} monitor {launched.run_id} --follow\n"
        f"  logs:  chronos-train{flag} logs {launched.run_id} --follow\n  stop:  chronos-train{flag} kill {launched.run_id}")
    if follow:
        _follow(target, executor, launched.run_id, download, as_json=False)


def _dry_run(target, config: Path, executor, as_json: bool) -> None:
    from ..runs.launch import dry_run
    from .render import dry_run_lines

    result = dry_run(target, config, executor)
    emit(as_json, result.to_json(), dry_run_lines(result))
    if not result.ready:
        raise SystemExit(BAD_INPUT)


# -- doctor -------------------------------------------------------------------------------------
@click.command()
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path),
              help="Check the vCPU quota for this run config's instance type (default: g4dn.2xlarge on-demand).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
def doctor(opts: Options, config: Path | None, as_json: bool) -> None:
    """Check what a first launch needs, one line each: credentials, region, the deployed
    infrastructure, the Pulumi CLI, the vCPU quota, the AMI, the bucket's encryption and
    lifecycle. Exit 0 when nothing fails, 2 otherwise. Changes nothing.

    \b
    Example:
      chronos-train doctor
      chronos-train doctor --config run.yaml --json
      chronos-train --local doctor
    """
    from ..runs.doctor import doctor as run_checks, failed

    cfg = None
    if config is not None:
        from instance.protocol.runconfig import ConfigError, load_config

        try:
            cfg = load_config(config)
        except ConfigError as exc:
            raise CliError(str(exc), BAD_INPUT) from None
    checks = run_checks(opts.target(), cfg)
    bad = failed(checks)
    emit(as_json, {"ok": not bad, "checks": [c.to_json() for c in checks]},
         [c.line() for c in checks] + ["ready to launch" if not bad else
                                       f"{len(bad)} check(s) failed; fix them, then run doctor again"])
    if bad:
        raise SystemExit(BAD_INPUT)


# -- monitor / status ---------------------------------------------------------------------------
@click.command()
@click.argument("run_id", required=False)
@click.option("--follow", is_flag=True, help="Stay until the run ends; exit 0 completed, 4 failed, 5 killed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--download/--no-download", default=True, show_default=True,
              help="With --follow: fetch a completed model into ./runs/RUN_ID/.")
@pass_opts
def monitor(opts: Options, run_id, follow, as_json, download) -> None:
    """Live status, progress, loss, ETA and cost of the active (or named) run. Also `status`.

    \b
    Example:
      chronos-train monitor --follow
      chronos-train status run-20261128-203700-1a2b --json
    """
    from .. import executors
    from ..runs.records import view
    from ..runs.runcheck import check_run

    if run_id:
        check_run_id(run_id)
    target = opts.target()
    executor = None

    def check(lease):
        # Only a live run needs the executor: it reports a local machine that died.
        nonlocal executor
        executor = executors.for_target(target)
        return check_run(target, executor, lease)

    v = view(target, run_id, check=check)
    if follow and v.active:
        _follow(target, executor or executors.for_target(target), v.run_id, download, as_json)
        return
    _show(v, as_json)
    if follow:
        raise SystemExit(FINAL_EXIT.get(v.final_status or "", OK))




def _show(v, as_json: bool) -> None:
    if as_json:
        emit_json(v.to_json())
        return
    from .render import console, final_report, run_panel

    console().print(run_panel(v) if v.active else final_report(v))


def _follow(target, executor, run_id: str, download: bool, as_json: bool, report: bool = False) -> None:
    """Watch the run to its end, tidy its stack, show the outcome, fetch the model, exit with
    the outcome's code. A stack that cannot be removed is only a warning: the run is over.
    The run's report goes into ./runs/RUN_ID/ with the model (`download`), or alone (`report`:
    a forecast run has no model to fetch)."""
    from ..runs.ending import tidy_stack
    from .follow import RunLost

    try:
        final = _watch(target, executor, run_id, as_json)
    except RunLost as exc:
        raise CliError(str(exc), RUN_FAILED) from None
    left = tidy_stack(executor, run_id)
    if left:
        say(f"warning: the run's stack record stays ({left}); it costs nothing and "
            "`chronos-train verify-cleanup --fix` removes it")
    _show(final, as_json)
    dest = Path("runs") / run_id
    if download and final.final_status == "completed":
        from .follow import download as fetch

        fetch(target, run_id, dest)
        say(f"model downloaded to {dest}/model")
    if download or report:
        _write_report(target, run_id, dest / "report.html")
    raise SystemExit(FINAL_EXIT.get(final.final_status or "", ERROR))


def _write_report(target, run_id: str, out: Path) -> None:
    """The run's report at the end of a follow; a report that cannot be made is only a warning
    (the run's outcome, and so the exit code, stand)."""
    from ..report.page import write_report

    try:
        path = write_report(target, run_id, out)
    except Exception as exc:
        say(f"warning: no report for run {run_id} ({type(exc).__name__}: {exc}); "
            f"try again with `chronos-train report {run_id}`")
        return
    say(f"report written to {path}")


def _watch(target, executor, run_id: str, as_json: bool):
    """Poll until the run ends, showing it: a live panel in a terminal, else one line per change
    (nothing with --json, whose output is the final document)."""
    from .follow import follow
    from .render import LinePrinter, console, run_panel

    out = console()
    if as_json:
        return follow(target, executor, run_id, lambda v: None)
    if not out.is_terminal:
        return follow(target, executor, run_id, LinePrinter(lambda line: out.print(line, soft_wrap=True)))
    from rich.live import Live

    with Live(console=out, refresh_per_second=4, transient=True) as live:
        return follow(target, executor, run_id, lambda v: live.update(run_panel(v)))



# -- logs -------------------------------------------------------------------------------------
@click.command()
@click.argument("run_id")
@click.option("--follow", is_flag=True, help="Keep printing new lines until the run ends.")
@pass_opts
def logs(opts: Options, run_id: str, follow: bool) -> None:
    """Print the agent's log of RUN_ID (uploaded to S3 about every minute).

    \b
    Example:
      chronos-train logs run-20261128-203700-1a2b --follow
    """
    from .logs import stream

    check_run_id(run_id)
    for chunk in stream(opts.target(), run_id, follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


# -- kill -------------------------------------------------------------------------------------
@click.command()
@click.argument("run_id", required=False)
@click.option("--force", is_flag=True, help="Terminate the machine now and complete the cleanup record.")
@click.option("--wait", is_flag=True, help="Wait for the agent to stop; force-terminate after the grace period.")
@pass_opts
def kill(opts: Options, run_id: str | None, force: bool, wait: bool) -> None:
    """Ask the active run (or RUN_ID) to stop, checkpoint and clean up.

    Without --wait it returns once the request is recorded; the agent stops within seconds.
    --wait force-terminates if the agent has not answered within $CHRONOS_KILL_GRACE_SECONDS (120).
    A forced end needs no Pulumi CLI: the machine is terminated through EC2 by its tag, the lock
    released and the run recorded first; its stack record is removed last (or by the next launch).

    \b
    Example:
      chronos-train kill --wait
      chronos-train kill run-20261128-203700-1a2b --force
    """
    from .. import executors
    from ..runs.ending import kill as do_kill

    if run_id:
        check_run_id(run_id)
    target = opts.target()
    result = do_kill(target, executors.for_target(target), run_id, force, wait)
    # Not requested: the run was already ending (cleanup, failed) and its outcome is decided.
    if result.ended:
        how = "force-terminated" if result.forced else (
            "stopped by its agent" if result.requested else "ended by itself (the stop came too late to change it)")
        click.echo(f"run {result.run_id} {how}; final status: {result.final_status or 'unknown'}")
        if result.stack_left:
            say(f"the run's stack record stays ({result.stack_left}); it costs nothing, and the next launch "
                "or `chronos-train verify-cleanup --fix` removes it")
    elif result.requested:
        click.echo(f"stop requested for run {result.run_id}; follow with `chronos-train monitor {result.run_id} --follow`")
    else:
        click.echo(f"run {result.run_id} is already ending and its outcome is decided, so there is nothing to stop; "
                   f"follow it with `chronos-train monitor {result.run_id} --follow`")


# -- runs -------------------------------------------------------------------------------------
@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=20, show_default=True, help="How many recent runs.")
@pass_opts
def runs(opts: Options, as_json: bool, limit: int) -> None:
    """History: status, duration, cost and the headline metric of recent runs (with --json, the
    evaluation summary too). `runs compare` puts runs side by side.

    \b
    Example:
      chronos-train runs --limit 5
      chronos-train --local runs --json
      chronos-train runs compare run-20261128-203700-1a2b run-20261129-101500-3c4d
    """
    if click.get_current_context().invoked_subcommand is not None:
        return
    from ..runs.records import history

    views = history(opts.target(), limit)
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    from .render import console, runs_table

    console().print(runs_table(views) if views else "no runs yet")


# -- verify-cleanup ---------------------------------------------------------------------------
@click.command(name="verify-cleanup")
@click.option("--fix", is_flag=True, help="Terminate, delete, abort and release what was found (idempotent).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
def verify_cleanup(opts: Options, fix: bool, as_json: bool) -> None:
    """Find anything that could bill you: instances, volumes, stale locks, incomplete uploads
    (exit 6 when one is left, 0 when clean), and run stack records whose machine is gone (listed;
    they cost nothing, so exit 0). --fix removes all of it; stack records need the Pulumi CLI.

    \b
    Example:
      chronos-train verify-cleanup
      chronos-train verify-cleanup --fix
    """
    from .. import executors
    from ..runs.verify import verify
    from .render import verify_lines

    target = opts.target()
    report = verify(target, executors.for_target(target, progress=say), fix)
    emit(as_json, report.to_json(), verify_lines(report))
    if not report.clean:
        raise SystemExit(LEFTOVERS)
