"""``lstmops``: one command per pipeline stage, ``run`` for the whole Prefect flow.

Only typer is imported at start-up; each command imports what it needs, so ``--help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lstmops.errors import LstmopsError, ValidationFailed

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train, track, version and ship LSTM forecasters. Run commands from the project root (where params.yaml is).",
)

Overrides = Annotated[
    list[str] | None,
    typer.Option("-S", "--set", metavar="KEY=VALUE", help="Override a setting of params.yaml, e.g. -S train.epochs=3."),
]
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}


def fail(exc: LstmopsError) -> None:
    """Expected failures: message lines on stderr, exit 1, no traceback."""
    if isinstance(exc, ValidationFailed):
        typer.echo(f"error: validation failed ({len(exc.lines)} failed expectations):", err=True)
        for line in exc.lines:
            typer.echo(f"  {line}", err=True)
    else:
        typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


def quiet_telemetry() -> None:
    """Offline machines: telemetry only adds noise and delays."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def run_stage(name: str, overrides: list[str] | None, **options) -> None:
    from lstmops import config, stages

    quiet_telemetry()
    root = Path.cwd()
    try:
        cfg = config.load(root, overrides)
        typer.echo(stages.RUNNERS[name](cfg, root, **options))
    except LstmopsError as exc:
        fail(exc)


def _stage_command(name: str, doc: str) -> None:
    def command(set_: Overrides = None) -> None:
        run_stage(name, set_)

    command.__doc__ = doc
    app.command(name)(command)


for _name, _doc in {
    "ingest": "Read data.source (CSV or Parquet), parse the time column, write the Parquet snapshot.",
    "prepare": "Split chronologically and fit the scaler on the training span only.",
    "train": "Train the LSTM with early stopping; log params, curves and checkpoint to MLflow.",
    "evaluate": "Test metrics in original units against persistence and seasonal-naive baselines, with plots.",
    "export": "Write the TorchScript model (scaling inside), check it against the eager model, log it.",
    "register": "Register the exported model in the MLflow registry with lineage tags; first version is champion.",
}.items():
    _stage_command(_name, _doc)


@app.command()
def validate(
    set_: Overrides = None,
    data: Annotated[
        str | None, typer.Option(help="Validate this file, directory, glob or s3:// source instead of the snapshot.")
    ] = None,
) -> None:
    """Run the Great Expectations suite built from params; JSON + HTML report; exit 1 on failure."""
    run_stage("validate", set_, data=data)


@app.command()
def run(set_: Overrides = None) -> None:
    """Run the whole pipeline as a Prefect flow; each stage runs through DVC (shared cache and dvc.lock).

    Overrides are validated, then written to params.yaml (as `dvc exp run -S` does) so that
    dvc.lock records what the run used.
    """
    from lstmops import config
    from lstmops.orchestrate import run_flow

    quiet_telemetry()
    root = Path.cwd()
    try:
        config.write_overrides(root, set_ or [])
        typer.echo(run_flow(root))
    except LstmopsError as exc:
        fail(exc)


@app.command()
def remote(
    url: Annotated[str, typer.Argument(help="s3://bucket/prefix for DVC's data and model cache.")],
    endpoint: Annotated[
        str | None, typer.Option(help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL).")
    ] = None,
    name: Annotated[str, typer.Option(help="Remote name.")] = "storage",
) -> None:
    """Set up the default DVC remote on S3; endpoint and credentials stay in .dvc/config.local.

    Then `dvc push` uploads the pipeline's data and models, `dvc pull` restores them.
    """
    from lstmops.remote import configure

    try:
        for line in configure(Path.cwd(), url, endpoint, name):
            typer.echo(line)
    except LstmopsError as exc:
        fail(exc)


def main() -> None:
    app(prog_name="lstmops")


if __name__ == "__main__":
    sys.exit(main())
