"""Console entry point: `kadapter`. Importing the command modules registers their commands."""

from __future__ import annotations

from kadapter_cli.commands import app
from kadapter_cli.commands import convert as _convert  # noqa: F401  convert figer-raw
from kadapter_cli.commands import data as _data  # noqa: F401  prepare-trex, parse
from kadapter_cli.commands import encode as _encode  # noqa: F401  encode
from kadapter_cli.commands import model as _model  # noqa: F401  import-original, tiny-backbone, inspect, push
from kadapter_cli.commands import pipeline as _pipeline  # noqa: F401  run, demo
from kadapter_cli.commands import probe as _probe  # noqa: F401  train-probe, probe
from kadapter_cli.commands import report as _report  # noqa: F401  report
from kadapter_cli.commands import train as _train  # noqa: F401  train-adapter, compose, finetune, evaluate, predict
from kadapter_cli.processes import end_processes, exit_now


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code in (0, None) and end_processes():  # the command succeeded (typer exits with 0)
            exit_now(0)
        raise
    if end_processes():
        exit_now(0)


if __name__ == "__main__":
    main()
