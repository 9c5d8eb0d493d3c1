"""What every task's LSTM shares at initialisation."""

from __future__ import annotations

import torch
from torch import nn


def open_forget_gates(lstm: nn.LSTM) -> None:
    """Start with forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015): the cell
    remembers by default, so gradients reach far-back steps from the first update."""
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, param in lstm.named_parameters():
            if name.startswith("bias_ih"):  # gate order: input, forget, cell, output
                param[hidden : 2 * hidden].fill_(1.0)
            elif name.startswith("bias_hh"):
                param[hidden : 2 * hidden].fill_(0.0)
