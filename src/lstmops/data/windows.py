"""Windows as views into the scaled series.

A sample is identified by its forecast origin ``t``: the input is rows ``[t - L, t)`` (all
features) and the target is rows ``[t, t + H)`` of the target column. Batches are gathered by
index, so only one batch of windows ever exists in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from lstmops.data.prepare import Split

if TYPE_CHECKING:
    import torch

Part = Literal["train", "val", "test"]


def origins(split: Split, part: Part, input_steps: int, horizon: int) -> np.ndarray:
    """Forecast origins whose whole target lies in ``part``; inputs may reach back into earlier spans."""
    first, last = {
        "train": (input_steps, split.train_end - horizon),
        "val": (max(split.train_end, input_steps), split.val_end - horizon),
        "test": (max(split.val_end, input_steps), split.length - horizon),
    }[part]
    return np.arange(first, last + 1, dtype=np.int64)


def window_view(series: np.ndarray, input_steps: int) -> np.ndarray:
    """All input windows as a (windows, input_steps, features) view sharing ``series``'s memory.
    Window ``i`` is the input of origin ``i + input_steps``."""
    return np.lib.stride_tricks.sliding_window_view(series, input_steps, axis=0).transpose(0, 2, 1)


def gather(
    series: torch.Tensor, batch_origins: torch.Tensor, input_steps: int, horizon: int, target_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, L, F) and targets (B, H) for a batch of origins, built by one index each."""
    import torch

    offsets_in = torch.arange(-input_steps, 0, device=series.device)
    offsets_out = torch.arange(0, horizon, device=series.device)
    x = series[batch_origins[:, None] + offsets_in]
    y = series[batch_origins[:, None] + offsets_out, target_index]
    return x, y
