"""End to end on small real data: `lstmops run` (the Prefect flow, each stage through DVC)
against a real MLflow server; then `dvc repro` has nothing to do, the TorchScript file serves
forecasts without lstmops, and bad data stops the run at validate with nothing downstream."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from .conftest import SMALL, lstmops, make_project

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# SMALL, fitted long enough to beat the naive forecasts: with SMALL's 4 epochs of 8 units the LSTM
# loses to persistence (test RMSE 0.692 vs 0.625); with these it wins on the test span (0.486,
# 22% better) and on the mean of the backtest's two folds (0.571 vs 0.608), so the gate promotes it.
FIT = [*SMALL, "model.hidden_size=16", "train.epochs=20", "train.patience=5"]
MARGIN = 0.10  # the least skill (RMSE reduction) against the best naive baseline that these tests accept


def model_versions(tracking_uri: str, name: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return sorted(int(v.version) for v in MlflowClient(tracking_uri).search_model_versions(f"name='{name}'"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_frame, mlflow_server, prefect_harness):
    """One full small pipeline run, shared by the tests of this module."""
    root = make_project(tmp_path_factory.mktemp("e2e") / "project", small_frame)
    name = "e2e-model"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "PREFECT_API_URL": prefect_harness}
    result = lstmops(root, env, "run", *[a for o in FIT + [f"mlflow.model_name={name}"] for a in ("-S", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, name, result.stdout, env


def test_run_reports_metrics_beside_baselines_model_version_and_artifact(trained):
    root, name, output, _ = trained
    for word in ("lstm", "persistence", "seasonal_naive_day", f"{name} version 1", "gate, version 1: ", "models/model.ts"):
        assert word in output
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert set(metrics["test"]) == {"lstm", "persistence", "seasonal_naive_day"}
    assert set(metrics["test"]["lstm"]) == {"rmse", "mae", "mape", "r2", "mase"}
    best = min((k for k in metrics["test"] if k != "lstm"), key=lambda k: metrics["test"][k]["rmse"])
    assert metrics["best_baseline"] == best
    assert metrics["test"]["lstm"]["rmse"] <= (1 - MARGIN) * metrics["test"][best]["rmse"]
    assert metrics["skill_vs_best_baseline"] >= MARGIN
    for plot in ("forecast.png", "residuals.png", "error_by_step.png"):
        assert (root / "reports/plots" / plot).stat().st_size > 1000
    assert "residual_acf.png" in (root / "reports/diagnostics/index.html").read_text()


def test_dvc_repro_after_a_run_has_nothing_to_do(trained):
    root, _, _, _ = trained
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "dvc.yaml"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}


def test_editing_another_pipeline_leaves_this_one_up_to_date(trained):
    root, _, _, _ = trained
    charlm = root / "pipelines/charlm/params.yaml"
    before = charlm.read_text()
    charlm.write_text(before.replace("hidden_size: 256", "hidden_size: 128").replace("min_chars: 10000", "min_chars: 500"))
    try:
        assert before != charlm.read_text()
        status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "dvc.yaml"], cwd=root, capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout) == {}  # the default pipeline (`dvc status` alone lists every pipeline)
        dry = subprocess.run([sys.executable, "-m", "dvc", "repro", "--dry"], cwd=root, capture_output=True, text=True)
        assert dry.returncode == 0 and "up to date" in dry.stdout and "charlm" not in dry.stdout  # `dvc repro`: the root's only
        other = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "pipelines/charlm/dvc.yaml"], cwd=root,
                               capture_output=True, text=True)  # fmt: skip
        assert "ingest" in " ".join(json.loads(other.stdout))  # that pipeline has never run: it would
    finally:
        charlm.write_text(before)


def test_a_new_pipeline_trains_and_registers_its_own_model_beside_the_default_one(trained, small_frame, mlflow_server):
    root, name, _, env = trained
    # Another series with the same columns (as another region's export would be).
    region = root / "data" / "source" / "region_b.csv"
    frame = small_frame.copy()
    frame["demand_gw"] = frame["demand_gw"] * 1.5  # a bigger region: another level, the same shape (within bounds)
    frame.to_csv(region, index=False)
    made = lstmops(root, env, "new", "demand-b", "--task", "forecast", "--source", "data/source/region_b.csv")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "wrote pipelines/demand-b/ (task forecast); edit pipelines/demand-b/params.yaml, then: lstmops run --pipeline pipelines/demand-b"
    result = lstmops(root, env, "run", "--pipeline", "pipelines/demand-b", *[a for o in FIT for a in ("-S", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lstmops-demand-b version 1" in result.stdout
    pipeline = root / "pipelines/demand-b"
    assert json.loads((pipeline / "reports/metrics.json").read_text())["skill_vs_best_baseline"] >= MARGIN
    assert model_versions(mlflow_server, "lstmops-demand-b") == [1]
    assert model_versions(mlflow_server, name) == [1]  # the default pipeline's model is untouched
    from mlflow.tracking import MlflowClient

    version = MlflowClient(mlflow_server).get_model_version("lstmops-demand-b", "1")
    assert version.tags["data_source"] == "../../data/source/region_b.csv"
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "dvc.yaml"], cwd=root, capture_output=True, text=True)
    assert json.loads(status.stdout) == {}  # the new pipeline's run changed nothing of the root's


def test_registered_version_carries_lineage_and_the_gate_verdict(trained, mlflow_server):
    from mlflow.tracking import MlflowClient

    from lstmops.io import md5_file

    root, name, _, _ = trained
    client = MlflowClient(mlflow_server)
    version = client.get_model_version(name, "1")
    assert version.tags["data_md5"] == md5_file(root / "data/raw/snapshot.parquet")
    assert version.tags["data_source"] == "data/source/vic_elec_2014.csv"
    assert version.tags["validation"].startswith("passed")
    assert json.loads(version.tags["params"])["window"]["horizon"] == 12
    assert "git_commit" in version.tags
    assert version.tags["model.artifact"] == f"torchscript/{version.tags['model.sha256']}/model.ts"
    lineage = {a.path for a in client.list_artifacts(version.run_id, "lineage")}
    assert lineage == {"lineage/dvc.lock", "lineage/params.yaml"}
    diagnostics = {a.path for a in client.list_artifacts(version.run_id, "diagnostics")}
    assert {"diagnostics/index.html", "diagnostics/residual_acf.png"} <= diagnostics
    dataset = client.get_run(version.run_id).inputs.dataset_inputs[0].dataset
    assert dataset.digest == version.tags["data_md5"]
    # A first version with no champion to beat: it is promoted because it beats the best naive
    # baseline on every test window (its own record leaves them all) and in the backtest's mean.
    gate = json.loads((root / "reports/gate.json").read_text())
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert gate["promoted"] and version.aliases == ["champion"] and version.tags["gate.reason"] == gate["reason"]
    assert gate["reason"].startswith(f"first champion: rmse {gate['challenger_score']:.4g} beats the best naive baseline")
    assert (gate["held_out"], gate["unseen"], gate["champion_version"]) == (169, 169, None)
    assert gate["scored_on"].startswith("169 of 169 test windows, origins ")
    assert gate["challenger_score"] == pytest.approx(metrics["test"]["lstm"]["rmse"], abs=1e-4)  # the registered file
    assert gate["baseline_score"] == metrics["test"][gate["best_baseline"]]["rmse"]
    assert gate["challenger_score"] <= (1 - MARGIN) * gate["baseline_score"]
    assert gate["backtest_score"] < gate["backtest_baseline_score"]
    seen = {k: v for k, v in version.tags.items() if k.startswith("seen.")}
    assert sorted(seen) == ["seen.series_from", "seen.trained_until", "seen.validated_until"]
    first_scored = pd.Timestamp(gate["scored_on"].split("origins ")[1].split(" to ")[0])
    assert pd.Timestamp(seen["seen.validated_until"]) < first_scored  # scored only after what it saw


def test_registered_model_loads_from_the_registry_and_forecasts_original_units(trained, mlflow_server, monkeypatch):
    import mlflow

    root, name, _, _ = trained
    mlflow.set_tracking_uri(mlflow_server)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # nothing in the registered model is a pickle
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    window = pd.read_csv(root / "data/source/vic_elec_2014.csv").iloc[-60:, 1:].to_numpy(np.float32)[None]
    forecast = model.predict(window)
    assert forecast.shape == (1, 12)
    assert 2.0 < float(forecast.mean()) < 10.0  # GW, not scaled units


def test_torchscript_predicts_in_a_process_where_lstmops_cannot_be_imported(trained):
    root, _, _, _ = trained
    exported = json.loads((root / "models/export.json").read_text())
    assert exported["max_abs_diff"] <= 1e-5
    window = pd.read_csv(root / "data/source/vic_elec_2014.csv").iloc[-48:, 1:].to_numpy(np.float32)
    np.save(root / "window.npy", window[None])
    # The eager model's forecast for the same raw window, through the package.
    import torch

    from lstmops.tasks.forecast.prepare import Prepared
    from lstmops.tasks.forecast.task import load_model

    meta = Prepared.load(root / "data/prepared")
    eager, _ = load_model(root / "models/checkpoint.pt")
    scaled = (torch.from_numpy(window[None]) - torch.tensor(meta.mean)) / torch.tensor(meta.std)
    expected = eager(scaled.float()).detach().numpy() * meta.std[0] + meta.mean[0]

    code = (
        "import sys; sys.modules['lstmops'] = None\n"  # any `import lstmops` now fails
        "import numpy as np, torch\n"
        "m = torch.jit.load('models/model.ts')\n"
        "print(m(torch.from_numpy(np.load('window.npy'))).detach().numpy().tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    served = np.array(json.loads(out.stdout))
    np.testing.assert_allclose(served, expected, atol=1e-5, rtol=0)


def bad_csv(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    frame = frame.copy()
    if case == "null_target":
        frame.loc[500, "demand_gw"] = None
    elif case == "duplicate_timestamp":
        frame.loc[300, "timestamp"] = frame.loc[299, "timestamp"]
    elif case == "non_numeric_feature":
        frame = frame.astype({"temperature_c": object})
        frame.loc[42, "temperature_c"] = "n/a?"
    elif case == "missing_column":
        frame = frame.drop(columns=["workday"])
    return frame


def test_a_forced_reexport_never_changes_the_bytes_of_a_registered_version(trained, mlflow_server, tmp_path):
    """Acceptance: after the run, the sha256 version 1 records is that of the file the registry
    serves; after `dvc repro -f -s export` and `dvc repro` it still is; then, with that file
    replaced in the store, serve, compare and gate refuse it in one line."""
    from mlflow.tracking import MlflowClient

    from lstmops.registry.verify import fetch_verified, file_digest

    root, name, _, env = trained
    client = MlflowClient(mlflow_server)
    before = client.get_model_version(name, "1")
    served = fetch_verified(before, tmp_path / "before", tracking_uri=mlflow_server)
    assert before.tags["model.sha256"] == file_digest(served)[0] == file_digest(root / "models/model.ts")[0]
    versions = model_versions(mlflow_server, name)
    for args in (["repro", "-f", "-s", "export"], ["repro"]):
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env={**os.environ, **env, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")},
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    after = client.get_model_version(name, "1")
    assert after.tags["model.sha256"] == before.tags["model.sha256"]
    assert file_digest(fetch_verified(after, tmp_path / "after", tracking_uri=mlflow_server))[0] == before.tags["model.sha256"]
    # TorchScript archives are not byte-reproducible across processes (a random serialization id,
    # constants in hash order): the re-export is a new version of the same model, or nothing
    new = [v for v in model_versions(mlflow_server, name) if v not in versions]
    assert len(new) <= 1
    for number in new:
        mv = client.get_model_version(name, str(number))
        assert mv.tags["model.sha256"] != before.tags["model.sha256"] and mv.run_id == before.run_id
        assert file_digest(fetch_verified(mv, tmp_path / "new", tracking_uri=mlflow_server))[0] == mv.tags["model.sha256"]

    # The stored file replaced by another valid TorchScript file: serve, compare and gate refuse it.
    from .conftest import free_port
    from .serve_support import tiny_model

    other = tiny_model(tmp_path / "other" / "model.ts", seed=7)
    folder = after.tags["model.artifact"].rsplit("/", 1)[0]
    client.log_artifact(after.run_id, str(other), folder)
    refusal = f"{name} version 1: refused: its model file has sha256 {file_digest(other)[0]}"
    try:
        for args in (["serve", "--model-uri", f"models:/{name}/1", "--host", "127.0.0.1", "--port", str(free_port())],
                     ["compare", "1", "models/model.ts"], ["gate"]):  # fmt: skip
            refused = lstmops(root, env, *args)
            assert refused.returncode == 1 and refused.stderr.count("\n") == 1, (args, refused.stderr[-2000:])
            assert refusal in refused.stderr and before.tags["model.sha256"] in refused.stderr, (args, refused.stderr)
    finally:
        client.log_artifact(after.run_id, str(served), folder)  # put right for the tests after this one


@pytest.mark.parametrize(
    "case, message, in_process",
    [
        ("null_target", "column 'demand_gw': 1 null value(s): row 501", True),
        ("duplicate_timestamp", "duplicated timestamp(s): row 300", False),
        ("non_numeric_feature", "column 'temperature_c': expected numbers", True),
        ("missing_column", "column 'workday': required column is missing", False),
    ],
)
def test_bad_data_stops_the_run_at_validate(trained, small_frame, mlflow_server, case, message, in_process):
    """In the flow's process (the default) or as `lstmops validate` started by `dvc repro`: the same stop."""
    root, name, _, env = trained
    bad = root / "data" / "source" / f"{case}.csv"
    bad_csv(small_frame, case).to_csv(bad, index=False)
    prepared_before = (root / "data/prepared/meta.json").stat().st_mtime_ns
    versions_before = model_versions(mlflow_server, name)  # [1], or [1, 2] after a re-export made a version
    result = lstmops(root, env, "run", "-S", f"data.source=data/source/{case}.csv",
                     "-S", f"retrain.in_process={str(in_process).lower()}")  # fmt: skip
    assert result.returncode == 1
    assert "error: stage 'validate' failed" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert (root / "data/prepared/meta.json").stat().st_mtime_ns == prepared_before  # nothing downstream ran
    assert model_versions(mlflow_server, name) == versions_before  # no new version

