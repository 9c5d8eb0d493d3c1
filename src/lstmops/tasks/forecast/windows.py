"""Windows as views into the scaled series.

A sample is identified by its forecast origin ``t``: the input is rows ``[t - L, t)`` (all
features) and the target is rows ``[t, t + H)`` of the target column. Batches are gathered by
index, so only one batch of windows ever exists in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

import numpy as np

from lstmops.data.split import Split

if TYPE_CHECKING:
    import torch

Part = Literal["train", "val", "test"]


def origins(
    split: Split, part: Part, input_steps: int, horizon: int,
    segments: Sequence[Sequence[int]] | None = None, history: int | None = None,
) -> np.ndarray:  # fmt: skip
    """Forecast origins whose whole target lies in ``part``; inputs may reach back into earlier spans.

    ``history``: rows an origin needs before it (default ``input_steps``; sequence-mode training
    needs its burn-in). ``segments``: [start, end) row ranges of a series cut at gaps; an origin
    is kept only if its history and its target lie in one segment, so no window crosses a gap."""
    history = history or input_steps
    first, last = {
        "train": (history, split.train_end - horizon),
        "val": (max(split.train_end, history), split.val_end - horizon),
        "test": (max(split.val_end, history), split.length - horizon),
    }[part]
    found = np.arange(first, last + 1, dtype=np.int64)
    if segments is None:
        return found
    return found[segment_of(found - history, segments) == segment_of(found + horizon - 1, segments)]


def segment_of(rows: np.ndarray, segments: Sequence[Sequence[int]]) -> np.ndarray:
    """Index of the segment holding each row (segments are sorted, adjacent [start, end) ranges)."""
    starts = np.asarray([start for start, _ in segments], dtype=np.int64)
    return np.searchsorted(starts, rows, side="right") - 1


def history_available(at: np.ndarray, segments: Sequence[Sequence[int]] | None) -> np.ndarray:
    """Rows of history before each origin within its segment (the whole series without segments)."""
    if segments is None:
        return at.copy()
    starts = np.asarray([start for start, _ in segments], dtype=np.int64)
    return at - starts[segment_of(at, segments)]


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


def span_chunks(n_origins: int, positions: int, phase: int) -> list[tuple[int, int]]:
    """Cut ``n_origins`` consecutive origins into chunks of at most ``positions``: (first index,
    length). The first chunk has ``phase`` origins (if phase > 0), so every origin is in exactly
    one chunk, and a random phase per epoch moves the chunk boundaries."""
    cuts = [0, *range(phase or positions, n_origins, positions), n_origins]
    return [(a, b - a) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def run_chunks(origin_rows: np.ndarray, positions: int, phase: int) -> list[tuple[int, int]]:
    """``span_chunks`` within each run of consecutive origins: a span's positions never step over
    a gap between segments. One run (a series without gaps) gives exactly ``span_chunks``."""
    cuts = (np.flatnonzero(np.diff(origin_rows) != 1) + 1).tolist()
    bounds = [0, *cuts, len(origin_rows)]
    return [(a + first, n) for a, b in pairwise(bounds) for first, n in span_chunks(b - a, positions, phase)]


def gather_spans(
    series: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor,
    positions: int, burn_in: int, horizon: int, target_index: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Spans for sequence training. For a chunk whose first origin is ``s``:

    - input rows ``[s - burn_in, s + positions - 1)``: after consuming the first ``burn_in``
      rows the LSTM state forecasts origin ``s``, after one more row origin ``s + 1``, ...;
    - targets (positions, horizon): the target rows of each of those origins;
    - mask (positions,): True for the chunk's own origins (a short chunk is padded; the LSTM is
      causal, so padding never reaches the forecasts that count, and its loss is masked out).
    """
    import torch

    device, last = series.device, len(series) - 1
    steps = torch.arange(-burn_in, positions - 1, device=device)
    pos = torch.arange(positions, device=device)
    x = series[(starts[:, None] + steps).clamp(max=last)]
    rows = starts[:, None, None] + pos[None, :, None] + torch.arange(horizon, device=device)
    y = series[rows.clamp(max=last), target_index]
    mask = pos[None, :] < lengths[:, None]
    return x, y, mask
