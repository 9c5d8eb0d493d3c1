"""``lstmops``: one command per pipeline stage, ``run`` for the whole Prefect flow.

Only typer is imported at start-up; each command imports what it needs, so ``--help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from lstmops.errors import EXIT_UNAVAILABLE, LstmopsError, ServiceUnavailable, report_lines

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train, track, version and ship LSTM models. Every command acts on the pipeline in the working "
    "directory (its params.yaml and dvc.yaml), or on the one that --pipeline DIR names.",
)
PIPELINE_HELP = "The pipeline's folder (params.yaml + dvc.yaml), e.g. pipelines/charlm; default: the working directory."


def enter_pipeline(folder: Path) -> None:
    """Make ``folder`` the working directory of the command, after checking it is a pipeline."""
    if not (folder / "params.yaml").is_file():
        raise LstmopsError(f"--pipeline {folder}: no params.yaml there (a pipeline is a folder with params.yaml and dvc.yaml)")
    os.chdir(folder)


def pipeline_option(argv: list[str]) -> tuple[Path | None, list[str]]:
    """``--pipeline DIR`` (or ``--pipeline=DIR``) taken out of the arguments wherever it stands, so it
    goes after the command as well as before it (``lstmops run --pipeline pipelines/charlm``)."""
    rest, folder = [], None
    args = iter(argv)
    for arg in args:
        if arg == "--pipeline":
            folder = next(args, None)
            if folder is None:
                raise LstmopsError("--pipeline: give the pipeline's folder, e.g. --pipeline pipelines/charlm")
        elif arg.startswith("--pipeline="):
            folder = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return (Path(folder) if folder is not None else None), rest


@app.callback()
def _options(
    pipeline: Annotated[Path | None, typer.Option("--pipeline", metavar="DIR", help=PIPELINE_HELP)] = None,
) -> None:
    # main() already took --pipeline out of the arguments; this is for `lstmops --help` and app() callers.
    if pipeline is not None:
        try:
            enter_pipeline(pipeline)
        except LstmopsError as exc:
            fail(exc)

Overrides = Annotated[
    list[str] | None,
    typer.Option("-S", "--set", metavar="KEY=VALUE", help="Override a setting of params.yaml, e.g. -S train.epochs=3."),
]
QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a download's bars would break one-line errors
}


def fail(exc: LstmopsError) -> None:
    """Expected failures: message lines on stderr, exit 1, no traceback."""
    typer.echo("\n".join(report_lines(exc)), err=True)
    raise typer.Exit(EXIT_UNAVAILABLE if isinstance(exc, ServiceUnavailable) else 1)


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
    "backtest": "Rolling-origin backtest: evaluate.backtest_folds expanding-window folds, each retrained, scored against the baselines.",
    "export": "Write the TorchScript model (scaling inside), check it against the eager model, log it.",
    "register": "Register the exported model in the MLflow registry with lineage; the new version is the challenger.",
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
def gate(
    set_: Overrides = None,
    force: Annotated[
        bool, typer.Option(
            "--force",
            help="Promote even if the champion cannot score the new data (features or horizon changed).",
        ),
    ] = False,
) -> None:  # fmt: skip
    """Score the new version and the champion on the newest test windows; promote the challenger if it wins."""
    run_stage("gate", set_, force=force)


@app.command()
def predict(set_: Overrides = None) -> None:
    """The champion's forecasts from the newest data (each new origin of monitor.every) -> the forecasts store."""
    from lstmops import config
    from lstmops.monitor.predict import predict as run

    quiet_telemetry()
    try:
        typer.echo(run(config.load(Path.cwd(), set_), Path.cwd()))
    except LstmopsError as exc:
        fail(exc)


@app.command()
def monitor(set_: Overrides = None) -> None:
    """Score stored forecasts against the actuals that arrived, beside the naive forecasts; drift; the decay rule.

    Writes reports/monitor/ (JSON, HTML, Prometheus textfile) and MLflow metrics on the champion's run; when
    the rule fires, announces it (monitor.on_decay: a Prefect event that triggers the retrain deployment).
    """
    from lstmops import config
    from lstmops.monitor.run import monitor as run

    quiet_telemetry()
    try:
        typer.echo(run(config.load(Path.cwd(), set_), Path.cwd()))
    except LstmopsError as exc:
        fail(exc)


ParamsFile = Annotated[
    Path | None,
    typer.Option("-P", "--params-file", metavar="FILE",
                 help="Apply a params file's settings (e.g. tune/best_params.yaml) before any -S."),
]  # fmt: skip


def with_params_file(params_file: Path | None, overrides: list[str] | None) -> list[str]:
    """A params file's settings as overrides, then the command line's -S (which win)."""
    from lstmops.config import read_params_file

    return [*(read_params_file(params_file) if params_file else []), *(overrides or [])]


@app.command()
def run(set_: Overrides = None, params_file: ParamsFile = None) -> None:
    """Run the whole pipeline as a Prefect flow; each stage runs through DVC (shared cache and dvc.lock).

    Overrides are validated, then written to params.yaml (as `dvc exp run -S` does) so that
    dvc.lock records what the run used.
    """
    from lstmops import config
    from lstmops.orchestrate import run_flow

    quiet_telemetry()
    root = Path.cwd()
    try:
        overrides = with_params_file(params_file, set_)
        config.load(root, overrides)  # checked before Prefect starts; the flow writes them to params.yaml
        typer.echo(run_flow(root, overrides))
    except LstmopsError as exc:
        fail(exc)


@app.command("set")
def set_params(set_: Overrides = None, params_file: ParamsFile = None) -> None:
    """Write settings into params.yaml (validated; comments kept), e.g. before `dvc repro`."""
    from lstmops import config

    try:
        overrides = with_params_file(params_file, set_)
        if not overrides:
            raise config.ConfigError("nothing to set: give -S KEY=VALUE or -P FILE")
        config.write_overrides(Path.cwd(), overrides)
        typer.echo(f"params.yaml: {len(overrides)} setting(s) written: " + " ".join(overrides))
    except LstmopsError as exc:
        fail(exc)


@app.command()
def tune(
    set_: Overrides = None,
    params_file: ParamsFile = None,
    trials: Annotated[int | None, typer.Option(help="Trials the study should have, finished ones included (default: tune.trials).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-clock budget of this run in seconds (default: tune.timeout_s).")] = None,
) -> None:
    """Search tune.space with Optuna (TPE, median pruning) on validation loss; print and write the best settings.

    Needs the ingested snapshot (lstmops run or ingest + validate first). Resumes the study in
    tune.storage; each trial is an MLflow child run of the study's parent run.
    """
    from lstmops.tasks.base import Tunes

    quiet_telemetry()
    root = Path.cwd()
    try:
        overrides = with_params_file(params_file, set_)
        task = pipeline_task(root, overrides)
        if not isinstance(task, Tunes):
            raise LstmopsError(f"lstmops tune: this pipeline's task has no tuning space ({root / 'params.yaml'})")
        typer.echo("\n".join(task.tune(root, overrides, trials, timeout)))
    except LstmopsError as exc:
        fail(exc)


def pipeline_task(root: Path, overrides: list[str] | None = None):
    """The ``Task`` of the pipeline in ``root`` (its params.yaml's ``task``)."""
    from lstmops import config
    from lstmops.tasks import for_task

    return for_task(config.load(root, overrides).task)


def registry_client():
    """(MlflowClient, registered model name) for the project in the working directory."""
    from mlflow.tracking import MlflowClient

    from lstmops import config
    from lstmops.tracking import configure

    quiet_telemetry()
    cfg = config.load(Path.cwd())
    configure(Path.cwd(), cfg.mlflow.experiment)
    return MlflowClient(), cfg.model_name


ModelName = Annotated[str | None, typer.Option("--name", help="Registered model (default: mlflow.model_name in params.yaml).")]


@app.command()
def models(name: ModelName = None) -> None:
    """List the registered versions: aliases, test and hold-out metric, gate verdict and reason."""
    from lstmops.registry.listing import models_table

    try:
        client, default = registry_client()
        typer.echo("\n".join(models_table(client, name or default)))
    except LstmopsError as exc:
        fail(exc)


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="The version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit trail.")],
    name: ModelName = None,
) -> None:
    """Make VERSION the champion by hand (a manual release), recorded in the audit trail."""
    from lstmops.registry.trail import move_champion

    try:
        client, default = registry_client()
        move = move_champion(client, name or default, version, "promote", reason)
        typer.echo(f"champion: version {move.from_version} -> {move.to_version} (record {move.seq})")
    except LstmopsError as exc:
        fail(exc)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit trail.")] = "rollback",
    name: ModelName = None,
) -> None:
    """Move the champion back to the previous champion (following the audit trail), recorded."""
    from lstmops.registry.trail import rollback as run

    try:
        client, default = registry_client()
        move = run(client, name or default, reason)
        typer.echo(f"champion rolled back: version {move.from_version} -> {move.to_version} (record {move.seq})")
    except LstmopsError as exc:
        fail(exc)


@app.command()
def history(name: ModelName = None) -> None:
    """Every move of the champion alias: when, who, from -> to, why (newest first)."""
    from lstmops.registry.listing import history_table
    from lstmops.registry.trail import history as moves

    try:
        client, default = registry_client()
        typer.echo("\n".join(history_table(moves(client, name or default))))
    except LstmopsError as exc:
        fail(exc)


VersionUri = Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION, @ALIAS or VERSION.")]


@app.command()
def lineage(uri: VersionUri = "@champion") -> None:
    """Where a version came from (commit, data, params, metrics, run) and the commands that reproduce it."""
    from lstmops.registry.lineage import describe, resolve

    try:
        client, default = registry_client()
        typer.echo("\n".join(describe(client, resolve(client, uri, default))))
    except LstmopsError as exc:
        fail(exc)


@app.command()
def checkout(uri: VersionUri) -> None:
    """Restore params.yaml and dvc.lock as a version's run used them (then `dvc pull`, `dvc repro`)."""
    from lstmops.registry.lineage import checkout as run, resolve

    try:
        client, default = registry_client()
        for path in run(client, resolve(client, uri, default), Path.cwd()):
            typer.echo(f"restored {path.name}")
    except LstmopsError as exc:
        fail(exc)


@app.command()
def keygen(
    prefix: Annotated[Path, typer.Argument(help="Writes PREFIX.key (private, mode 600) and PREFIX.pub; never overwrites.")],
) -> None:
    """Make an Ed25519 key pair for signing models (LSTMOPS_SIGNING_KEY_FILE) and verifying them (LSTMOPS_VERIFY_KEY_FILE)."""
    from lstmops.registry.signing import key_id, keygen as run, verify_keys

    try:
        private, public = run(prefix)
        (key,) = verify_keys({"LSTMOPS_VERIFY_KEY_FILE": str(public)})
        typer.echo(f"wrote {private} (private: keep it secret) and {public} (public), key id {key_id(key)}")
    except LstmopsError as exc:
        fail(exc)


CompareArg = Annotated[
    str, typer.Argument(help="A TorchScript file, a registry version (3, @champion, models:/NAME/3, models:/NAME@ALIAS) or an MLflow run id.")
]


@app.command()
def compare(
    a: CompareArg,
    b: CompareArg,
    set_: Overrides = None,
    loss: Annotated[str, typer.Option(help="Per-window loss of the Diebold-Mariano test: mse or mae (mean over the horizon).")] = "mse",
    level: Annotated[float, typer.Option(help="Significance level of the verdict.")] = 0.05,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of the table.")] = False,
) -> None:  # fmt: skip
    """Score two forecasters on this project's test windows side by side; Diebold-Mariano test (is B better than A?)."""
    import functools
    import json

    from lstmops import config
    from lstmops.tasks import for_task
    from lstmops.tasks.base import Compares

    quiet_telemetry()
    root = Path.cwd()
    try:
        if loss not in ("mse", "mae"):
            raise config.ConfigError(f"--loss {loss}: expected mse or mae")
        if not 0 < level < 1:
            raise config.ConfigError(f"--level {level}: expected a value between 0 and 1")
        cfg = config.load(root, set_)
        task = for_task(cfg.task)
        if not isinstance(task, Compares):
            raise LstmopsError(f"lstmops compare scores forecasters only; this pipeline's task is {cfg.task}")
        # connected once, only for a version or run id; @ALIAS and VERSION name cfg.model_name (-S applies)
        registry = functools.cache(lambda: (registry_client()[0], cfg.model_name))
        table, lines = task.compare(cfg, root, a, b, loss, level, registry)
        typer.echo(json.dumps(table, indent=2) if as_json else "\n".join(lines))
    except LstmopsError as exc:
        fail(exc)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="Text to continue ('' : start from an empty context).")] = "",
    chars: Annotated[int, typer.Option(help="Characters to sample.")] = 300,
    temperature: Annotated[float, typer.Option(help="Below 1: safer, more repetitive; above 1: more surprising.")] = 0.5,
    seed: Annotated[int, typer.Option(help="The same seed gives the same text.")] = 0,
    model: Annotated[Path | None, typer.Option("--model", help="A TorchScript file exported by task charlm.")] = None,
    model_uri: Annotated[str, typer.Option(help="Registry version when no --model: models:/NAME@ALIAS, @ALIAS or VERSION.")] = "@champion",
) -> None:
    """Sample text from a character-level language model: the registry's champion (charlm.model_name) or a file."""
    from lstmops.tasks import for_task, names
    from lstmops.tasks.base import Generates

    def version():  # the registry, only when no --model
        from lstmops.registry.lineage import resolve

        client, default = registry_client()
        return client, resolve(client, model_uri, default)

    try:
        (task,) = [t for t in map(for_task, names()) if isinstance(t, Generates)]  # the task that samples text
        typer.echo(prompt + task.sample_text(model, None if model is not None else version, prompt, chars, temperature, seed))
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(envvar="SAGEMAKER_BIND_TO_PORT", help="Port (SageMaker: 8080).")] = 8080,
    model: Annotated[str | None, typer.Option(help="Serve this TorchScript file.")] = None,
    model_uri: Annotated[
        str | None, typer.Option(envvar="LSTMOPS_MODEL_URI", help="models:/NAME@ALIAS (followed) or models:/NAME/VERSION.")
    ] = None,
    poll_interval: Annotated[float, typer.Option(help="Seconds between checks of where the alias points.")] = 30.0,
    workers: Annotated[int, typer.Option(envvar="SAGEMAKER_MODEL_SERVER_WORKERS", help="Server processes.")] = 1,
    max_batch: Annotated[int, typer.Option(envvar="LSTMOPS_MAX_BATCH", help="Most windows per forward pass (1: no batching).")] = 64,
    max_wait_ms: Annotated[float, typer.Option(envvar="LSTMOPS_MAX_WAIT_MS", help="How long a batch waits for more requests.")] = 0.0,
    max_body_mib: Annotated[float, typer.Option(envvar="LSTMOPS_MAX_BODY_MIB", help="Request body limit (at most 6, SageMaker's).")] = 1.0,
    threads: Annotated[
        int | None, typer.Option(envvar="LSTMOPS_THREADS", help="torch threads per worker (default: from the CPUs).")
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Serve without a token beyond loopback (something else guards the port).")
    ] = False,
) -> None:  # fmt: skip
    """Serve a model over HTTP: SageMaker /ping and /invocations, /healthz, /readyz, /metrics.

    Model: --model FILE, --model-uri, $SM_MODEL_DIR/model.pt, or the project's champion.
    """
    from lstmops.serve.server import serve as run_server
    from lstmops.serve.settings import MIB, Settings

    quiet_telemetry()
    settings = Settings(
        model=model, model_uri=model_uri, host=host, port=port, workers=workers, poll_interval=poll_interval,
        max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_bytes=int(max_body_mib * MIB), threads=threads,
        **({"insecure_no_auth": True} if insecure_no_auth else {}),  # absent: LSTMOPS_INSECURE_NO_AUTH decides
    )  # fmt: skip
    try:
        run_server(settings)
    except LstmopsError as exc:
        fail(exc)


package_app = typer.Typer(no_args_is_help=True, help="Package a model for a serving platform.")
deploy_app = typer.Typer(no_args_is_help=True, help="Deploy a model to a serving platform.")
app.add_typer(package_app, name="package")
app.add_typer(deploy_app, name="deploy")
ModelFile = Annotated[Path | None, typer.Option("--model", help="TorchScript file (default: models/model.ts).")]
ModelUri = Annotated[str | None, typer.Option(help="models:/NAME@ALIAS or models:/NAME/VERSION (its file, checked against its sha256).")]
Tarball = Annotated[Path, typer.Option("--out", help="Where to write model.tar.gz.")]


@package_app.command("sagemaker")
def package_sagemaker(model: ModelFile = None, model_uri: ModelUri = None, out: Tarball = Path("models/model.tar.gz")) -> None:
    """model.tar.gz: model.pt + code/inference.py, for the lstmops image or AWS's PyTorch container."""
    from lstmops.deploy.package import package_sagemaker as run

    quiet_telemetry()
    try:
        typer.echo(run(out, model, model_uri).summary())
    except LstmopsError as exc:
        fail(exc)


@deploy_app.command("sagemaker")
def deploy_sagemaker(
    role: Annotated[str, typer.Option(help="Execution role ARN SageMaker assumes (image pull, model data).")],
    image: Annotated[str, typer.Option(help="The lstmops image URI in ECR (infra/docker/Dockerfile).")],
    bucket: Annotated[str, typer.Option(help="S3 bucket for model.tar.gz.")],
    model: ModelFile = None,
    model_uri: ModelUri = None,
    endpoint: Annotated[str, typer.Option(help="Endpoint name: created, or updated blue/green.")] = "lstmops-serve",
    instance_type: Annotated[str, typer.Option(help="Instance type.")] = "ml.m5.large",
    instance_count: Annotated[int, typer.Option(help="Instances.")] = 1,
    region: Annotated[str | None, typer.Option(help="AWS region (default: AWS_REGION / the AWS config).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the endpoint is InService.")] = True,
) -> None:  # fmt: skip
    """Package, upload to S3, create the model and endpoint config, create or update the endpoint."""
    import tempfile

    from lstmops.deploy.package import package_sagemaker as package
    from lstmops.deploy.sagemaker import Target, deploy

    quiet_telemetry()
    target = Target(role, image, bucket, endpoint, instance_type, instance_count, region=region)
    try:
        target.check()  # before fetching the model: a wrong role fails at once
        with tempfile.TemporaryDirectory(prefix="lstmops-deploy-") as tmp:
            packaged = package(Path(tmp) / "model.tar.gz", model, model_uri)
            typer.echo(packaged.summary())
            typer.echo(deploy(packaged.path, packaged.sha256, target, wait=wait, say=typer.echo,
                              model_sha256=packaged.model_sha256))  # fmt: skip
    except LstmopsError as exc:
        fail(exc)


@app.command()
def pull(
    outputs: Annotated[bool, typer.Option("--outputs/--no-outputs", help="Also fetch the outputs (--no-outputs: dvc.lock files only).")] = True,
) -> None:
    """Make this clone a flow run's workspace: dvc.lock files from the state branch, outputs from the DVC remote.

    The deployments' pull steps (prefect.yaml) run it in each run's fresh clone; see docs: Retrain anywhere.
    """
    from lstmops.paths import project_root
    from lstmops.workspace import pull as run

    quiet_telemetry()
    try:
        for line in run(project_root(Path.cwd()), outputs):
            typer.echo(line)
    except LstmopsError as exc:
        fail(exc)


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="The pipeline's name: its folder pipelines/NAME and its model lstmops-NAME.")],
    task: Annotated[str | None, typer.Option(help="What it trains: forecast (default), charlm, classify or long_lag.")] = None,
    source: Annotated[str | None, typer.Option(help="Its data (a path from here, or s3://); default: the task's example.")] = None,
) -> None:
    """Write a new pipeline, pipelines/NAME/ (params.yaml + dvc.yaml from the task's template), in this project."""
    from lstmops.paths import project_root
    from lstmops.scaffold import new as run
    from lstmops.tasks import names

    task = task or names()[0]  # the registry's first task
    try:
        project = project_root(Path.cwd())
        made = run(project, name, task, source)
        where = os.path.relpath(made, Path.cwd())
        typer.echo(f"wrote {where}/ (task {task}); edit {where}/params.yaml, then: lstmops run --pipeline {where}")
    except LstmopsError as exc:
        fail(exc)


def main() -> None:
    try:
        folder, argv = pipeline_option(sys.argv[1:])
        if folder is not None:
            enter_pipeline(folder)
    except LstmopsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    app(args=argv, prog_name="lstmops")


if __name__ == "__main__":
    sys.exit(main())
