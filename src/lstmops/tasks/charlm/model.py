"""The character language model: embedding -> stacked ``nn.LSTM`` -> dropout -> linear head over
the vocabulary, one prediction of the next character per input character.

Two ways to run the same parameters. On CUDA, in evaluation, and whenever no gradient is
wanted, ``nn.LSTM`` runs (cuDNN on a GPU). Training on CPU takes the fast path instead
(``recurrence.py``), about twice oneDNN's speed on two cores: the first layer's input gates are
gathered from a table ``embedding @ W_ih0^T + biases`` (one column per character: the same
numbers as embedding then projecting, for a fraction of the work; autograd carries the table's
gradient back to the embedding and W_ih0), upper layers' input gates are one batched product,
and the recurrence runs in a hand-written autograd Function. Both paths give the same loss
and gradients to float rounding, and the parameters keep ``nn.LSTM``'s names and layout, so a
checkpoint is a plain state_dict either way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from lstmops.layers import open_forget_gates
from lstmops.tasks.charlm.recurrence import Workspace, lstm_dense, lstm_tokens

State = tuple[Tensor, Tensor]  # (h, c), each [num_layers, batch, hidden] as nn.LSTM has them


@dataclass(frozen=True)
class CharLMSpec:
    """Everything needed to rebuild the network from a checkpoint."""

    vocab_size: int
    embedding_size: int
    hidden_size: int
    num_layers: int
    dropout: float

    def to_dict(self) -> dict:
        return asdict(self)


def dropout_mask(shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
    """Inverted-dropout factors (0 or 1/(1-p)) for a ``[batch, steps, hidden]`` output. The fast
    path and ``nn.LSTM``'s path draw the mask before the head this way from the same random
    state, so with dropout on they still compare (``nn.LSTM`` draws its own between layers)."""
    keep = 1.0 - p
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(keep).div_(keep)


class CharLM(nn.Module):
    """``tokens [batch, steps]`` (ids) and an optional state -> ``logits [batch, steps, vocab]``
    (the next character after each position) and the state after the last step.

    ``fast`` (default on) lets CPU training take the fast path; set it off to train through
    ``nn.LSTM`` (for comparisons).
    """

    def __init__(self, spec: CharLMSpec) -> None:
        super().__init__()
        self.spec = spec
        self.embedding = nn.Embedding(spec.vocab_size, spec.embedding_size)
        self.lstm = nn.LSTM(
            input_size=spec.embedding_size,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(spec.hidden_size, spec.vocab_size)
        self.fast = True
        self._workspace = Workspace()  # the fast path's reusable buffers (not part of the state_dict)
        open_forget_gates(self.lstm)  # as the forecaster: the cell remembers by default

    def train(self, mode: bool = True) -> CharLM:
        """Leaving training also lets go of the fast path's idle buffers (~100 MB per layer at
        256 streams of 100 characters); the next training step takes new ones."""
        if not mode:
            self._workspace.clear()
        return super().train(mode)

    def uses_fast_path(self, tokens: Tensor) -> bool:
        """CPU training with gradients (the fast path's only job), float32/64, no autocast."""
        return (
            self.fast
            and self.training
            and torch.is_grad_enabled()
            and tokens.device.type == "cpu"
            and self.head.weight.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu")
        )

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if not torch.jit.is_scripting() and self.uses_fast_path(tokens):
            return self._forward_fast(tokens, state)
        return self._forward_lstm(tokens, state)

    def _forward_lstm(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State]:
        out, (h, c) = self.lstm(self.embedding(tokens), state)
        if self.training and self.spec.dropout > 0:
            out = out * dropout_mask(tuple(out.shape), self.spec.dropout, out)
        return self.head(out), (h, c)

    def _forward_fast(self, tokens: Tensor, state: State | None) -> tuple[Tensor, State]:
        batch, steps = tokens.shape
        lstm, hidden, p = self.lstm, self.lstm.hidden_size, self.spec.dropout
        weight = self.head.weight
        if state is None:
            zeros = weight.new_zeros(lstm.num_layers, batch, hidden)
            state = (zeros, zeros)
        h0, c0 = state
        ids = tokens.t().contiguous()  # [steps, batch]: a step's ids are one row
        h_n, c_n, x = [], [], None
        for layer in range(lstm.num_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            if layer == 0:
                table = torch.addmm(bias, self.embedding.weight, w_ih.t())  # [vocab, 4 hidden]
                hs, c_last = lstm_tokens(ids, table, w_hh, h0[layer], c0[layer], self._workspace)
            else:
                hs, c_last = lstm_dense(x, w_ih, bias, w_hh, h0[layer], c0[layer], self._workspace)
            h_n.append(hs[:, -1])
            c_n.append(c_last)
            x = hs  # [batch, steps, hidden]
            if p > 0:  # between layers (as nn.LSTM) and before the head
                x = x * dropout_mask((batch, steps, hidden), p, x)
        logits = torch.addmm(self.head.bias, x.reshape(batch * steps, hidden), weight.t())
        return logits.view(batch, steps, -1), (torch.stack(h_n), torch.stack(c_n))
