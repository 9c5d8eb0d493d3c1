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
import math
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


# PyTorch's code for an LSTM in its oneDNN RNN op (ideep::rnn_kind::LSTM).
MKLDNN_LSTM = 2


class Bf16Forecaster(nn.Module):
    """The forward pass of lstmops' ``ScaledForecaster`` with the LSTM in bfloat16, calling
    oneDNN's LSTM layer op (``aten::mkldnn_rnn_layer``, what ``nn.LSTM`` runs in bf16) directly.

    ``nn.LSTM`` around the same op costs a few percent more per window: it converts the weights
    and sums the biases on every call, and transposes the batch-first input and the whole output
    sequence, of which a forecast needs only the last state. Here the weights are converted once,
    the biases are summed once in float32 (more exact than the bf16 ones ``nn.LSTM.to(bf16)``
    adds), the input is made time-major once (3 features: cheap), and the output sequence is
    read only as the next layer's input, in the layout oneDNN wrote it."""

    def __init__(self, exported, cell: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        core, lstm = exported.core, exported.core.lstm
        if lstm.mode != "LSTM" or lstm.bidirectional or lstm.proj_size or not lstm.batch_first:
            raise ValueError("only a unidirectional batch-first LSTM without projections")
        self.exported = exported  # its input checks, for input the quick test below does not pass
        self.hidden, self.cell = int(lstm.hidden_size), cell
        self.layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for k in range(int(lstm.num_layers)):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}").detach(), getattr(lstm, f"weight_hh_l{k}").detach()
            bias = torch.zeros(w_ih.shape[0])
            if lstm.bias:
                bias = (getattr(lstm, f"bias_ih_l{k}").detach() + getattr(lstm, f"bias_hh_l{k}").detach()).float()
            self.layers.append((w_ih.to(torch.bfloat16).contiguous(), w_hh.to(torch.bfloat16).contiguous(), bias.contiguous()))
        self.head_w = core.head.weight.detach().float().t().contiguous()
        self.head_b = core.head.bias.detach().float().clone()
        self.mean, self.std = exported.mean.detach().float().clone(), exported.std.detach().float().clone()
        self.seasonal = core.seasonal.detach().float().t().contiguous()
        self.period, self.target = int(core.period), int(exported.target_index)
        self.n_features, self.input_steps = len(exported.features), int(exported.input_steps)

    def plainly_valid(self, x: torch.Tensor) -> bool:
        """Input the file's check would pass, told for a tenth of its cost: the sum of the
        windows is finite only if every value is (a sum that overflows sends the batch to the
        file's check, which passes it)."""
        return (
            x.dim() == 3 and x.dtype == torch.float32 and x.shape[0] > 0 and x.shape[2] == self.n_features
            and x.shape[1] >= self.input_steps and math.isfinite(float(x.sum()))
        )  # fmt: skip

    def last_state(self, seq: torch.Tensor) -> torch.Tensor:
        """(steps, batch, features) bf16 -> (batch, hidden) float32: the top layer's last state."""
        batch = seq.shape[1]
        h = seq.new_zeros(1, batch, self.hidden)
        for w_ih, w_hh, bias in self.layers:
            h, c = seq.new_zeros(1, batch, self.hidden), torch.zeros(1, batch, self.hidden, dtype=self.cell)
            seq, h, _, _ = torch.ops.aten.mkldnn_rnn_layer(
                seq, w_ih, w_hh, bias, torch.zeros_like(bias), h, c, False, [], MKLDNN_LSTM, self.hidden, 1, True, False, False, False
            )  # fmt: skip
        return h[0].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plainly_valid(x):
            self.exported.check(x)  # raises with the file's own message
            x = x.to(torch.float32)
        batch, steps, features = x.shape
        # (x - mean) / std as one multiply-add over rows of steps x features: broadcasting over
        # a last dimension of 3 is ten times slower.
        scaled = torch.addcmul((-self.mean / self.std).repeat(steps), x.reshape(batch, -1), (1 / self.std).repeat(steps))
        scaled = scaled.view(batch, steps, features)
        forecast = torch.addmm(self.head_b, self.last_state(scaled.transpose(0, 1).contiguous().to(torch.bfloat16)), self.head_w)
        if self.period > 0:  # the target one period before each forecast step (model.lags)
            start = steps - self.period
            forecast = torch.addmm(forecast, scaled[:, start : start + self.seasonal.shape[0], self.target], self.seasonal)
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
