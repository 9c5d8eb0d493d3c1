"""The classify task end to end on a small slice of Japanese Vowels: `lstmops run --pipeline pipelines/classify`
(the same Prefect flow, DVC stages and registry as forecasting), then the exported file classifies
padded sequences in a fresh process where `import lstmops` is impossible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import lstmops, make_project

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# A small version of the classify defaults: same code, tiny sizes.
SMALL_CLASSIFY = [
    "classify.hidden_size=16",
    "classify.batch_size=8",
    "classify.model_name=e2e-classify",
    "classify.train.epochs=4",
    "classify.train.warmup_steps=0",
    "promote.min_unseen=20",  # sequences (the default asks 100): the small test split has 45
]
# The least accuracy above the majority class (1/9 here) that these tests accept, in points. Four
# epochs of the small model classify 15 of 45 test sequences (0.333, 22 points above); the
# summary-statistics logistic regression (0.933) stays out of its reach, so the gate refuses it.
MARGIN = 0.15
FEATURES = [f"lpc{i}" for i in range(1, 13)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_frame, mlflow_server, prefect_harness):
    # The project's classify pipeline; commands run in its folder, as `--pipeline pipelines/classify` would.
    root = make_project(tmp_path_factory.mktemp("classify") / "project", small_frame) / "pipelines" / "classify"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "PREFECT_API_URL": prefect_harness}
    result = lstmops(root, env, "run", *[a for o in SMALL_CLASSIFY for a in ("-S", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result.stdout, env


def test_run_reports_accuracy_beside_both_baselines_with_the_evaluation_files(trained):
    root, output, _ = trained
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert set(metrics["test"]) == {"lstm", "majority", "summary_logreg"}
    for scores in metrics["test"].values():
        assert set(scores) == {"accuracy", "error_rate", "macro_f1", "log_loss"}
        assert 0 <= scores["accuracy"] <= 1 and scores["error_rate"] == pytest.approx(1 - scores["accuracy"])
    assert metrics["test_sequences"] == 45 and metrics["classes"] == [str(i) for i in range(1, 10)]
    assert set(metrics["per_class"]) == set(metrics["classes"])
    assert all(set(m) == {"precision", "recall", "f1", "support"} for m in metrics["per_class"].values())
    assert np.array(metrics["confusion"]).sum() == 45
    assert metrics["test"]["majority"]["accuracy"] == pytest.approx(5 / 45, abs=1e-6)  # balanced: the first class
    assert metrics["test"]["lstm"]["accuracy"] >= metrics["test"]["majority"]["accuracy"] + MARGIN
    assert (root / "reports/plots/confusion_matrix.png").stat().st_size > 1000
    assert (root / "reports/plots/accuracy_by_steps.png").is_file()
    assert pd.read_csv(root / "reports/per_step.csv").columns.tolist() == ["forecaster", "step", "accuracy"]
    validation = json.loads((root / "reports/validation.json").read_text())
    assert validation["counts"]["classes"]["1"] == {"all": 10, "train": 5, "test": 5}
    assert "test metrics (45 sequences, 9 classes" in output and "e2e-classify version 1" in output
    assert "probabilities of 9 classes" in output


def test_the_version_is_registered_with_its_task_its_signature_and_the_gates_metric(trained, mlflow_server, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    version = client.get_model_version("e2e-classify", "1")
    assert version.tags["task"] == "classify"
    assert version.tags["data_source"] == "../../data/source/japanese_vowels.csv"  # relative to the pipeline
    assert version.tags["gate.metric"] == "error_rate"
    # Scored on all 45 test sequences (its own record leaves them all): the registered file makes
    # evaluate's mistakes; it beats the majority class but not the logistic regression: refused.
    gate = {k.removeprefix("gate."): v for k, v in version.tags.items() if k.startswith("gate.")}
    metrics = json.loads((Path(trained[0]) / "reports/metrics.json").read_text())
    assert (gate["held_out"], gate["unseen"], gate["scored_on"]) == ("45", "45", "45 of 45 test sequences")
    assert float(gate["challenger_score"]) == pytest.approx(metrics["test"]["lstm"]["error_rate"], abs=1e-6)
    assert float(version.tags["test_accuracy"]) == metrics["test"]["lstm"]["accuracy"]
    assert (gate["best_baseline"], float(gate["baseline_score"])) == ("summary_logreg", metrics["test"]["summary_logreg"]["error_rate"])
    assert gate["promoted"] == "False" and version.aliases == ["challenger"]
    assert gate["reason"].startswith(f"error_rate {float(gate['challenger_score']):.4g} does not beat the best naive baseline summary_logreg")
    source = client.get_model_version_download_uri("e2e-classify", "1")
    local = mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=mlflow_server, dst_path=str(tmp_path))
    signature = mlflow.models.Model.load(local).signature
    inputs = signature.inputs.to_dict()
    assert [(i["name"], list(i["tensor-spec"]["shape"])) for i in inputs] == [("x", [-1, -1, 12]), ("lengths", [-1])]
    assert list(signature.outputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 9]
    exported = json.loads((Path(trained[0]) / "models/export.json").read_text())
    assert exported["classes"] == [str(i) for i in range(1, 10)] and exported["max_abs_diff"] <= 1e-4


def test_dvc_status_after_a_classify_run_is_clean(trained):
    root, _, _ = trained
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", "dvc.yaml"], cwd=root, capture_output=True, text=True)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}


def test_the_exported_file_classifies_without_lstmops_as_it_does_in_process(trained):
    import torch

    root, _, _ = trained
    frame = pd.read_csv(root / "../../data/source/japanese_vowels.csv")  # the pipeline's source, as params name it
    test = frame[frame.split == "test"]
    sequences = [g.sort_values("step")[FEATURES].to_numpy(np.float32) for _, g in test.groupby("utterance", sort=False)][:6]
    lengths = [len(s) for s in sequences]
    x = np.zeros((len(sequences), max(lengths), 12), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    (root / "batch.json").write_text(json.dumps({"x": x.tolist(), "lengths": lengths}))
    code = (
        "import sys; sys.modules['lstmops'] = None\n"
        "import json, torch\n"
        f"m = torch.jit.load({str(root / 'models/model.ts')!r})\n"
        f"batch = json.load(open({str(root / 'batch.json')!r}))\n"
        "p = m(torch.tensor(batch['x']), torch.tensor(batch['lengths']))\n"
        "print(json.dumps({'probs': p.tolist(), 'classes': list(m.classes), 'features': list(m.features), 'task': m.task}))\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd="/", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    probs = np.array(out["probs"])
    assert probs.shape == (6, 9)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert out["classes"] == [str(i) for i in range(1, 10)] and out["features"] == FEATURES and out["task"] == "classify"
    here = torch.jit.load(str(root / "models/model.ts"))(torch.from_numpy(x), torch.tensor(lengths)).detach().numpy()
    np.testing.assert_allclose(probs, here, atol=1e-6)
