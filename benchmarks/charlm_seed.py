"""The charlm seed comparison: the tutorial's way of training a character LSTM against lstmops'
stateful truncated BPTT, same model, same wall-clock budget, same validation measure, on CPU.

    .venv/bin/python benchmarks/charlm_seed.py [--seconds 120] [--streams 256] [--threads 2] [--text PATH]

Data: the text lowercased, split 90/5/5 into contiguous train / validation / test spans, the
vocabulary from the training span (id 0: unknown). Model, both ways: embedding 50 -> LSTM 128
(one layer) -> dense softmax over the vocabulary.

(a) The tutorial's form: windows of 100 characters at step 1, the character after each window
    as its one target (predicted from the last LSTM output), batches of 128 windows in random
    order, Adam at lr 0.001, ``nn.LSTM``. An epoch is one window per training position.
(b) lstmops charlm: ``--streams`` contiguous streams read side by side in chunks of 100, the state
    carried across chunks (detached), every position a target, Adam at lr 0.002 with gradient
    norm clipped at 1.0 (as the lstmops trainer), the fast CPU path of ``CharLM``.

Each trains for ``--seconds`` of training time (evaluation is off the clock). Printed: targets per
second, ms per step, the projected time of 20 epochs, and validation bits per character at the
same training times, measured two ways for both models: "stateful" (the span read as 16 streams
with the state carried, as the lstmops evaluate stage reads it) and "windows" (the tutorial's
own form: 4,096 fixed validation positions, each predicted from the 100 characters before it).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops.tasks.charlm.text import UNKNOWN, encode_text
from lstmops.tasks.charlm.model import CharLM, CharLMSpec
from lstmops.tasks.charlm.task import VAL_STREAMS, mean_nats, stream_chunks

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 100  # (a)'s window and (b)'s chunk
TUTORIAL_BATCH = 128
WINDOW_SAMPLE = 4096  # validation positions of the "windows" measure
# What the tutorial's own Keras code measured on this machine (2 cores), per step of 128 windows,
# and its steps per epoch (one window per position of the whole 5.06M-character text).
KERAS_MS_PER_STEP = (57.0, 71.0)
KERAS_STEPS_PER_EPOCH = 39_509
EPOCHS = 20
WARMUP_STEPS = 3  # not counted in the throughput


class Data:
    """The encoded text and its spans."""

    def __init__(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8").lower()
        self.train_end, self.val_end = int(len(text) * 0.90), int(len(text) * 0.95)
        self.vocab = [UNKNOWN, *sorted(set(text[: self.train_end]) - {UNKNOWN})]
        self.tokens = torch.from_numpy(encode_text(text, self.vocab).astype(np.int64))
        g = torch.Generator().manual_seed(0)
        self.window_targets = self.train_end + WINDOW + torch.randint(self.val_end - self.train_end - WINDOW, (WINDOW_SAMPLE,), generator=g)

    def window_inputs(self, targets: torch.Tensor) -> torch.Tensor:
        return self.tokens[targets[:, None] - WINDOW + torch.arange(WINDOW)]


def new_model(vocab_size: int) -> CharLM:
    return CharLM(CharLMSpec(vocab_size, 50, 128, 1, 0.0))


def last_logits(model: CharLM, windows: torch.Tensor) -> torch.Tensor:
    """The tutorial's prediction: the head on the LSTM's last output only."""
    out, _ = model.lstm(model.embedding(windows))
    return model.head(out[:, -1])


def validation_bits(model: CharLM, data: Data) -> tuple[float, float]:
    """(stateful, windows) validation bits per character; leaves the model in training mode."""
    stateful = mean_nats(model, data.tokens, data.train_end, data.val_end, VAL_STREAMS) / math.log(2)
    model.eval()
    nats = 0.0
    with torch.no_grad():
        for part in data.window_targets.split(512):
            logits = last_logits(model, data.window_inputs(part))
            nats += float(nn.functional.cross_entropy(logits, data.tokens[part], reduction="sum"))
    model.train()
    return stateful, nats / WINDOW_SAMPLE / math.log(2)


def tutorial_steps(model: CharLM, data: Data) -> Callable[[], int]:
    """(a): one optimizer step on 128 random windows per call; returns the targets trained."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    model.fast = False
    starts = torch.empty(0, dtype=torch.int64)

    def step() -> int:
        nonlocal starts
        if len(starts) < TUTORIAL_BATCH:  # a new epoch: every window once, in random order
            starts = torch.randperm(data.train_end - WINDOW)
        batch, starts = starts[:TUTORIAL_BATCH], starts[TUTORIAL_BATCH:]
        loss = nn.functional.cross_entropy(last_logits(model, data.window_inputs(batch + WINDOW)), data.tokens[batch + WINDOW])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(batch)

    return step


def lstmops_steps(model: CharLM, data: Data, streams: int) -> Callable[[], int]:
    """(b): one optimizer step on the next chunk of every stream per call; returns the targets trained."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002)
    stream_length = (data.train_end - 1) // streams
    firsts = torch.arange(streams) * stream_length
    chunks: list[tuple[int, int]] = []
    state = None

    def step() -> int:
        nonlocal chunks, state
        if not chunks:  # a new epoch: the streams from their starts, chunk boundaries shifted
            chunks, state = stream_chunks(stream_length, WINDOW, int(torch.randint(WINDOW, (1,)))), None
        offset, length = chunks.pop(0)
        index = firsts[:, None] + offset + torch.arange(length)
        logits, state = model(data.tokens[index], state)
        state = tuple(s.detach() for s in state)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), data.tokens[index + 1].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return index.numel()

    return step


def train(name: str, model: CharLM, step: Callable[[], int], data: Data, seconds: float, marks: list[float]) -> dict:
    """Run ``step`` for ``seconds`` of training time, evaluating at each mark (off the clock).
    Throughput is taken after the first ``WARMUP_STEPS`` (one-time setup: kernels, buffers)."""
    model.train()
    clock, steps, targets, curve, evaluating = 0.0, 0, 0, [], 0.0
    warm = (0.0, 0)
    pending = list(marks)
    while clock < seconds:
        start = time.perf_counter()
        targets += step()
        clock += time.perf_counter() - start
        steps += 1
        if steps == WARMUP_STEPS:
            warm = (clock, targets)
        while pending and clock >= pending[0]:
            start = time.perf_counter()
            curve.append(validation_bits(model, data))
            evaluating += time.perf_counter() - start
            print(f"  ({name}) {pending.pop(0):6.0f} s: {steps:,} steps, validation bpc stateful {curve[-1][0]:.3f}, windows {curve[-1][1]:.3f}", flush=True)
    print(f"  ({name}) evaluation took {evaluating:.1f} s (off the clock)")
    if steps <= WARMUP_STEPS:  # too short to leave the warm-up out
        return {"seconds": clock, "steps": steps, "targets": targets, "curve": curve}
    return {"seconds": clock - warm[0], "steps": steps - WARMUP_STEPS, "targets": targets - warm[1], "curve": curve}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="training time of each way")
    parser.add_argument("--streams", type=int, default=256, help="(b)'s parallel streams (its batch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--text", type=Path, default=ROOT / "data/source/shakespeare_plays.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    data = Data(args.text)
    train_chars = data.train_end
    print(f"{args.text.name}: {len(data.tokens):,} characters, train {train_chars:,}, validation {data.val_end - data.train_end:,}, "
          f"vocabulary {len(data.vocab)}; {args.threads} threads, {args.seconds:g} s of training each")  # fmt: skip
    every = max(5.0, args.seconds / 6)
    marks = [every * k for k in range(1, int(args.seconds / every + 1e-9) + 1)]

    torch.manual_seed(0)
    model_a = new_model(len(data.vocab))
    print("(a) tutorial form: 100-character windows, one target each, batch 128, Adam 0.001, nn.LSTM")
    a = train("a", model_a, tutorial_steps(model_a, data), data, args.seconds, marks)
    torch.manual_seed(0)
    model_b = new_model(len(data.vocab))
    print(f"(b) lstmops charlm: {args.streams} streams x chunks of {WINDOW}, state carried, Adam 0.002, fast CPU path")
    b = train("b", model_b, lstmops_steps(model_b, data, args.streams), data, args.seconds, marks)

    a_ms, b_ms = 1000 * a["seconds"] / a["steps"], 1000 * b["seconds"] / b["steps"]
    a_epoch_steps = math.ceil((train_chars - WINDOW) / TUTORIAL_BATCH)
    a_20 = EPOCHS * a_epoch_steps * a_ms / 1000
    b_rate = b["targets"] / b["seconds"]
    b_20 = EPOCHS * train_chars / b_rate
    keras = [EPOCHS * KERAS_STEPS_PER_EPOCH * ms / 1000 for ms in KERAS_MS_PER_STEP]
    print()
    print(f"(a) {a['targets'] / a['seconds']:,.0f} targets/s, {a_ms:.1f} ms/step, {a_epoch_steps:,} steps/epoch "
          f"({train_chars - WINDOW:,} windows / {TUTORIAL_BATCH}): 20 epochs in {hours(a_20)}")  # fmt: skip
    print(f"(b) {b_rate:,.0f} targets/s (chars/s), {b_ms:.1f} ms/step of {args.streams}x{WINDOW}: 20 epochs in {hours(b_20)}")
    print(f"20-epoch time (a)/(b): {a_20 / b_20:.1f}x")
    print(f"the tutorial's Keras code on this machine: {KERAS_MS_PER_STEP[0]:g}-{KERAS_MS_PER_STEP[1]:g} ms/step x "
          f"{KERAS_STEPS_PER_EPOCH:,} steps/epoch: 20 epochs in {hours(keras[0])}-{hours(keras[1])}, "
          f"{keras[0] / b_20:.0f}-{keras[1] / b_20:.0f}x (b)'s projected time")  # fmt: skip
    print()
    print("validation bits per character at equal training time")
    print(f"{'seconds':>8}  {'a stateful':>10}  {'b stateful':>10}  {'a windows':>10}  {'b windows':>10}")
    for mark, (sa, wa), (sb, wb) in zip(marks, a["curve"], b["curve"]):
        print(f"{mark:8.0f}  {sa:10.3f}  {sb:10.3f}  {wa:10.3f}  {wb:10.3f}")


if __name__ == "__main__":
    main()
