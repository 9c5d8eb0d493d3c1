"""The sequence classifier: a packed ``nn.LSTM`` over each sequence's own steps and a linear head
from its final state to the class logits.

Variable lengths are handled by packing (``pack_padded_sequence``), never by truncation: the LSTM
reads each sequence's real steps only, so padding never reaches the state, and a sequence gives
the same logits alone or padded in a batch with longer ones. Bidirectionally, the backward
direction starts at each sequence's own last step (a padded, unpacked pass would start it on the
padding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstmops.layers import open_forget_gates


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to rebuild the network from a checkpoint."""

    n_features: int
    n_classes: int
    hidden_size: int
    num_layers: int
    dropout: float
    bidirectional: bool

    def to_dict(self) -> dict:
        return asdict(self)


class LSTMClassifier(nn.Module):
    """(batch, steps, features) scaled, zero-padded sequences and their lengths -> (batch, classes) logits."""

    def __init__(self, spec: ClassifierSpec) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_size=spec.n_features, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0, batch_first=True, bidirectional=spec.bidirectional,
        )  # fmt: skip
        self.directions = 2 if spec.bidirectional else 1
        self.drop = nn.Dropout(spec.dropout)
        self.head = nn.Linear(spec.hidden_size * self.directions, spec.n_classes)
        open_forget_gates(self.lstm)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # pack_padded_sequence wants the lengths on the CPU; enforce_sorted=False keeps the
        # batch's order (the returned state is in input order too).
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        # The last layer's final state, each direction at its sequence's own end.
        last = h[-1] if self.directions == 1 else torch.cat([h[-2], h[-1]], dim=1)
        return self.head(self.drop(last))
