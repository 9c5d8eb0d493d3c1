"""A faster CPU forward pass for an exported forecaster: its LSTM in bfloat16 (``LSTMOPS_PRECISION=bf16``).

The exported TorchScript file already runs PyTorch's oneDNN LSTM kernel in float32; TorchScript,
``torch.jit.freeze`` and ``optimize_for_inference`` add nothing to it, and dynamic int8
quantization of an LSTM is several times slower on CPU (``benchmarks/forward_cost.py`` measures
each). What wins is the same kernel with bfloat16 weights on a CPU with native bf16 (AVX512-BF16
or AMX): the recurrence is memory- and latency-bound, and half-width weights shorten it.

Only the LSTM runs in bf16. The scaling, the head, the seasonal skip and the unscaling stay in
float32, so the error stays small (about 1e-2 of the target's scale at worst, far under a model's
own error), and the input checks are the file's own. The fast path is built from the file's own weights, and checked against the file on
synthetic windows before it serves; any file it does not recognise, or a mismatch, keeps the
file's own forward pass. It is opt-in: the release gate scored the file in float32.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from lstmops.serve.loader import Loaded, LoadedClassifier

PRECISIONS = ("fp32", "bf16")
# Worst element on the check windows, in units of the target's standard deviation. bf16 rounding
# gives about 1e-2; a file whose layout the fast path misreads gives errors of order 1.
TOLERANCE = 5e-2

log = logging.getLogger("lstmops.serve")


def bf16_supported() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Bf16Forecaster(nn.Module):
    """The forward pass of lstmops' ``ScaledForecaster`` with the LSTM in bfloat16: reads the
    last hidden state (not the whole output sequence, which the original also computes)."""

    def __init__(self, exported) -> None:
        super().__init__()
        core, lstm = exported.core, exported.core.lstm
        if lstm.bidirectional or lstm.proj_size or not lstm.batch_first:
            raise ValueError("only a unidirectional batch-first LSTM without projections")
        self.exported = exported  # for its input checks
        self.lstm = nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, batch_first=True)
        self.lstm.load_state_dict({name: p.detach().clone() for name, p in lstm.named_parameters()})
        self.lstm.to(torch.bfloat16).eval()
        self.head = nn.Linear(core.head.in_features, core.head.out_features)
        self.head.load_state_dict({"weight": core.head.weight.detach().clone(), "bias": core.head.bias.detach().clone()})
        self.register_buffer("mean", exported.mean.detach().clone())
        self.register_buffer("std", exported.std.detach().clone())
        self.register_buffer("seasonal", core.seasonal.detach().clone())
        self.period, self.target = int(core.period), int(exported.target_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.exported.check(x)
        scaled = (x.to(torch.float32) - self.mean) / self.std
        _, (h, _) = self.lstm(scaled.to(torch.bfloat16))
        forecast = self.head(h[-1].to(torch.float32))
        if self.period > 0:  # the target one period before each forecast step (model.lags)
            start = x.shape[1] - self.period
            forecast = forecast + scaled[:, start : start + self.seasonal.shape[0], self.target] @ self.seasonal.T
        return forecast * self.std[self.target] + self.mean[self.target]


def check_windows(loaded: Loaded, n: int = 16) -> torch.Tensor:
    """Windows around the scaler's mean, of the model's input length: what it was trained on."""
    generator = torch.Generator().manual_seed(0)
    module = loaded.module
    return torch.randn(n, loaded.input_steps, len(loaded.features), generator=generator) * module.std + module.mean


def accelerate(loaded: Loaded | LoadedClassifier, precision: str) -> Loaded | LoadedClassifier:
    """The model with its fastest verified forward pass for ``precision``; the model unchanged
    for fp32, a classifier, a CPU without bf16, or a file the fast path does not match."""
    if precision == "fp32" or isinstance(loaded, LoadedClassifier):
        return loaded
    if not bf16_supported():
        log.warning("LSTMOPS_PRECISION=bf16: this CPU has no native bf16; serving in float32")
        return loaded
    try:
        fast = Bf16Forecaster(loaded.module).eval()
        x = check_windows(loaded)
        with torch.inference_mode():
            worst = float((fast(x) - loaded.module(x)).abs().max() / loaded.module.std[fast.target])
    except Exception as exc:  # not the file layout this path knows: the file's own forward serves
        log.warning("version %s: no bf16 fast path (%s: %s); serving in float32", loaded.version, type(exc).__name__, exc)
        return loaded
    if not worst <= TOLERANCE:
        log.warning("version %s: bf16 differs by %.2g target std on the check windows; serving in float32",
                    loaded.version, worst)  # fmt: skip
        return loaded
    return replace(loaded, runner=fast)
