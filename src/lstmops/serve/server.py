"""Start serving: pick the model source, check that auth is configured (or explicitly waived),
load and self-check the model (a failure ends the command with one line; a registry that is
down does not), then run uvicorn with header/body timeouts, a connection ceiling and a graceful
drain on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

from lstmops.errors import LstmopsError
from lstmops.serve.settings import ENV, Settings

SM_MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks model.tar.gz


def choose_source(settings: Settings, cwd: Path, env: dict[str, str] | None = None):
    """--model FILE, else --model-uri, else SageMaker's $SM_MODEL_DIR/model.pt, else the
    project's champion (params.yaml's mlflow.model_name)."""
    from lstmops.serve.loader import FileSource, RegistrySource

    env = os.environ if env is None else env
    if settings.model and settings.model_uri:
        raise LstmopsError("give either --model or --model-uri, not both")
    if settings.model:
        return FileSource(Path(settings.model))
    cache = Path(settings.cache_dir) if settings.cache_dir else None
    if settings.model_uri:
        return RegistrySource(settings.model_uri, registry_tracking_uri(cwd, env), cache)
    sagemaker = Path(env.get("SM_MODEL_DIR", SM_MODEL_DIR)) / "model.pt"
    if sagemaker.is_file():
        return FileSource(sagemaker)
    if (cwd / "params.yaml").is_file():
        return RegistrySource(f"models:/{project_model_name(cwd)}@champion", registry_tracking_uri(cwd, env), cache)
    raise LstmopsError(
        f"no model to serve: give --model FILE or --model-uri models:/NAME@ALIAS, put model.pt in {sagemaker.parent} "
        "(SM_MODEL_DIR), or run in a project directory (params.yaml)"
    )


def project_model_name(cwd: Path) -> str:
    import yaml

    from lstmops.naming import model_name_for

    try:
        params = yaml.safe_load((cwd / "params.yaml").read_text())
        # A task with a section of its own names its model there (charlm.model_name, ...); read
        # without the task's settings class, which the server image does not need.
        section = params.get(params.get("task"))
        if isinstance(section, dict) and section.get("model_name"):
            return str(section["model_name"])
        name = params["mlflow"]["model_name"]
        # null: the name the register stage derives from the source (config.Config.model_name).
        return str(name) if name is not None else model_name_for(str(params["data"]["source"]))
    except (OSError, KeyError, TypeError, AttributeError, yaml.YAMLError) as exc:
        raise LstmopsError(f"{cwd / 'params.yaml'}: cannot read the pipeline's model name ({exc})") from None


def registry_tracking_uri(cwd: Path, env) -> str | None:
    """MLFLOW_TRACKING_URI, else the project's own sqlite store (at the project root, shared by its
    pipelines), else mlflow's default."""
    from lstmops.paths import project_root

    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    store = project_root(cwd) / "mlflow.db"
    return f"sqlite:///{store}" if store.is_file() else None


def build(settings: Settings, cwd: Path | None = None, listening: bool = False):
    """One worker's server state, its model loaded and self-checked. ``listening``: this state
    will answer on ``settings.host``, so a missing token must be waived explicitly (an in-process
    app, as the tests build, binds nothing)."""
    settings.check()
    source = choose_source(settings, cwd or Path.cwd())  # before the heavy imports: a wrong path fails at once
    from lstmops.serve.auth import configured_token, require_auth

    token = configured_token()
    if listening:
        require_auth(token, settings.host, settings.insecure_no_auth)
    from lstmops.serve.app import Server
    from lstmops.serve.batching import Batcher
    from lstmops.serve.loader import ModelHolder
    from lstmops.serve.metrics import Metrics
    from lstmops.serve.runtime import available_cpus, configure_torch, default_threads

    # A registry that is down must not hold a poll (or the start) for MLflow's default minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    threads = settings.threads or default_threads(available_cpus(), settings.workers)
    configure_torch(threads)  # this thread loads and self-checks; the inference thread sets its own
    metrics = Metrics()
    from lstmops.serve.fastpath import accelerate

    holder = ModelHolder(
        source,
        on_change=lambda h: metrics.model_state(
            h.current.version if h.current else None, h.reloads, h.reload_failures, h.last_error
        ),
        prepare=lambda model: accelerate(model, settings.precision),
    )
    holder.load()
    batcher = Batcher(settings.max_batch, settings.max_wait_ms / 1000, observe=metrics.batch.observe,
                      setup=lambda: configure_torch(threads), max_queued=settings.max_queued_windows,
                      timeout_s=settings.queue_timeout_ms / 1000,
                      dropped=lambda reason: metrics.shed.labels(reason).inc())  # fmt: skip
    from lstmops.monitor.served import from_env as served_log

    return Server(settings, holder, batcher, metrics, token, served=served_log())


def serving_app(settings: Settings):
    """The app of a process that serves: its protocol configured, its state built and set to
    admit requests, and the heap frozen behind it (what serve() and each worker run)."""
    from lstmops.serve import logs
    from lstmops.serve.app import create_app
    from lstmops.serve.guard import GuardedHttpTools

    logs.configure()
    GuardedHttpTools.configure(settings.header_timeout_s, settings.body_timeout_s, settings.max_body_bytes)
    server = build(settings, listening=True)
    GuardedHttpTools.admit_with(server)
    app = create_app(server)
    freeze_heap()
    return app


def freeze_heap() -> None:
    """Move everything loaded so far (torch, mlflow, the model: a few hundred thousand objects)
    out of the garbage collector's sight. Otherwise each full collection walks them all while
    the event loop waits (benchmarks/serve_parts.py: 32 windows parsed 3.6x slower with the heap
    as loaded). Objects made later are collected as usual. Called by
    the serving process once its state is built, not by build(): tests build many in one process."""
    import gc

    gc.collect()
    gc.freeze()


def app_from_env():
    """uvicorn's factory for worker processes (``--workers`` > 1): settings come by environment."""
    return serving_app(Settings.from_env())


def serve(settings: Settings) -> None:
    import uvicorn

    from lstmops.serve.guard import GuardedHttpTools

    settings.check()
    common = dict(
        host=settings.host, port=settings.port, access_log=False, log_level="warning",
        timeout_graceful_shutdown=settings.graceful_timeout, http=GuardedHttpTools,
        limit_concurrency=settings.limit_concurrency,
    )  # fmt: skip
    if settings.workers > 1:
        from lstmops.serve import logs

        logs.configure()
        os.environ[ENV] = settings.to_env()
        build(settings, listening=True)  # fail here, once, with one line, rather than in every worker
        drain_then_exit_zero()
        # The workers pool their metrics in files here (serve/metrics.py); set before they start,
        # since prometheus_client chooses its mode when it is imported.
        from lstmops.serve.metrics import MULTIPROC_ENV

        shared = tempfile.mkdtemp(prefix="lstmops-metrics-")
        os.environ[MULTIPROC_ENV] = shared
        try:
            uvicorn.run("lstmops.serve.server:app_from_env", factory=True, workers=settings.workers, **common)
        finally:
            shutil.rmtree(shared, ignore_errors=True)
    else:
        app = serving_app(settings)
        drain_then_exit_zero()
        uvicorn.run(app, **common)


def drain_then_exit_zero() -> None:
    """uvicorn drains on SIGTERM/SIGINT, then re-raises the signal under the handler it found;
    with this one in place that ends the process with exit 0, which orchestrators read as a
    clean stop rather than a kill. Installed only once the model is loaded, so that a signal
    during start-up still stops the process at once."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
