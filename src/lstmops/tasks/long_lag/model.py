"""The long-lag network and its deployable TorchScript form.

The network is ``torch.nn.LSTM`` (the modern LSTM: forget gates, Gers et al. 2000; no peepholes)
and a linear head applied after every step. The 1997 LSTM had no forget gate: its cells kept
their contents unless the input gate opened (the "constant error carousel"). The nearest modern
start is the chrono initialisation (Tallec & Ollivier 2018): forget-gate biases log(U(1, L - 1))
for a problem whose longest lag is L, input-gate biases their negatives, so at the start the
cells hold what they store for about as long as the problem needs, and noise does not overwrite
it. Without a known lag (``lag`` 0) the forget-gate bias is 1, as in the other tasks.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from lstmops.layers import open_forget_gates


@dataclass(frozen=True)
class LongLagSpec:
    """Everything needed to rebuild the network from a checkpoint."""

    n_inputs: int
    hidden_size: int
    num_layers: int
    n_outputs: int
    lag: int  # the problem's longest lag for the chrono initialisation; 0: forget-gate bias 1

    def to_dict(self) -> dict:
        return asdict(self)


def chrono_init(lstm: nn.LSTM, lag: int) -> None:
    """Forget-gate biases log(U(1, lag - 1)), input-gate biases their negatives (gate order i, f, g, o)."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if name.startswith("bias_ih"):
                forget = torch.log(torch.empty(hidden).uniform_(1.0, float(lag - 1)))
                param[hidden : 2 * hidden] = forget
                param[:hidden] = -forget
            elif name.startswith("bias_hh"):
                param[: 2 * hidden] = 0.0


class LongLagNet(nn.Module):
    """``x [batch, steps, inputs]`` -> raw outputs ``[batch, steps, outputs]`` after every step
    (a prediction, or logits)."""

    def __init__(self, spec: LongLagSpec) -> None:
        super().__init__()
        self.lstm = nn.LSTM(spec.n_inputs, spec.hidden_size, num_layers=spec.num_layers, batch_first=True)
        self.head = nn.Linear(spec.hidden_size, spec.n_outputs)
        if spec.lag > 2:
            chrono_init(self.lstm, spec.lag)
        else:
            open_forget_gates(self.lstm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out)


def task_outputs(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """What the problem's outputs mean: the prediction itself, or class probabilities."""
    return raw if kind == "regression" else torch.softmax(raw, dim=-1)


class LongLagArtifact(nn.Module):
    """The deployable model: ``forward(x)`` takes sequences ``[batch, steps, inputs]`` (float32,
    right-padded with zeros) and returns the outputs after every step, ``[batch, steps, outputs]``,
    in the problem's terms (the adding target, or probabilities); ``final(x, lengths)`` the outputs
    after each sequence's last step, ``[batch, outputs]``. The interface travels as attributes
    (``task``, ``source``, ``problem``, ``inputs``, ``outputs``, ``kind``, ``criterion``), readable
    after ``torch.jit.load`` without lstmops; input it was not trained for is refused in one line."""

    def __init__(self, core: LongLagNet, source: str, problem: str, inputs: list[str], outputs: list[str],
                 kind: str, criterion: str) -> None:  # fmt: skip
        super().__init__()
        self.core = core
        self.task = "long_lag"
        self.source, self.problem, self.kind, self.criterion = source, problem, kind, criterion
        self.inputs, self.outputs = list(inputs), list(outputs)

    @torch.jit.export
    def check(self, x: torch.Tensor) -> None:
        if x.dim() != 3:
            raise ValueError(f"expected a 3-d input (sequences x steps x inputs), got shape {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError("expected float values (float32)")
        if x.shape[2] != len(self.inputs):
            raise ValueError(f"expected {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {x.shape[2]}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError("expected at least one sequence of at least one step")
        finite = torch.isfinite(x).flatten(1).all(1)
        if not bool(finite.all()):
            raise ValueError(f"input contains NaN or infinite values in sequence {int(torch.nonzero(~finite)[0, 0])}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        raw = self.core(x.to(torch.float32))
        if self.kind == "regression":
            return raw
        return torch.softmax(raw, dim=-1)

    @torch.jit.export
    def final(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The outputs after step ``lengths[i] - 1`` of each sequence (padding after it is ignored:
        the LSTM reads forward only)."""
        if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
            raise ValueError(f"expected one length per sequence ({x.shape[0]}), got shape {list(lengths.shape)}")
        if bool((lengths < 1).any()) or bool((lengths > x.shape[1]).any()):
            raise ValueError(f"lengths must be within 1..{x.shape[1]}")
        every = self.forward(x)
        index = (lengths.to(torch.int64) - 1).view(-1, 1, 1).expand(-1, 1, every.shape[2])
        return every.gather(1, index).squeeze(1)


def script(artifact: LongLagArtifact) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which freezes an LSTM's sequence
        # length; these sequences vary in length, so TorchScript it is (as for the forecaster).
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(artifact.eval())
