"""chronos-train: thin click commands. Each parses, calls one function, and prints; one error
mapping for every command (`ChronosGroup.invoke`) turns domain errors into one sentence with the
exit code of DESIGN.md. Heavy modules load lazily, so `monitor` stays fast (no torch, chronos or
pulumi).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import (BAD_INPUT, ERROR, INTERRUPTED, LEFTOVERS, OK, RUN_FAILED, RUN_KILLED, ChronosError)

FINAL_EXIT = {"completed": OK, "failed": RUN_FAILED, "killed": RUN_KILLED}


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = ERROR):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def as_cli_error(exc: BaseException) -> CliError | None:
    """The one mapping from what a command raised to a sentence and an exit code; None for what
    click handles itself (its own errors, exits, aborts)."""
    if isinstance(exc, (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit)):
        return None
    if isinstance(exc, ChronosError):
        return CliError(str(exc), exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return CliError("interrupted", INTERRUPTED)
    from .context import translate_aws_error

    target = click.get_current_context().meta.get("chronos.target")
    translated = translate_aws_error(exc, target) if target and isinstance(exc, Exception) else exc
    if isinstance(translated, ChronosError):
        return CliError(str(translated), translated.exit_code)
    return CliError(f"{type(exc).__name__}: {exc} (set CHRONOS_DEBUG=1 for a traceback)", ERROR)


class ChronosGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BaseException as exc:
            from .settings import settings

            error = as_cli_error(exc)
            if error is None or (settings().debug and not isinstance(exc, (ChronosError, KeyboardInterrupt))):
                raise
            raise error from None


@dataclass(frozen=True)
class Options:
    env: str
    local: bool

    def target(self):
        from .context import resolve

        target = resolve(self.env, self.local)
        click.get_current_context().meta["chronos.target"] = target  # for error messages
        return target


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def emit(as_json: bool, doc, lines) -> None:
    """A reading command's answer: the JSON document, or its lines for people."""
    if as_json:
        emit_json(doc)
        return
    for line in lines:
        click.echo(line)


def say(line: str) -> None:
    """A progress line for people, on stderr (stdout stays for what scripts read)."""
    click.echo(line, err=True)


# ---------------------------------------------------------------------------------------------
def _default_env() -> str:
    from .settings import settings

    return settings().env


def _default_local() -> bool:
    from .settings import settings

    return settings().local


@click.group(cls=ChronosGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--env", default=_default_env, show_default="dev, or $CHRONOS_ENV", help="Environment: dev, stage or prod.")
@click.option("--local", is_flag=True, default=_default_local,
              help="Use the embedded sandbox (moto) and a local agent process instead of AWS ($CHRONOS_LOCAL=1).")
@click.pass_context
def cli(ctx: click.Context, env: str, local: bool) -> None:
    """Train Chronos models on a rented AWS GPU; pay only while it trains.

    \b
    Example:
      chronos-train --local launch examples/quickstart.yaml --follow
      chronos-train runs
    """
    ctx.obj = Options(env=env, local=local)


pass_opts = click.make_pass_decorator(Options)


# -- launch -----------------------------------------------------------------------------------
@cli.command()
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
    from . import executors

    if as_json and not dry_run:
        raise CliError("--json goes with --dry-run (a launch prints its run id on stdout)", BAD_INPUT)
    if follow and dry_run:
        raise CliError("--follow and --dry-run exclude each other: a dry run starts nothing to follow", BAD_INPUT)
    target = opts.target()
    executor = executors.for_target(target, progress=say)
    if dry_run:
        _dry_run(target, config, executor, as_json)
        return
    from .launch import launch as do_launch, plan

    lp = plan(target, config)
    say(lp.estimate.sentence())
    launched = do_launch(target, lp, executor, progress=say)
    click.echo(launched.run_id)
    flag = " --local" if opts.local else ""
    say(f"run {launched.run_id} started on {executor.name} (instance {launched.instance_id}, dataset "
        f"{launched.dataset_prefix})\n  watch: chronos-train{flag} monitor {launched.run_id} --follow\n"
        f"  logs:  chronos-train{flag} logs {launched.run_id} --follow\n  stop:  chronos-train{flag} kill {launched.run_id}")
    if follow:
        _follow(target, executor, launched.run_id, download, as_json=False)


def _dry_run(target, config: Path, executor, as_json: bool) -> None:
    from .launch import dry_run
    from .render import dry_run_lines

    result = dry_run(target, config, executor)
    emit(as_json, result.to_json(), dry_run_lines(result))
    if not result.ready:
        raise SystemExit(BAD_INPUT)


# -- doctor -------------------------------------------------------------------------------------
@cli.command()
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
    from .doctor import doctor as run_checks, failed

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
@cli.command()
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
    from . import executors
    from .runcheck import check_run
    from .runs import view

    target = opts.target()
    if run_id:
        _check_run_id(run_id)
    executor = executors.for_target(target)
    v = view(target, run_id, check=lambda lease: check_run(target, executor, lease))
    if follow and v.active:
        _follow(target, executor, v.run_id, download, as_json)
        return
    _show(v, as_json)
    if follow:
        raise SystemExit(FINAL_EXIT.get(v.final_status or "", OK))


cli.add_command(monitor, name="status")


def _show(v, as_json: bool) -> None:
    if as_json:
        emit_json(v.to_json())
        return
    from .render import console, final_report, run_panel

    console().print(run_panel(v) if v.active else final_report(v))


def _follow(target, executor, run_id: str, download: bool, as_json: bool) -> None:
    """Watch the run to its end, tidy its stack, show the outcome, fetch the model, exit with
    the outcome's code. A stack that cannot be removed is only a warning: the run is over."""
    from .ending import tidy_stack
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
    if download:
        dest = Path("runs") / run_id
        if final.final_status == "completed":
            from .follow import download as fetch

            fetch(target, run_id, dest)
            say(f"model downloaded to {dest}/model")
        _write_report(target, run_id, dest / "report.html")
    raise SystemExit(FINAL_EXIT.get(final.final_status or "", ERROR))


def _write_report(target, run_id: str, out: Path) -> None:
    """The run's report at the end of a follow; a report that cannot be made is only a warning
    (the run's outcome, and so the exit code, stand)."""
    from .report import write_report

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


def _check_run_id(run_id: str) -> None:
    from instance.protocol.layout import LayoutError, check_run_id

    try:
        check_run_id(run_id)
    except LayoutError as exc:
        raise CliError(str(exc), BAD_INPUT) from None


# -- logs -------------------------------------------------------------------------------------
@cli.command()
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

    _check_run_id(run_id)
    for chunk in stream(opts.target(), run_id, follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()


# -- kill -------------------------------------------------------------------------------------
@cli.command()
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
    from . import executors
    from .ending import kill as do_kill

    if run_id:
        _check_run_id(run_id)
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
@cli.group(invoke_without_command=True)
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
    from .runs import history

    views = history(opts.target(), limit)
    if as_json:
        emit_json([v.to_json() for v in views])
        return
    from .render import console, runs_table

    console().print(runs_table(views) if views else "no runs yet")


@runs.command(name="compare")
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_A RUN_B [RUN...]")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
def runs_compare(opts: Options, run_ids: tuple[str, ...], as_json: bool) -> None:
    """The config values that differ between runs, and their metrics side by side with the best
    of each row marked (★). Exit 2 for an unknown run, 3 for one that has not finished.

    \b
    Example:
      chronos-train runs compare run-20261128-203700-1a2b run-20261129-101500-3c4d
      chronos-train --local runs compare RUN_A RUN_B RUN_C --json
    """
    from .compare import compare

    for run_id in run_ids:
        _check_run_id(run_id)
    comparison = compare(opts.target(), list(run_ids))
    if as_json:
        emit_json(comparison.to_json())
        return
    from .render import compare_tables, console

    console().print(compare_tables(comparison))


# -- report -----------------------------------------------------------------------------------
@cli.command()
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
    from .report import write_report

    _check_run_id(run_id)
    path = write_report(opts.target(), run_id, out or Path("runs") / run_id / "report.html")
    click.echo(str(path))
    if open_it:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


# -- verify-cleanup ---------------------------------------------------------------------------
@cli.command(name="verify-cleanup")
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
    from . import executors
    from .render import verify_lines
    from .verify import verify

    target = opts.target()
    report = verify(target, executors.for_target(target, progress=say), fix)
    emit(as_json, report.to_json(), verify_lines(report))
    if not report.clean:
        raise SystemExit(LEFTOVERS)


# -- data -------------------------------------------------------------------------------------
@cli.group()
def data() -> None:
    """Datasets: validate, upload and list parquet files.

    \b
    Example:
      chronos-train data validate examples/data/us_employment.parquet
      chronos-train data upload examples/data --month 2026/11
    """


@data.command(name="validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def data_validate(path: Path, as_json: bool) -> None:
    """Check a parquet file or folder against the long format (item_id, timestamp, target).

    \b
    Example:
      chronos-train data validate ./my-data/
    """
    from .datasets import validate

    result = validate(path)
    if as_json:
        emit_json(result)
    else:
        for p in result["problems"]:
            click.echo(p, err=True)
        if result["ok"]:
            click.echo(f"ok: {result['files']} file(s), {result['series']} series, {result['rows']} rows")
    if not result["ok"]:
        raise SystemExit(BAD_INPUT)


@data.command(name="upload")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--month", required=True, help="YYYY/MM: the folder under cached-datasets/.")
@pass_opts
def data_upload(opts: Options, path: Path, month: str) -> None:
    """Validate, then upload PATH (a parquet file, or a folder of them: one dataset) to its own
    folder cached-datasets/YYYY/MM/<name>-<hash>/; prints the prefix to put in a run config.

    \b
    Example:
      chronos-train data upload ./sales.parquet --month 2026/11
    """
    from .datasets import upload

    target = opts.target()
    done = upload(target, path, month)
    sent = done.files - done.skipped
    already = f", {done.skipped} already there" if done.skipped else ""
    click.echo(f"s3://{target.bucket}/{done.prefix}")
    click.echo(f"uploaded {sent} file(s), {done.bytes:,} bytes in all{already}; train on it with "
               f"`dataset: {done.prefix}`", err=True)


@data.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_opts
def data_ls(opts: Options, as_json: bool) -> None:
    """List datasets in the bucket: one line per dataset prefix.

    \b
    Example:
      chronos-train --local data ls
    """
    from .datasets import listing

    rows = listing(opts.target())
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['prefix']}  {r['files']} file(s)  {r['bytes']:,} bytes")
    if not rows:
        click.echo("no datasets yet; add one with `chronos-train data upload PATH --month YYYY/MM`")


# -- sandbox ----------------------------------------------------------------------------------
@cli.group()
def sandbox() -> None:
    """The embedded AWS stand-in (moto server) that --local uses.

    \b
    Example:
      chronos-train sandbox start
      chronos-train sandbox status --json
    """


@sandbox.command(name="start")
@pass_opts
def sandbox_start(opts: Options) -> None:
    """Start the sandbox on a free loopback port (no-op when running).

    \b
    Example:
      chronos-train sandbox start
    """
    from . import sandbox as sb

    info = sb.start()
    click.echo(f"sandbox running at {info.endpoint_url} (bucket {info.bucket(opts.env)})")


@sandbox.command(name="stop")
def sandbox_stop() -> None:
    """Stop the sandbox; everything in it is forgotten.

    \b
    Example:
      chronos-train sandbox stop
    """
    from . import sandbox as sb

    click.echo("sandbox stopped" if sb.stop() else "sandbox was not running")


@sandbox.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Print endpoint_url, region and bucket as JSON.")
@pass_opts
def sandbox_status(opts: Options, as_json: bool) -> None:
    """Whether the sandbox runs, where, and the env's operator credentials (--json).

    \b
    Example:
      chronos-train sandbox status --json | jq -r .endpoint_url
    """
    from . import sandbox as sb

    info = sb.status()
    if as_json:
        emit_json(info.to_json(opts.env) if info else {"running": False})
    elif info:
        click.echo(f"running at {info.endpoint_url}, region {info.region}, bucket {info.bucket(opts.env)}")
    else:
        click.echo("not running; `chronos-train sandbox start` or any --local command starts it")
    if info is None:
        raise SystemExit(ERROR)


@sandbox.command(name="interrupt")
@click.argument("run_id", required=False)
@click.option("--rebalance", is_flag=True,
              help="Give a rebalance recommendation instead: the run saves a checkpoint at once and goes on.")
@pass_opts
def sandbox_interrupt(opts: Options, run_id: str | None, rebalance: bool) -> None:
    """Give the active local run's machine a spot interruption notice, as EC2 does: the machine
    is taken after CHRONOS_SPOT_NOTICE_SECONDS (120); a replacement resumes the run from its
    last checkpoint. Watch it with `monitor --follow`.

    \b
    Example:
      chronos-train --local sandbox interrupt
      chronos-train --local sandbox interrupt --rebalance
      chronos-train --local sandbox interrupt run-20261129-091500-ab12
    """
    from .executors.local import request_spot_notice

    if not opts.local:
        raise CliError("only a --local run can be interrupted this way; use `chronos-train --local sandbox interrupt`",
                       BAD_INPUT)
    run, seconds = request_spot_notice(opts.target(), run_id, rebalance)
    if rebalance:
        click.echo(f"rebalance recommendation given to run {run}: it saves a full checkpoint at its next step "
                   "and goes on; nothing is taken")
        return
    click.echo(f"spot notice given to run {run}: its machine is taken in {seconds:.0f} s; "
               f"follow it with `chronos-train --local monitor {run} --follow`")


@sandbox.command(name="env")
@pass_opts
def sandbox_env(opts: Options) -> None:
    """Print `export` lines that point awscli and boto3 at the sandbox as the env's operator
    (IAM is enforced there: the operator may do what the operator policy allows, no more).

    \b
    Example:
      eval "$(chronos-train sandbox env)" && aws s3 ls
    """
    import shlex

    from . import sandbox as sb

    info = sb.status()
    if info is None:
        raise CliError("the sandbox is not running; start it with `chronos-train sandbox start`")
    # A session token or profile left in the shell would override or spoil these keys.
    click.echo("unset AWS_SESSION_TOKEN AWS_PROFILE")
    for name, value in sb.env_vars(info, opts.env).items():
        click.echo(f"export {name}={shlex.quote(value)}")


def main() -> None:
    cli(prog_name="chronos-train")


if __name__ == "__main__":
    main()
