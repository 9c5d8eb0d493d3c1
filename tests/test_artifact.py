"""The exported TorchScript refuses input it was not trained for, naming what is wrong, and
carries its interface as plain attributes that any process with torch alone can read."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lstmops.tasks.forecast.prepare import Prepared, Split
from lstmops.tasks.forecast.export import script
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec

FEATURES = ["demand_gw", "temperature_c", "workday"]


def meta(input_steps: int = 12, horizon: int = 4) -> Prepared:
    return Prepared(
        features=FEATURES, target="demand_gw", target_index=0, mean=[5.0, 20.0, 0.5], std=[1.0, 5.0, 0.5],
        split=Split(100, 120, 140), start="2014-01-01", frequency="30min", input_steps=input_steps, horizon=horizon,
    )  # fmt: skip


@pytest.fixture(scope="module")
def artifact() -> torch.jit.ScriptModule:
    """Scripted as export does it, saved and loaded back: what a server gets."""
    torch.manual_seed(0)
    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=8, num_layers=1, dropout=0.0, horizon=4)).eval()
    buffer = io.BytesIO()
    torch.jit.save(script(core, meta()), buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def refusal(model: torch.jit.ScriptModule, x: torch.Tensor) -> str:
    with pytest.raises(torch.jit.Error) as caught:
        model(x)
    return str(caught.value).strip().splitlines()[-1]  # TorchScript puts its traceback first


def test_interface_is_readable_as_plain_attributes(artifact):
    assert artifact.features == FEATURES
    assert artifact.target == "demand_gw"
    assert artifact.input_steps == 12
    assert artifact.horizon == 4


def test_a_window_of_the_trained_length_or_longer_is_forecast(artifact):
    for steps in (12, 30):
        assert artifact(torch.randn(2, steps, 3)).shape == (2, 4)
    assert artifact(torch.randn(1, 12, 3, dtype=torch.float64)).dtype == torch.float32


def test_wrong_feature_count_names_the_expected_features(artifact):
    assert refusal(artifact, torch.randn(1, 12, 1)).endswith(
        "expected 3 features (demand_gw, temperature_c, workday), got 1"
    )


def test_short_history_names_the_trained_length(artifact):
    assert refusal(artifact, torch.randn(1, 5, 3)).endswith(
        "history of 5 steps is shorter than the 12 the model was trained on"
    )


def test_two_dimensional_input_is_refused_with_its_shape(artifact):
    assert refusal(artifact, torch.randn(12, 3)).endswith(
        "expected a 3-d input (windows x steps x features), got 2 dimension(s) of shape [12, 3]"
    )


def test_integer_input_is_refused(artifact):
    assert refusal(artifact, torch.zeros(1, 12, 3, dtype=torch.long)).endswith("expected float values (float32), "
                                                                               "got an integer or boolean tensor")


def test_empty_batch_is_refused(artifact):
    assert refusal(artifact, torch.zeros(0, 12, 3)).endswith("expected at least one window, got 0")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_name_the_first_bad_window(artifact, bad):
    x = torch.randn(3, 12, 3)
    x[1, 7, 2] = bad
    x[2, 0, 0] = bad
    assert refusal(artifact, x).endswith("input contains NaN or infinite values at window 1")


def test_check_is_callable_alone_so_a_server_can_validate_before_batching(artifact):
    artifact.check(torch.randn(1, 12, 3))
    with pytest.raises(torch.jit.Error, match="shorter than the 12"):
        artifact.check(torch.randn(1, 2, 3))


def test_attributes_and_checks_work_without_lstmops(artifact, tmp_path: Path):
    torch.jit.save(artifact, str(tmp_path / "model.ts"))
    code = (
        "import sys; sys.modules['lstmops'] = None\n"
        "import torch\n"
        "m = torch.jit.load('model.ts')\n"
        "print(m.features, m.target, m.input_steps, m.horizon)\n"
        "try:\n    m(torch.randn(1, 3, 3))\nexcept torch.jit.Error as e:\n    print(str(e).strip().splitlines()[-1])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "['demand_gw', 'temperature_c', 'workday'] demand_gw 12 4"
    assert lines[1] == "builtins.ValueError: history of 3 steps is shorter than the 12 the model was trained on"
