"""`forecast`: forecasts from a trained model on this machine (automation/runs/forecast.py)."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInput
from .group import Options, emit, pass_opts, say


@click.command()
@click.argument("model")
@click.argument("data")
@click.option("--future", help="The known covariates' values over the horizon (parquet file or folder, or a bucket "
                               "prefix): id, timestamp and each known covariate, prediction_length rows a series.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("forecast.parquet"),
              show_default=True, help="Where to write the forecast: .parquet or .csv.")
@click.option("--quantiles", help="Quantile levels, comma-separated (default 0.1,0.2,...,0.9).")
@click.option("--prediction-length", type=click.IntRange(1, 1024),
              help="Steps to forecast (default: the run's prediction_length; 24 for a pretrained model).")
@click.option("--batch-size", type=click.IntRange(1, 65536), help="Series a forward pass (default 256).")
@click.option("--remote", is_flag=True,
              help="Forecast as a run on the model's GPU machine (lock, logs, cost, kill as any run), followed to "
                   "its end; --out then receives its forecast.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary (forecast.json's fields).")
@pass_opts
def forecast(opts: Options, model: str, data: str, future: str | None, out: Path, quantiles: str | None,
             prediction_length: int | None, batch_size: int | None, remote: bool, as_json: bool) -> None:
    """Forecast the next steps of every series in DATA with MODEL, on this machine, into one file.

    MODEL is a run id (its model is fetched once into ~/.chronos-train and reused), a model folder
    on disk (such as runs/RUN_ID/model), or a pretrained model (amazon/chronos-2, zero-shot).
    DATA is a parquet file or folder, or a dataset prefix in the bucket, in the columns the model
    was trained with. The output has the data's id and timestamp columns, `predictions` (the
    median) and one column per quantile ("0.1" ... "0.9"), as Chronos-2's predict_df names them.
    Exit 2, with nothing written, for an unknown run, data or future values that do not fit.
    --remote: the same forecast as a run on a GPU machine (data_sync, forecast, results_sync,
    cleanup), followed; its exit codes are launch --follow's, and as launch --follow it leaves the
    run's report in runs/RUN_ID/report.html. MODEL is then a run id (on a machine
    of that run's type) or a pretrained model (read from the hub by the machine); a model folder
    on this disk is refused (exit 2): name the run it came from.
    Before it launches it says the series, the expected minutes (from the model's own run's
    forecast speed, else Chronos-2's published GPU figure) and the expected price.

    \b
    Example:
      chronos-train --local forecast run-20261128-203700-1a2b sales.parquet --out next.parquet
      chronos-train forecast runs/RUN_ID/model sales.parquet --future promos.parquet --out next.csv
      chronos-train forecast run-20261128-203700-1a2b cached-datasets/2026/11/ --remote --out next.parquet
      chronos-train forecast amazon/chronos-2 sales.parquet --remote --prediction-length 14
    """
    if remote:
        if quantiles or batch_size:
            raise BadInput("--remote forecasts the run's quantiles (0.1 ... 0.9) with its batch size; leave out "
                           "--quantiles and --batch-size")
        _remote(opts, model, data, future, out, prediction_length)
        return
    from ..runs.forecast import forecast_to_file

    def progress(done: int, total: int) -> None:
        if total > done or done > 4096:  # more than one chunk: say how far it is
            say(f"forecast: {done}/{total} series")

    result = forecast_to_file(model, data, target_of=opts.target, future=future, out=out, quantiles=quantiles,
                              prediction_length=prediction_length, batch_size=batch_size, progress=progress)
    info = {**result.info, "out": str(result.out)}
    emit(as_json, info, [str(result.out)])
    if not as_json:
        say(f"forecast of {info['series']} series x {info['prediction_length']} steps written to {result.out} "
            f"({info['total_seconds']:.1f} s)")


def _remote(opts: Options, model: str, data: str, future: str | None, out: Path, prediction_length: int | None) -> None:
    """A forecast-only run: checked here, launched as any run, followed; its forecast fetched to --out."""
    from .. import executors
    from ..errors import OK
    from instance.protocol.layout import RUN_ID_RE

    from ..runs.forecast import check_out, fetch_forecast, remote_config, remote_estimate
    from ..runs.launch import launch as do_launch, plan
    from .run_commands import _follow

    check_out(out)  # the forecast is fetched into it at the end: refused now, before anything is spent
    target = opts.target(verify=True)
    config, series = remote_config(target, model, data, future=future, prediction_length=prediction_length)
    executor = executors.for_target(target, progress=say)
    lp = plan(target, config)
    made_by = f"{model}'s model" if RUN_ID_RE.match(model) else model
    say(f"forecast run: {series} series x {lp.config.training.prediction_length} steps with {made_by}, "
        f"on {lp.config.instance.type} for at most {lp.config.instance.max_runtime_minutes} minutes")
    say(remote_estimate(target, model, series, lp.config).sentence())
    say(lp.estimate.sentence())
    launched = do_launch(target, lp, executor, progress=say)
    click.echo(launched.run_id)
    try:
        _follow(target, executor, launched.run_id, False, as_json=False, report=True)
    except SystemExit as end:
        if end.code == OK:
            say(f"forecast of run {launched.run_id} written to {fetch_forecast(target, launched.run_id, out)}")
        raise
