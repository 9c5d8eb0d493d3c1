"""Export: a TorchScript file that takes raw feature windows and returns forecasts in original units.

The file is checked against the eager model on the test windows before it is kept: the
largest absolute difference is recorded, and an export that disagrees is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lstmops.tasks.forecast.prepare import Prepared
from lstmops.tasks.forecast.windows import origins, window_view
from lstmops.errors import LstmopsError
from lstmops.tasks.forecast.evaluate import predict_scaled
from lstmops.io import atomic_path, save_torchscript
from lstmops.tasks.forecast.model import LSTMForecaster, ScaledForecaster
from lstmops.tasks.base import TOLERANCE



def script(model: LSTMForecaster, meta: Prepared) -> torch.jit.ScriptModule:
    wrapped = ScaledForecaster(
        model, meta.mean, meta.std, meta.target_index, features=meta.features, input_steps=meta.input_steps
    ).eval()
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which freezes an LSTM's sequence
        # length; TorchScript keeps any history length working, which serving needs.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(wrapped)


def raw_windows(series: np.ndarray, meta: Prepared, test_origins: np.ndarray) -> np.ndarray:
    """Unscaled input windows for the given origins (float32), as a server would receive them."""
    raw = series.astype(np.float64) * np.asarray(meta.std) + np.asarray(meta.mean)
    view = window_view(raw, meta.input_steps)
    return np.ascontiguousarray(view[test_origins - meta.input_steps], dtype=np.float32)


def export(model: LSTMForecaster, meta: Prepared, series: np.ndarray, out: Path) -> dict[str, float]:
    """Script, save, reload from disk and compare with the eager model on the test windows."""
    scripted = script(model, meta)
    with atomic_path(out) as tmp:
        save_torchscript(scripted, tmp)
        reloaded = torch.jit.load(str(tmp))
        test_origins = origins(meta.split, "test", meta.input_steps, meta.horizon, meta.segments)
        ti = meta.target_index
        eager = predict_scaled(model, series, test_origins, meta) * meta.std[ti] + meta.mean[ti]
        with torch.no_grad():
            served = reloaded(torch.from_numpy(raw_windows(series, meta, test_origins))).numpy()
        max_abs_diff = float(np.max(np.abs(served - eager)))
        if not max_abs_diff <= TOLERANCE:
            raise LstmopsError(f"export: TorchScript differs from the eager model by {max_abs_diff:.3g} > {TOLERANCE}")
    return {"max_abs_diff": max_abs_diff, "checked_windows": len(test_origins)}
