"""A faster CPU forward pass for an exported forecaster: its LSTM in bfloat16 (``LSTMOPS_PRECISION=bf16``).

The exported TorchScript file already runs PyTorch's oneDNN LSTM kernel in float32; TorchScript,
``torch.jit.freeze`` and ``optimize_for_inference`` add nothing to it, dynamic int8 quantization
of an LSTM is several times slower on CPU, and a recurrence written out step by step (TorchScript
or eager) is three to five times slower: 336 steps of small operators (``benchmarks/forward_cost.py``
measures the first ones). What wins is the same kernel with bfloat16 weights on a CPU with native
bf16 (AVX512-BF16 or AMX), called directly rather than through ``nn.LSTM``: about 1.5x the file's
best per window, nearly all of it the LSTM op itself.

Only the LSTM runs in bf16. The scaling, the head, the seasonal skip and the unscaling stay in
float32, so the error stays small (about 1e-2 of the target's scale at worst, far under a model's
own error; the test RMSE moves by 0.01%), and input the file would refuse is refused by the file's
own check. The fast path is built from the file's own weights, and checked against the file on
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
# Most bytes of output sequence one call of the op writes. Past this (about batch 200 for the
# default model) the buffer goes back to the OS when freed and is faulted in page by page on the
# next call: 2,750 page faults and a quarter more time per window at batch 256.
SPAN_BYTES = 6 << 20


class Bf16Forecaster(nn.Module):
    """The forward pass of lstmops' ``ScaledForecaster`` with the LSTM in bfloat16, calling
    oneDNN's LSTM layer op (``aten::mkldnn_rnn_layer``, what ``nn.LSTM`` runs in bf16) directly.

    ``nn.LSTM`` around the same op costs 5 to 10% more per window: it converts the weights and
    sums the biases on every call and transposes the batch-first input and the whole output
    sequence, of which a forecast needs only the last state. Here the weights are converted once,
    the biases summed once in float32, the input made time-major once (3 features: cheap), and the
    output sequence is only the next layer's input. Long batches run in spans of steps, each
    layer's state carried from one span to the next: the same numbers bit for bit (the state
    stays bf16 inside the op too), without the page faults of one large output buffer."""

    def __init__(self, exported) -> None:
        super().__init__()
        core, lstm = exported.core, exported.core.lstm
        if lstm.mode != "LSTM" or lstm.bidirectional or lstm.proj_size or not lstm.batch_first:
            raise ValueError("only a unidirectional batch-first LSTM without projections")
        self.exported = exported  # its input checks, for input the quick test below does not pass
        self.hidden = int(lstm.hidden_size)
        self.layers = [self.layer_weights(lstm, k) for k in range(int(lstm.num_layers))]
        self.head_w = core.head.weight.detach().float().t().contiguous()
        self.head_b = core.head.bias.detach().float().clone()
        self.mean, self.std = exported.mean.detach().float().clone(), exported.std.detach().float().clone()
        self.seasonal = core.seasonal.detach().float().t().contiguous()
        self.period, self.target = int(core.period), int(exported.target_index)
        self.n_features, self.input_steps = len(exported.features), int(exported.input_steps)
        self.scaling = self.tiled_scaling(self.input_steps)

    @staticmethod
    def layer_weights(lstm, k: int) -> tuple[torch.Tensor, ...]:
        """Layer ``k``'s weights in bf16, its two biases summed in float32 (the op adds its
        fourth argument to the third), and that zero fourth."""
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}").detach(), getattr(lstm, f"weight_hh_l{k}").detach()
        bias = torch.zeros(w_ih.shape[0])
        if lstm.bias:
            bias = getattr(lstm, f"bias_ih_l{k}").detach().float() + getattr(lstm, f"bias_hh_l{k}").detach().float()
        bf16 = torch.bfloat16
        return w_ih.to(bf16).contiguous(), w_hh.to(bf16).contiguous(), bias.contiguous(), torch.zeros_like(bias)

    def tiled_scaling(self, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-mean/std and 1/std repeated over ``steps`` rows: scaling a window as one multiply-add
        over its steps x features values is ten times faster than broadcasting over 3 features."""
        return (-self.mean / self.std).repeat(steps), (1 / self.std).repeat(steps)

    def plainly_valid(self, x: torch.Tensor) -> bool:
        """Input the file's check would pass, told for a thirtieth of its cost: the sum of the
        windows is finite only if every value is (a sum that overflows sends the batch to the
        file's check, which passes it)."""
        return (
            x.dim() == 3 and x.dtype == torch.float32 and x.shape[0] > 0 and x.shape[2] == self.n_features
            and x.shape[1] >= self.input_steps and math.isfinite(float(x.sum()))
        )  # fmt: skip

    def last_state(self, seq: torch.Tensor) -> torch.Tensor:
        """(steps, batch, features) bf16 -> (batch, hidden) float32: the top layer's last state."""
        steps, batch = seq.shape[0], seq.shape[1]
        spans = math.ceil(steps * batch * self.hidden * 2 / SPAN_BYTES)
        span = math.ceil(steps / spans)
        zero = seq.new_zeros(1, batch, self.hidden)
        states = [(zero, zero)] * len(self.layers)
        for first in range(0, steps, span):
            part = seq[first : first + span]  # contiguous: a range of the outer dimension
            for k, (w_ih, w_hh, bias, no_bias) in enumerate(self.layers):
                h, c = states[k]
                # reverse, batch_sizes, mode, hidden, layers, biases, bidirectional, batch_first, train
                part, h, c, _ = torch.ops.aten.mkldnn_rnn_layer(
                    part, w_ih, w_hh, bias, no_bias, h, c,
                    False, [], MKLDNN_LSTM, self.hidden, 1, True, False, False, False,
                )  # fmt: skip
                states[k] = (h, c)
        return states[-1][0][0].float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.plainly_valid(x):
            self.exported.check(x)  # raises with the file's own message
            x = x.to(torch.float32)
        batch, steps, features = x.shape
        shift, scale = self.scaling if steps == self.input_steps else self.tiled_scaling(steps)
        scaled = torch.addcmul(shift, x.reshape(batch, -1), scale).view(batch, steps, features)
        state = self.last_state(scaled.transpose(0, 1).contiguous().to(torch.bfloat16))
        forecast = torch.addmm(self.head_b, state, self.head_w)
        if self.period > 0:  # the target one period before each forecast step (model.lags)
            start = steps - self.period
            lags = scaled[:, start : start + self.seasonal.shape[0], self.target]
            forecast = torch.addmm(forecast, lags, self.seasonal)
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
