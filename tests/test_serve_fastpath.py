"""The bf16 fast path (LSTMOPS_PRECISION=bf16): built from the exported file's own weights, it
answers what the file answers to within a few hundredths of the target's scale (far under any
model's own error; benchmarks/forward_cost.py judges it by test RMSE), with and without
the seasonal skip, for any history length and whether a batch runs in one span of steps or
several; it refuses what the file refuses, with the file's message; and anything it does not
recognise (an old artifact, a classifier, fp32, a network that computes something else) keeps
the file's own forward pass."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from lstmops.errors import LstmopsError
from lstmops.serve.app import create_app
from lstmops.serve import fastpath
from lstmops.serve.fastpath import Bf16Forecaster, accelerate, bf16_supported
from lstmops.serve.loader import InputError, load_torchscript
from lstmops.serve.server import build
from lstmops.serve.settings import Settings
from lstmops.tasks.forecast.export import script
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec
from lstmops.tasks.forecast.prepare import Prepared, Split

from .serve_support import FEATURES, MEAN, STD, expected, tiny_model, windows
from .test_classify_serve import tiny_classifier

pytestmark = pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")

CLOSE = 3e-2  # of the target's standard deviation, worst element: bf16 LSTM, float32 everywhere else


def seasonal_model(path: Path, skip: int = 12, input_steps: int = 24, horizon: int = 4) -> Path:
    """A small forecaster with the seasonal skip on and two layers, trained for a few steps so
    that its LSTM part matters."""
    torch.manual_seed(3)
    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=16, num_layers=2, dropout=0.0, horizon=horizon,
                                    seasonal_skip=skip))  # fmt: skip
    optimizer = torch.optim.Adam(core.parameters(), lr=0.01)
    x = torch.randn(64, input_steps, 3)
    for _ in range(20):
        optimizer.zero_grad()
        core(x).pow(2).mean().backward()
        optimizer.step()
    meta = Prepared(features=FEATURES, target="demand_gw", target_index=0, mean=MEAN, std=STD, split=Split(100, 120, 140),
                    start="2014-01-01", frequency="30min", input_steps=input_steps, horizon=horizon)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(script(core.eval(), meta), str(path))
    return path


@pytest.mark.parametrize("steps", [24, 31, 100])
def test_the_bf16_path_answers_what_the_file_answers(tmp_path, steps):
    path = seasonal_model(tmp_path / "m.ts")
    loaded = accelerate(load_torchscript(path, "v"), "bf16")
    assert isinstance(loaded.runner, Bf16Forecaster)
    x = windows(32, steps=steps)
    got = loaded.predict(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected(path, x), rtol=0, atol=CLOSE * STD[0])
    assert not np.array_equal(got, expected(path, x))  # it is the bf16 path that answered


def test_the_bf16_path_keeps_the_files_input_checks(tmp_path):
    loaded = accelerate(load_torchscript(tiny_model(tmp_path / "m.ts"), "v"), "bf16")
    with pytest.raises(InputError, match="history of 5 steps is shorter than the 12"):
        loaded.check(torch.from_numpy(windows(1, steps=5)))
    with pytest.raises(torch.jit.Error, match="NaN"):  # the forward pass checks the whole batch again
        loaded.predict(torch.full((1, 12, 3), float("nan")))


def test_a_long_batch_runs_in_spans_of_steps_with_the_same_answer(tmp_path, monkeypatch):
    path = seasonal_model(tmp_path / "m.ts")
    fast = accelerate(load_torchscript(path, "v"), "bf16").runner
    x = torch.from_numpy(windows(8, steps=100))
    with torch.inference_mode():
        whole = fast(x)
        monkeypatch.setattr(fastpath, "SPAN_BYTES", 8 * 16 * 2 * 7)  # 7 steps of 8 windows x 16 hidden in bf16
        spans = fast(x)
    # both layers' states carried across 15 spans: the same numbers as one span, bit for bit
    assert torch.equal(spans, whole)
    np.testing.assert_allclose(spans.numpy(), expected(path, x.numpy()), rtol=0, atol=CLOSE * STD[0])


def test_input_the_file_refuses_is_refused_with_its_message_and_other_input_answered(tmp_path):
    path = seasonal_model(tmp_path / "m.ts")
    fast = accelerate(load_torchscript(path, "v"), "bf16").runner
    x = windows(3, steps=24)
    x[1, 5, 2] = np.inf
    with torch.inference_mode():
        with pytest.raises(torch.jit.Error, match="NaN or infinite values at window 1"):
            fast(torch.from_numpy(x))
        with pytest.raises(torch.jit.Error, match="expected 3 features"):
            fast(torch.zeros(2, 24, 4))
        # float64, and values whose sum overflows: not plainly valid, but the file's check passes them
        doubles = torch.from_numpy(windows(3, steps=24)).double()
        np.testing.assert_allclose(fast(doubles).numpy(), expected(path, doubles.float().numpy()), rtol=0,
                                   atol=CLOSE * STD[0])  # fmt: skip
        huge = torch.full((2, 24, 3), 3e38)
        assert not fast.plainly_valid(huge)
        assert fast(huge).shape == (2, 4)


class OtherForecaster(LSTMForecaster):
    """The same parameters and attributes as the forecaster, but its head reads the mean of
    the LSTM's outputs, not the last: a network the fast path would misread."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out.mean(1))


def test_a_network_that_computes_something_else_keeps_the_files_own_forward(tmp_path):
    torch.manual_seed(0)
    core = OtherForecaster(ModelSpec(n_features=3, hidden_size=16, num_layers=1, dropout=0.0, horizon=4)).eval()
    meta = Prepared(features=FEATURES, target="demand_gw", target_index=0, mean=MEAN, std=STD, split=Split(100, 120, 140),
                    start="2014-01-01", frequency="30min", input_steps=24, horizon=4)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(script(core, meta), str(tmp_path / "other.ts"))
    loaded = load_torchscript(tmp_path / "other.ts", "other")
    Bf16Forecaster(loaded.module)  # it reads the layout without complaint: only the check tells
    assert accelerate(loaded, "bf16").runner is None


def test_fp32_a_classifier_or_an_old_artifact_keep_the_files_own_forward(tmp_path):
    from .test_serve_app import LegacyForecaster

    path = tiny_model(tmp_path / "m.ts")
    assert accelerate(load_torchscript(path, "v"), "fp32").runner is None
    classifier = load_torchscript(tiny_classifier(tmp_path / "c.ts"), "c")
    assert accelerate(classifier, "bf16") is classifier
    core = LSTMForecaster(ModelSpec(n_features=3, hidden_size=8, num_layers=1, dropout=0.0, horizon=4)).eval()
    torch.jit.script(LegacyForecaster(core, MEAN, STD)).save(str(tmp_path / "legacy.ts"))
    assert accelerate(load_torchscript(tmp_path / "legacy.ts", "old"), "bf16").runner is None


def test_the_server_in_bf16_answers_within_tolerance_and_a_bad_precision_is_refused(tmp_path):
    path = seasonal_model(tmp_path / "m.ts")
    x = windows(3, steps=24)
    server = build(Settings(model=str(path), host="127.0.0.1", threads=1, precision="bf16"))
    assert server.holder.current.runner is not None
    with TestClient(create_app(server)) as client:
        answer = client.post("/invocations", content=json.dumps({"inputs": x.tolist()}),
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert answer.status_code == 200
    np.testing.assert_allclose(answer.json()["predictions"], expected(path, x), rtol=0, atol=CLOSE * STD[0])
    with pytest.raises(LstmopsError, match="LSTMOPS_PRECISION='int4': expected fp32 or bf16"):
        build(Settings(model=str(path), precision="int4"))
