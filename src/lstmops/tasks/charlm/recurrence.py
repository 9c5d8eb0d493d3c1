"""The LSTM recurrence for CPU training, written for speed on a few cores: an autograd Function
whose forward stores exactly what backward needs and whose backward runs two matrix products
per step, where oneDNN's LSTM (what ``nn.LSTM`` runs on CPU) spends most of a training step.

Math: ``nn.LSTM``'s, gate order (i, f, g, o). Layout: time-major. In the forward pass a step's
gates are ``[4, batch, hidden]`` (each gate a contiguous block, so every elementwise op is one
plain vectorized loop; the product with W_hh is a batch of four products, and a first layer's
input gates are a gather of contiguous rows from a per-token table). In the backward pass a
step's gate gradients are ``[batch, 4 hidden]``, so dh is one product with W_hh and the table
gradient a row scatter.

Where the time goes, and what is done about it:
- every big tensor of a call is reused from a ``Workspace``: a fresh 50 MB tensor costs more in
  page faults than the arithmetic done on it;
- tanh is computed as ``2 sigmoid(2x) - 1`` (PyTorch's CPU tanh is about twice its sigmoid):
  the cell-gate rows of the weights are doubled once per call, so one sigmoid covers all four
  gates, and the cell state is kept doubled so ``tanh(c)`` is one more sigmoid;
- the forward pass also computes the factors backward multiplies by (``X``, ``P`` below) while
  a step's values are in cache, so backward is two products and four cheap ops per step;
- weight and table gradients are accumulated per step, while the step's gradients are in cache.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

SCRIPT_LOOPS = os.environ.get('CHARLM_SCRIPT', '1') == '1'


class Workspace:
    """Big tensors kept between calls, keyed by shape and dtype. A tensor is taken for one call
    and given back when that call's backward is done; none is ever visible outside the call.
    Copies of a model (``deepcopy``, pickling) start with an empty workspace."""

    def __init__(self) -> None:
        self._free: dict[tuple, list[Tensor]] = {}

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        stack = self._free.get((shape, like.dtype, like.device))
        return stack.pop() if stack else torch.empty(shape, dtype=like.dtype, device=like.device)

    def give(self, *tensors: Tensor) -> None:
        for t in tensors:
            self._free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)

    def clear(self) -> None:
        self._free.clear()

    def __deepcopy__(self, memo: dict) -> Workspace:
        return Workspace()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._free = {}


def _cell_scale(hidden: int, like: Tensor) -> Tensor:
    """Per-gate-row factors (1, 1, 2, 1) as a [4 hidden, 1] column: doubling the cell gate's
    pre-activation lets one sigmoid give all four gates, since tanh(z) = 2 sigmoid(2z) - 1."""
    scale = torch.ones(4 * hidden, 1, dtype=like.dtype, device=like.device)
    scale[2 * hidden : 3 * hidden] = 2.0
    return scale


def _gate_major(w: Tensor, scale: Tensor) -> Tensor:
    """[4 hidden, in] weights -> [4, in, hidden], cell gate doubled: the right-hand side of a
    batched product ``x.expand(4, batch, in) @ _`` that gives the four gates as blocks."""
    hidden = w.shape[0] // 4
    return (w * scale).view(4, hidden, -1).transpose(1, 2).contiguous()


def _forward_steps(R: Tensor, Hs: Tensor, c2: Tensor, w2: Tensor,
                   tokens: Optional[Tensor], table2: Optional[Tensor],
                   x: Optional[Tensor], w_in2: Optional[Tensor], b2: Optional[Tensor]) -> Tensor:  # fmt: skip
    """Run the recurrence over ``R.shape[0]`` steps. In: ``Hs[0]`` = h0; ``c2[0]`` = 2 c0
    (``c2`` is two buffers used in turn); the input gates from ``tokens`` and the gate-major
    ``table2 [4, vocab, hidden]``, or from ``x [steps, batch, in]``, ``w_in2`` and ``b2``.
    Out: ``Hs[t + 1]`` = h_t and what backward needs, ``R[t]`` = (dc/dz_i, dc/dz_f, dc/dz_g,
    dh/dz_o, dh/dc, f) for the gate pre-activations z. Returns the buffer holding 2 c_n."""
    steps, batch, hidden = Hs.shape[0] - 1, Hs.shape[1], Hs.shape[2]
    s = torch.empty([4, batch, hidden], dtype=R.dtype)  # this step's gates: one buffer, stays in cache
    i, f, g, o = s[0], s[1], s[2], s[3]
    tc = torch.empty_like(Hs[0])
    zero = torch.zeros([], dtype=R.dtype)
    neg1 = torch.full([], -1.0, dtype=R.dtype)
    neg2 = torch.full([], -2.0, dtype=R.dtype)
    for t in range(steps):
        r, h_prev, h = R[t], Hs[t], Hs[t + 1]
        if tokens is not None and table2 is not None:
            torch.index_select(table2, 1, tokens[t], out=s)
            torch.baddbmm(s, h_prev.expand([4, batch, hidden]), w2, out=s)
        elif x is not None and w_in2 is not None and b2 is not None:
            torch.baddbmm(b2, x[t].expand([4, batch, x.shape[2]]), w_in2, out=s)
            torch.baddbmm(s, h_prev.expand([4, batch, hidden]), w2, out=s)
        s.sigmoid_()
        xi, xf, xg, xo, p = r[0], r[1], r[2], r[3], r[4]
        torch.addcmul(s, s, s, value=-1.0, out=r[:4])  # sigmoid' = s (1 - s), all four gates
        r[5].copy_(f)
        torch.add(neg2, g, alpha=4.0, out=g)  # 2 tanh(z_g) = 4 sigmoid(2 z_g) - 2
        c_prev, c_new = c2[t % 2], c2[(t + 1) % 2]
        torch.mul(f, c_prev, out=c_new)
        c_new.addcmul_(i, g)  # 2c = f (2c) + i (2g)
        torch.addcmul(zero, xi, g, value=0.5, out=xi)  # dc/dz_i = g i (1 - i)
        torch.addcmul(zero, xf, c_prev, value=0.5, out=xf)  # dc/dz_f = c_prev f (1 - f)
        torch.addcmul(zero, xg, i, value=4.0, out=xg)  # dc/dz_g = i (1 - g^2) = 4 i s (1 - s)
        torch.sigmoid(c_new, out=tc)
        torch.add(neg1, tc, alpha=2.0, out=tc)  # tanh(c)
        torch.mul(o, tc, out=h)
        torch.mul(tc, tc, out=p)
        torch.addcmul(o, o, p, value=-1.0, out=p)  # dh/dc = o (1 - tanh(c)^2)
        xo.mul_(tc)  # dh/dz_o = tanh(c) o (1 - o)
    return c2[steps % 2]


def _backward_steps(R: Tensor, Hs: Tensor, w: Tensor, d_hs: Tensor, dc: Tensor, dz2: Tensor, dW: Tensor,
                    tokens: Optional[Tensor], d_table: Optional[Tensor], x: Optional[Tensor],
                    w_in: Optional[Tensor], d_x: Optional[Tensor], d_w_in: Optional[Tensor],
                    d_b: Optional[Tensor]) -> Tensor:  # fmt: skip
    """Backward through the steps in reverse. ``dc`` enters as dL/dc_n and leaves as dL/dc_0
    (before step 0's forget gate); ``dz2`` is two [batch, 4 hidden] buffers for the gate
    gradients dL/dz, used in turn; ``dW`` and ``d_table`` (or ``d_w_in``, ``d_b``) accumulate,
    ``d_x[t]`` is written. Returns the buffer holding dL/dz of step 0."""
    steps, batch, hidden = Hs.shape[0] - 1, Hs.shape[1], Hs.shape[2]
    dh = torch.empty_like(dc)
    for t in range(steps - 1, -1, -1):
        z = dz2[t % 2]
        r = R[t]
        if t == steps - 1:
            dh.copy_(d_hs[t])
        else:
            torch.addmm(d_hs[t], dz2[(t + 1) % 2], w, out=dh)
            dc.mul_(R[t + 1, 5])
        dc.addcmul_(dh, r[4])
        zg = z.view([batch, 4, hidden])
        torch.mul(r[:3], dc, out=zg[:, :3].transpose(0, 1))
        torch.mul(r[3], dh, out=zg[:, 3])
        dW.addmm_(z.t(), Hs[t])
        if tokens is not None and d_table is not None:
            d_table.index_add_(0, tokens[t], z)
        elif x is not None and w_in is not None and d_x is not None and d_w_in is not None and d_b is not None:
            torch.mm(z, w_in, out=d_x[t])
            d_w_in.addmm_(z.t(), x[t])
            d_b.add_(z.sum(0))
    return dz2[0]


_compiled: dict[str, object] = {}


def _loops(script: bool = SCRIPT_LOOPS):
    if not script:
        return _forward_steps, _backward_steps
    if not _compiled:
        _compiled["f"] = torch.jit.script(_forward_steps)
        _compiled["b"] = torch.jit.script(_backward_steps)
    return _compiled["f"], _compiled["b"]


class _Recurrence(torch.autograd.Function):
    """One LSTM layer over a sequence. The input part of the gates comes either from a table
    (``mode == "tokens"``: ``source`` = token ids ``[steps, batch]``, ``w_in`` = a row of input
    pre-activations per token id, ``[vocab, 4 hidden]``, biases included) or from a dense input
    (``mode == "dense"``: ``source [steps, batch, in]``, ``w_in = W_ih``, ``bias = b_ih + b_hh``)."""

    @staticmethod
    def forward(ctx, source: Tensor, w_in: Tensor, bias: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
                workspace: Workspace, mode: str):  # fmt: skip
        batch, hidden = h0.shape
        steps = source.shape[0]
        scale = _cell_scale(hidden, w_hh)
        R = workspace.take((steps, 6, batch, hidden), w_hh)
        Hs = torch.empty(steps + 1, batch, hidden, dtype=w_hh.dtype)  # returned: never pooled
        Hs[0].copy_(h0)
        c2 = torch.empty(2, batch, hidden, dtype=w_hh.dtype)
        torch.mul(c0, 2.0, out=c2[0])
        w2 = _gate_major(w_hh, scale)
        if mode == "tokens":
            table2 = _gate_major(w_in.t(), scale)  # [4, vocab, hidden]
            c_last = _loops()[0](R, Hs, c2, w2, source, table2, None, None, None)
        else:
            b2 = (bias[:, None] * scale).view(4, 1, hidden)
            c_last = _loops()[0](R, Hs, c2, w2, None, None, source, _gate_major(w_in, scale), b2)
        ctx.save_for_backward(source, w_in, w_hh)
        ctx.stored = (R, Hs)
        ctx.workspace, ctx.mode = workspace, mode
        return Hs[1:], c_last * 0.5

    @staticmethod
    def backward(ctx, d_hs: Tensor | None, d_cn: Tensor | None):
        if ctx.stored is None:
            raise RuntimeError("the fast LSTM recurrence supports one backward pass per forward pass")
        source, w_in, w_hh = ctx.saved_tensors
        R, Hs = ctx.stored
        ctx.stored = None
        steps, batch, hidden = Hs.shape[0] - 1, Hs.shape[1], Hs.shape[2]
        dz2 = torch.empty(2, batch, 4 * hidden, dtype=w_hh.dtype)
        dW = torch.zeros_like(w_hh)
        dc = d_cn.clone() if d_cn is not None else torch.zeros_like(Hs[0])
        d_hs = d_hs.contiguous() if d_hs is not None else torch.zeros_like(Hs[1:])
        d_in = torch.zeros_like(w_in)
        if ctx.mode == "tokens":
            d_source = d_bias = None
            dz0 = _loops()[1](R, Hs, w_hh, d_hs, dc, dz2, dW, source, d_in,
                                  None, None, None, None, None)  # fmt: skip
        else:
            d_source = torch.empty_like(source)
            d_bias = torch.zeros(4 * hidden, dtype=w_hh.dtype)
            dz0 = _loops()[1](R, Hs, w_hh, d_hs, dc, dz2, dW, None, None,
                                  source, w_in, d_source, d_in, d_bias)  # fmt: skip
        d_h0 = dz0 @ w_hh if ctx.needs_input_grad[4] else None
        d_c0 = dc * R[0, 5] if ctx.needs_input_grad[5] else None
        ctx.workspace.give(R)
        return d_source, d_in, d_bias, dW, d_h0, d_c0, None, None


def lstm_tokens(tokens: Tensor, table: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor,
                workspace: Workspace) -> tuple[Tensor, Tensor]:  # fmt: skip
    """A first LSTM layer fed by token ids: ``tokens [steps, batch]``, ``table [vocab, 4 hidden]``
    (each token's input pre-activations, biases included), ``h0, c0 [batch, hidden]``.
    Returns ``hs [steps, batch, hidden]`` and ``c_n [batch, hidden]`` (h_n is ``hs[-1]``)."""
    return _Recurrence.apply(tokens, table, None, w_hh, h0, c0, workspace, "tokens")


def lstm_dense(x: Tensor, w_ih: Tensor, bias: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor,
               workspace: Workspace) -> tuple[Tensor, Tensor]:  # fmt: skip
    """An LSTM layer on a dense input ``x [steps, batch, in]`` (``bias`` = b_ih + b_hh);
    returns as ``lstm_tokens``."""
    return _Recurrence.apply(x, w_ih, bias, w_hh, h0, c0, workspace, "dense")
