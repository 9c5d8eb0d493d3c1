"""The forecaster: a stacked ``torch.nn.LSTM`` and a linear head from its last state to the horizon,
plus the deployable wrapper that puts the scaling inside the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lstmops.layers import open_forget_gates


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network from a checkpoint."""

    n_features: int
    hidden_size: int
    num_layers: int
    dropout: float
    horizon: int
    # The seasonal skip (``model.seasonal_skip``): the head also reads the target one period
    # before each forecast step; 0: off. Checkpoints written before it have neither field.
    seasonal_skip: int = 0
    target_index: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class LSTMForecaster(nn.Module):
    """(batch, steps, features) scaled history -> (batch, horizon) scaled target forecast.

    Any history length works; the head reads the LSTM state after the last step.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=spec.n_features,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(spec.hidden_size, spec.horizon)
        # A long lag is what an LSTM learns worst: on half-hourly load it barely uses the values a
        # week back, though the weekly seasonal-naive forecast is the strongest baseline. The skip
        # hands the head those values (the target ``period`` steps before each forecast step),
        # through a linear map that starts as the identity: training starts from the seasonal-
        # naive forecast and the LSTM learns the correction.
        # (A plain parameter, not an nn.Linear: creating one would draw from the seed's random
        # stream and change every later draw, so runs without the skip would no longer repeat.)
        self.period, self.target_index = spec.seasonal_skip, spec.target_index
        start = torch.eye(spec.horizon) if self.period > 0 else torch.zeros(spec.horizon, spec.horizon)
        self.seasonal = nn.Parameter(start, requires_grad=self.period > 0)
        open_forget_gates(self.lstm)

    def lags(self, x: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """(batch, count, horizon): for the forecasts after rows ``first .. first + count - 1``,
        the target ``period`` steps before each of their horizon steps (all inside ``x``)."""
        horizon = self.seasonal.shape[0]
        start = first + 1 - self.period
        return x[:, start : start + count + horizon - 1, self.target_index].unfold(1, horizon, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        forecast = self.head(out[:, -1])
        if self.period > 0:
            forecast = forecast + self.lags(x, x.shape[1] - 1, 1)[:, 0] @ self.seasonal.T
        return forecast

    def forward_all(self, x: torch.Tensor, skip: int = 0, grad_through_skip: bool = True) -> torch.Tensor:
        """(batch, steps, features) -> (batch, steps - skip, horizon): a forecast after every
        step from step ``skip`` on (the forecast after consuming rows ``[0, skip]``).

        Sequence training reads these after a burn-in: one pass over a span yields a training
        window per position instead of rerunning the LSTM for each window. Without
        ``grad_through_skip`` the first ``skip`` rows only set the starting state (no graph is
        kept for them), as in classic truncated backpropagation through time.
        """
        if grad_through_skip or skip == 0:
            out, _ = self.lstm(x)
            out = out[:, skip:]
        else:
            with torch.no_grad():
                _, state = self.lstm(x[:, :skip])
            out, _ = self.lstm(x[:, skip:], state)
        forecast = self.head(out)
        if self.period > 0:
            forecast = forecast + self.lags(x, skip, x.shape[1] - skip) @ self.seasonal.T
        return forecast


class ScaledForecaster(nn.Module):
    """Raw feature windows in, forecasts in original units out: the deployable model.

    Scaling statistics are buffers, so they travel inside the TorchScript file and a server
    needs nothing but the file. The interface (feature names, target, minimum history, horizon)
    travels as plain attributes, readable after ``torch.jit.load`` without lstmops, and the
    model refuses input it was not trained for with a message naming what is wrong: an LSTM
    would otherwise answer garbage for a short, transposed or NaN-laden window without a word.

    TorchScript infers the attributes' types from their values (``features``: List[str],
    ``target``: str, ``input_steps`` and ``horizon``: int); class-level annotations would be
    strings here (``from __future__ import annotations``), which the compiler cannot resolve.
    """

    def __init__(
        self,
        core: LSTMForecaster,
        mean: list[float],
        std: list[float],
        target_index: int,
        features: list[str] | None = None,
        input_steps: int = 1,
    ) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.target_index = target_index
        self.features = list(features) if features is not None else [f"feature_{i}" for i in range(len(mean))]
        if len(self.features) != len(mean):
            raise ValueError(f"{len(self.features)} feature names for {len(mean)} scaled features")
        self.target = self.features[target_index]
        self.input_steps = input_steps
        self.horizon = core.head.out_features

    @torch.jit.export
    def check(self, x: torch.Tensor) -> None:
        """Raise ValueError naming the first thing wrong with ``x`` (windows x steps x features)."""
        if x.dim() != 3:
            raise ValueError(
                f"expected a 3-d input (windows x steps x features), got {x.dim()} dimension(s) of shape {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError("expected float values (float32), got an integer or boolean tensor")
        n = len(self.features)
        if x.shape[2] != n:
            raise ValueError(f"expected {n} features ({', '.join(self.features)}), got {x.shape[2]}")
        if x.shape[0] == 0:
            raise ValueError("expected at least one window, got 0")
        if x.shape[1] < self.input_steps:
            raise ValueError(
                f"history of {x.shape[1]} steps is shorter than the {self.input_steps} the model was trained on"
            )
        finite = torch.isfinite(x).flatten(1).all(1)
        if not bool(finite.all()):
            first = int(torch.nonzero(~finite)[0, 0])
            raise ValueError(f"input contains NaN or infinite values at window {first}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        scaled = (x.to(torch.float32) - self.mean) / self.std
        forecast = self.core(scaled)
        return forecast * self.std[self.target_index] + self.mean[self.target_index]
