"""The exported classifier: TorchScript that needs nothing but torch.

``model(x, lengths)`` takes a batch of zero-padded sequences in original units, ``x`` of shape
(sequences, steps, features) float32, and each one's number of real steps, ``lengths`` (int64,
one per sequence), and returns class probabilities (sequences, classes), each row summing to 1.
The scaling, the feature names (``features``), the class names (``classes``, in the columns'
order) and the length bounds the model was validated on (``min_length``, ``max_length``) travel
inside the file; ``task`` is ``"classify"``. Input it was not trained for is refused by
``check(x, lengths)`` with a message naming what is wrong, as the forecaster's file does: an LSTM
would otherwise answer something for a transposed or NaN-laden batch without a word. Padding
is never read (packed), so its values, even NaN, do not matter.

Export is refused unless the file, reloaded from disk, gives the eager model's probabilities on
the test sequences to ``TOLERANCE``.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lstmops.errors import LstmopsError
from lstmops.io import atomic_path, save_torchscript
from lstmops.tasks.classify.model import LSTMClassifier
from lstmops.tasks.base import TOLERANCE



class ClassifierArtifact(nn.Module):
    """Raw padded sequences and lengths in, class probabilities out: the deployable model.

    Attribute types are inferred by TorchScript from their values (``features``, ``classes``:
    List[str]; ``min_length``, ``max_length``: int); class-level annotations would be strings here
    (``from __future__ import annotations``), which the compiler cannot resolve.
    """

    def __init__(
        self, core: LSTMClassifier, mean: list[float], std: list[float], features: list[str], classes: list[str],
        min_length: int, max_length: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.core = copy.deepcopy(core).eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.features = list(features)
        self.classes = list(classes)
        self.min_length = int(min_length)
        self.max_length = int(max_length)
        self.task = "classify"
        if len(self.features) != len(mean) or len(self.classes) != core.head.out_features:
            raise ValueError("feature or class names do not match the model's sizes")

    @torch.jit.export
    def check(self, x: Tensor, lengths: Tensor) -> None:
        """Raise ValueError naming the first thing wrong with ``x`` (sequences x steps x features) and ``lengths``."""
        if x.dim() != 3:
            raise ValueError(
                f"expected a 3-d input (sequences x steps x features), got {x.dim()} dimension(s) of shape {list(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError("expected float values (float32), got an integer or boolean tensor")
        n = len(self.features)
        if x.shape[2] != n:
            raise ValueError(f"expected {n} features ({', '.join(self.features)}), got {x.shape[2]}")
        if x.shape[0] == 0:
            raise ValueError("expected at least one sequence, got 0")
        if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
            raise ValueError(f"expected one length per sequence ({x.shape[0]}), got lengths of shape {list(lengths.shape)}")
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError("lengths must be integers")
        longest = int(lengths.max())
        if longest > x.shape[1]:
            i = int(torch.argmax(lengths))
            raise ValueError(f"sequence {i} has length {longest}, more than the {x.shape[1]} steps sent")
        shortest = int(lengths.min())
        if shortest < self.min_length:
            i = int(torch.argmin(lengths))
            raise ValueError(
                f"sequence {i} has {shortest} step(s), fewer than the {self.min_length} the model was trained on"
            )
        if longest > self.max_length:
            i = int(torch.argmax(lengths))
            raise ValueError(f"sequence {i} has {longest} steps, more than the {self.max_length} the model was trained on")
        real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None].to(x.device)
        finite = (torch.isfinite(x) | ~real[:, :, None]).flatten(1).all(1)
        if not bool(finite.all()):
            first = int(torch.nonzero(~finite)[0, 0])
            raise ValueError(f"input contains NaN or infinite values in sequence {first}")

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        self.check(x, lengths)
        lengths = lengths.to(torch.int64)
        real = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None].to(x.device)
        # Padding is zeroed, though packing never reads it: a NaN there must not even be multiplied.
        scaled = (x.to(torch.float32) - self.mean) / self.std
        scaled = torch.where(real[:, :, None], scaled, torch.zeros_like(scaled))
        return torch.softmax(self.core(scaled, lengths), dim=1)


def script(model: LSTMClassifier, mean, std, features, classes, min_length: int, max_length: int) -> torch.jit.ScriptModule:
    wrapped = ClassifierArtifact(model, mean, std, features, classes, min_length, max_length).eval()
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which freezes an LSTM's sequence
        # length; TorchScript keeps any length and batch working, which serving needs.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(wrapped)


def eager_probabilities(model: LSTMClassifier, x: np.ndarray, lengths: np.ndarray, batch: int = 512) -> np.ndarray:
    """Class probabilities of already scaled, padded sequences from the eager model."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(lengths), batch):
            part = slice(start, start + batch)
            longest = int(lengths[part].max())
            logits = model(torch.from_numpy(x[part, :longest]), torch.from_numpy(lengths[part]))
            out.append(torch.softmax(logits.float(), dim=1).numpy())
    return np.concatenate(out)


def export(
    scripted: torch.jit.ScriptModule, eager: np.ndarray, raw_x: np.ndarray, lengths: np.ndarray, out: Path
) -> dict:
    """Save atomically, reload from disk, and compare its probabilities on the raw test sequences
    with the eager model's (``eager``); refuse the file if they differ by more than ``TOLERANCE``."""
    if len(lengths) == 0:
        raise LstmopsError("export: no test sequences to check the TorchScript file on")
    with atomic_path(out) as tmp:
        save_torchscript(scripted, tmp)
        reloaded = torch.jit.load(str(tmp))
        with torch.no_grad():
            served = reloaded(torch.from_numpy(raw_x), torch.from_numpy(lengths)).numpy()
        max_abs_diff = float(np.max(np.abs(served - eager)))
        if not max_abs_diff <= TOLERANCE:
            raise LstmopsError(
                f"export: TorchScript differs from the eager model by {max_abs_diff:.3g} > {TOLERANCE} (probability)"
            )
    return {"max_abs_diff": max_abs_diff, "checked_sequences": int(len(lengths))}
