"""The LSTM recurrence for CPU training, written for speed on a few cores: an autograd Function
whose forward stores exactly what backward needs and whose backward runs two matrix products
per step, where oneDNN's LSTM (what ``nn.LSTM`` runs on CPU) spends most of a training step.

Math: ``nn.LSTM``'s, gate order (i, f, g, o). Layout: in the forward pass a step's gates are
``[4, batch, hidden]`` (each gate a contiguous block, so every elementwise op is one plain
vectorized loop; the product with W_hh is a batch of four products, and a first layer's input
gates are a gather of contiguous rows from a per-token table). In the backward pass a step's
gate gradients are ``[batch, 4 hidden]``, so dh is one product with W_hh and the table gradient
a row scatter. The output ``hs`` is ``[batch, steps, hidden]``, so the head's product writes
logits in the caller's ``[batch, steps, vocab]`` order and its gradient comes back contiguous.

Where the time goes, and what is done about it (measured on 2 cores, hidden 128, 256 streams):
- the streams are independent, so each thread runs its own part of them, single-threaded,
  with the per-step loops in TorchScript (no GIL, little dispatch overhead): ~1.9x one
  thread, where splitting each op between threads gives ~1.5x (a step's ops are small; each
  split is a thread barrier, and one that stalls whenever another process holds a core);
- every big tensor of a call is reused from a ``Workspace``: a fresh 50 MB tensor costs more in
  page faults than the arithmetic done on it;
- tanh is computed as ``2 sigmoid(2x) - 1`` (PyTorch's CPU tanh takes ~3x its sigmoid): the
  cell-gate rows of the weights are doubled once per call, so one sigmoid covers all four
  gates, and the cell state is kept doubled so ``tanh(c)`` is one more sigmoid;
- the forward pass also computes the factors backward multiplies by (``R`` below) while a
  step's values are in cache, so backward is two products and four cheap ops per step;
- weight and table gradients are accumulated per step, while the step's gradients are in cache.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Optional, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class Workspace:
    """Big tensors kept between calls, as flat storage: ``take`` lends a view of one at least as
    large as asked (chunks of different lengths share one), ``give`` returns it when the call's
    backward is done; at most ``KEEP`` idle ones are kept. Copies of a model (``deepcopy``,
    pickling) start with an empty workspace."""

    KEEP = 8

    def __init__(self) -> None:
        self._free: dict[tuple, list[Tensor]] = {}

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A contiguous tensor of ``shape`` (contents undefined), viewing pooled storage."""
        size = math.prod(shape)
        free = self._free.setdefault((like.dtype, like.device), [])
        fits = [k for k, t in enumerate(free) if t.numel() >= size]
        flat = free.pop(min(fits, key=lambda k: free[k].numel())) if fits else like.new_empty(size)
        return flat[:size].view(shape)

    def give(self, *tensors: Tensor) -> None:
        for t in tensors:
            flat = t._base if t._base is not None else t
            free = self._free.setdefault((flat.dtype, flat.device), [])
            free.append(flat)
            if len(free) > self.KEEP:
                free.pop(min(range(len(free)), key=lambda k: free[k].numel()))

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


def _forward_steps(R: Tensor, h0: Tensor, Hs: Tensor, c2: Tensor, w2: Tensor,
                   tokens: Optional[Tensor], table2: Optional[Tensor],
                   x: Optional[Tensor], w_in2: Optional[Tensor], b2: Optional[Tensor]) -> Tensor:  # fmt: skip
    """Run the recurrence over ``R.shape[0]`` steps from ``h0`` and ``c2[0]`` = 2 c0 (``c2`` is
    two buffers used in turn), the input gates from ``tokens [steps, batch]`` and the gate-major
    ``table2 [4, vocab, hidden]``, or from ``x [batch, steps, in]``, ``w_in2`` and ``b2``.
    Out: ``Hs[:, t]`` = h_t (``Hs [batch, steps, hidden]``) and what backward needs,
    ``R[t]`` = (dc/dz_i, dc/dz_f, dc/dz_g, dh/dz_o, dh/dc, f) for the gate pre-activations z.
    Returns the buffer holding 2 c_n."""
    steps, batch, hidden = R.shape[0], R.shape[2], R.shape[3]
    s = torch.empty([4, batch, hidden], dtype=R.dtype)  # this step's gates: one buffer, stays in cache
    i, f, g, o = s[0], s[1], s[2], s[3]
    tc = torch.empty_like(h0)
    zero = torch.zeros([], dtype=R.dtype)
    neg1 = torch.full([], -1.0, dtype=R.dtype)
    neg2 = torch.full([], -2.0, dtype=R.dtype)
    rows, hs, c_buf = R.unbind(0), Hs.unbind(1), c2.unbind(0)  # views made once, not per step
    ids = tokens.unbind(0) if tokens is not None else hs
    inputs = x.unbind(1) if x is not None else hs
    for t in range(steps):
        r, h = rows[t], hs[t]
        h_prev = h0 if t == 0 else hs[t - 1]
        if tokens is not None and table2 is not None:
            torch.index_select(table2, 1, ids[t], out=s)
            torch.baddbmm(s, h_prev.expand([4, batch, hidden]), w2, out=s)
        elif x is not None and w_in2 is not None and b2 is not None:
            torch.baddbmm(b2, inputs[t].expand([4, batch, x.shape[2]]), w_in2, out=s)
            torch.baddbmm(s, h_prev.expand([4, batch, hidden]), w2, out=s)
        s.sigmoid_()
        xi, xf, xg, xo, p, f_kept = r.unbind(0)
        torch.addcmul(s, s, s, value=-1.0, out=r.narrow(0, 0, 4))  # sigmoid' = s (1 - s), all four gates
        f_kept.copy_(f)
        torch.add(neg2, g, alpha=4.0, out=g)  # 2 tanh(z_g) = 4 sigmoid(2 z_g) - 2
        c_prev, c_new = c_buf[t % 2], c_buf[(t + 1) % 2]
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
    return c_buf[steps % 2]


def _backward_steps(R: Tensor, h0: Tensor, Hs: Tensor, w: Tensor, d_hs: Tensor, dc: Tensor, dz2: Tensor,
                    dW: Tensor, tokens: Optional[Tensor], d_table: Optional[Tensor], x: Optional[Tensor],
                    w_in: Optional[Tensor], d_x: Optional[Tensor], d_w_in: Optional[Tensor],
                    d_b: Optional[Tensor]) -> Tensor:  # fmt: skip
    """Backward through the steps in reverse; ``d_hs`` is dL/dHs (any strides). ``dc`` enters
    as dL/dc_n and leaves as dL/dc_0 (before step 0's forget gate); ``dz2`` is two
    [batch, 4 hidden] buffers for the gate gradients dL/dz, used in turn; ``dW`` and
    ``d_table`` (or ``d_w_in``, ``d_b``) accumulate, ``d_x[:, t]`` is written. Returns the
    buffer holding dL/dz of step 0."""
    steps, batch, hidden = R.shape[0], R.shape[2], R.shape[3]
    dh = torch.empty_like(dc)
    rows, hs, d_out, dz_buf = R.unbind(0), Hs.unbind(1), d_hs.unbind(1), dz2.unbind(0)  # views made once
    ids = tokens.unbind(0) if tokens is not None else hs
    inputs = x.unbind(1) if x is not None else hs
    d_inputs = d_x.unbind(1) if d_x is not None else hs
    # gate-gradient views of each buffer: (i, f, g) as [3, batch, hidden] and o
    dz_ifg = [z.view([batch, 4, hidden]).narrow(1, 0, 3).transpose(0, 1) for z in dz_buf]
    dz_o = [z.view([batch, 4, hidden]).select(1, 3) for z in dz_buf]
    forget = rows[0].select(0, 5)
    for t in range(steps - 1, -1, -1):
        z, r = dz_buf[t % 2], rows[t]
        xi_f_g, xo, p, f_kept = r.narrow(0, 0, 3), r.select(0, 3), r.select(0, 4), r.select(0, 5)
        if t == steps - 1:
            dh.copy_(d_out[t])
        else:
            torch.addmm(d_out[t], dz_buf[(t + 1) % 2], w, out=dh)
            dc.mul_(forget)  # f of step t + 1
        dc.addcmul_(dh, p)
        torch.mul(xi_f_g, dc, out=dz_ifg[t % 2])
        torch.mul(xo, dh, out=dz_o[t % 2])
        dW.addmm_(z.t(), h0 if t == 0 else hs[t - 1])
        if tokens is not None and d_table is not None:
            d_table.index_add_(0, ids[t], z)
        elif x is not None and w_in is not None and d_x is not None and d_w_in is not None and d_b is not None:
            torch.mm(z, w_in, out=d_inputs[t])
            d_w_in.addmm_(z.t(), inputs[t])
            d_b.add_(z.sum(0))
        forget = f_kept
    return dz2[0]


_scripted: list = []


def _loops() -> tuple[Callable, Callable]:
    """The step loops, compiled by TorchScript on first use: its interpreter dispatches an op in
    a fraction of Python's time and runs without the GIL, so the threads run in parallel.
    (torch.compile, torch.jit's successor, would need a C++ compiler wherever training runs.)"""
    if not _scripted:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _scripted.extend([torch.jit.script(_forward_steps), torch.jit.script(_backward_steps)])
    return _scripted[0], _scripted[1]


MIN_PART = 64  # streams per thread: smaller parts make the per-step products inefficient
_pools: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_pools.clear)  # a forked child has none of the pool threads


def batch_parts(batch: int) -> list[slice]:
    """How the streams are shared among threads: one part per intra-op thread, at least
    ``MIN_PART`` streams each."""
    n = max(1, min(torch.get_num_threads(), batch // MIN_PART))
    bounds = [batch * k // n for k in range(n + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


def _single_threaded(job: Callable[[], T]) -> T:
    torch.set_num_threads(1)
    with torch.no_grad():  # grad mode is per thread; the jobs only fill buffers
        return job()


def _run_parts(jobs: list[Callable[[], T]]) -> list[T]:
    """Run independent jobs in parallel, each single-threaded: one on this thread, the others
    on pool threads. ``torch.set_num_threads`` is process-wide, so it is 1 while they run and
    is put back after."""
    if len(jobs) == 1:
        return [jobs[0]()]
    threads = torch.get_num_threads()
    pool = _pools.get(len(jobs) - 1)
    if pool is None:
        pool = _pools[len(jobs) - 1] = ThreadPoolExecutor(len(jobs) - 1, thread_name_prefix="lstm-recurrence")
    torch.set_num_threads(1)
    try:
        futures = [pool.submit(_single_threaded, job) for job in jobs[1:]]
        try:
            first = jobs[0]()
        finally:
            wait(futures)
        return [first, *(f.result() for f in futures)]
    finally:
        torch.set_num_threads(threads)


class _Recurrence(torch.autograd.Function):
    """One LSTM layer over a sequence. The input part of the gates comes either from a table
    (``mode == "tokens"``: ``source`` = token ids ``[steps, batch]``, ``w_in`` = a row of input
    pre-activations per token id, ``[vocab, 4 hidden]``, biases included) or from a dense input
    (``mode == "dense"``: ``source [batch, steps, in]``, ``w_in = W_ih``, ``bias = b_ih + b_hh``).
    The streams (batch rows) are independent, so each thread runs its own part of them."""

    @staticmethod
    def forward(ctx, source: Tensor, w_in: Tensor, bias: Tensor | None, w_hh: Tensor, h0: Tensor, c0: Tensor,
                workspace: Workspace, mode: str):  # fmt: skip
        batch, hidden = h0.shape
        steps = source.shape[0] if mode == "tokens" else source.shape[1]
        parts = batch_parts(batch)
        scale = _cell_scale(hidden, w_hh)
        # Hs, the output, is pooled too: the layers after it (head, next layer) keep it only
        # until their backward, which runs before this one, and CharLM returns copies (logits,
        # state). A later call overwrites it; a backward through the old graph after that fails
        # autograd's version check rather than give wrong gradients.
        Hs = workspace.take((batch, steps, hidden), w_hh)
        w2 = _gate_major(w_hh, scale)
        if mode == "tokens":
            table2, w_in2, b2 = _gate_major(w_in.t(), scale), None, None  # [4, vocab, hidden]
        else:
            table2, w_in2, b2 = None, _gate_major(w_in, scale), (bias[:, None] * scale).view(4, 1, hidden)
        forward_steps = _loops()[0]
        stored, jobs = [], []
        for part in parts:
            R = workspace.take((steps, 6, part.stop - part.start, hidden), w_hh)
            c2 = torch.empty(2, part.stop - part.start, hidden, dtype=w_hh.dtype)
            torch.mul(c0[part], 2.0, out=c2[0])
            tokens, x = (source[:, part], None) if mode == "tokens" else (None, source[part])
            stored.append(R)
            jobs.append(functools.partial(forward_steps, R, h0[part], Hs[part], c2, w2, tokens, table2, x, w_in2, b2))
        c_n = torch.cat(_run_parts(jobs)) * 0.5
        ctx.save_for_backward(source, w_in, w_hh, h0)
        ctx.stored, ctx.Hs, ctx.parts = stored, Hs, parts
        ctx.workspace, ctx.mode = workspace, mode
        return Hs, c_n

    @staticmethod
    def backward(ctx, d_hs: Tensor | None, d_cn: Tensor | None):
        if ctx.stored is None:
            raise RuntimeError("the fast LSTM recurrence supports one backward pass per forward pass")
        source, w_in, w_hh, h0 = ctx.saved_tensors
        stored, Hs, parts = ctx.stored, ctx.Hs, ctx.parts
        ctx.stored = ctx.Hs = None
        hidden = Hs.shape[2]
        d_hs = d_hs if d_hs is not None else torch.zeros_like(Hs)
        dc = d_cn.clone() if d_cn is not None else torch.zeros_like(h0)
        tokens_mode = ctx.mode == "tokens"
        d_source = None if tokens_mode else torch.empty_like(source)
        backward_steps = _loops()[1]
        sums, jobs = [], []
        for part, R in zip(parts, stored):
            dz2 = torch.empty(2, part.stop - part.start, 4 * hidden, dtype=w_hh.dtype)
            dW, d_in = torch.zeros_like(w_hh), torch.zeros_like(w_in)
            d_b = None if tokens_mode else torch.zeros(4 * hidden, dtype=w_hh.dtype)
            sums.append((dW, d_in, d_b))
            if tokens_mode:
                args = (source[:, part], d_in, None, None, None, None, None)
            else:
                args = (None, None, source[part], w_in, d_source[part], d_in, d_b)
            jobs.append(functools.partial(backward_steps, R, h0[part], Hs[part], w_hh, d_hs[part], dc[part], dz2, dW, *args))
        dz0 = torch.cat(_run_parts(jobs))
        dW, d_in = sum(s[0] for s in sums), sum(s[1] for s in sums)
        d_bias = None if tokens_mode else sum(s[2] for s in sums)
        d_h0 = dz0 @ w_hh if ctx.needs_input_grad[4] else None
        d_c0 = dc * torch.cat([R[0, 5] for R in stored]) if ctx.needs_input_grad[5] else None
        ctx.workspace.give(*stored, Hs)
        return d_source, d_in, d_bias, dW, d_h0, d_c0, None, None


def lstm_tokens(tokens: Tensor, table: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor,
                workspace: Workspace) -> tuple[Tensor, Tensor]:  # fmt: skip
    """A first LSTM layer fed by token ids: ``tokens [steps, batch]``, ``table [vocab, 4 hidden]``
    (each token's input pre-activations, biases included), ``h0, c0 [batch, hidden]``.
    Returns ``hs [batch, steps, hidden]`` and ``c_n [batch, hidden]`` (h_n is ``hs[:, -1]``)."""
    return _Recurrence.apply(tokens, table, None, w_hh, h0, c0, workspace, "tokens")


def lstm_dense(x: Tensor, w_ih: Tensor, bias: Tensor, w_hh: Tensor, h0: Tensor, c0: Tensor,
               workspace: Workspace) -> tuple[Tensor, Tensor]:  # fmt: skip
    """An LSTM layer on a dense input ``x [batch, steps, in]`` (``bias`` = b_ih + b_hh);
    returns as ``lstm_tokens``."""
    return _Recurrence.apply(x, w_ih, bias, w_hh, h0, c0, workspace, "dense")
