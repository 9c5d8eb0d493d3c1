"""The exported file of a character language model: TorchScript that needs nothing but torch.

The file holds the weights, the vocabulary and the text normalization, and answers three calls:
``generate(prompt, chars, temperature, seed)`` (sampled text), ``bits(text)`` (mean bits per
character of ``text[1:]`` given what precedes each: how the registry gate scores a model on new
text without lstmops) and ``forward(tokens)`` (next-character log-probabilities, the tensor
signature MLflow logs). ``vocab``, ``lowercase`` and ``task`` are readable attributes.

TorchScript strings are UTF-8 bytes (indexing and ``len`` count bytes, ``lower()`` is ASCII
only) and its loops run at microseconds per iteration, so text is encoded with tensor ops: the
bytes become a tensor, are decoded to code points, lowercased through a table built here with
Python's ``str.lower`` (one row per character it changes), and looked up in the vocabulary by
binary search, as ``lstmops.tasks.charlm.text`` encodes. Lowercasing is per character: Greek final
sigma, which Python's ``lower`` of a whole string gets from context, becomes the ordinary sigma.

Export is refused unless the file, reloaded from disk, gives the eager model's log-probabilities
on the test text to ``TOLERANCE``.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from lstmops.errors import LstmopsError
from lstmops.io import atomic_path, save_torchscript
from lstmops.tasks.charlm.model import CharLM
from lstmops.tasks.base import TOLERANCE

PARITY_CHARS = 20_000  # test characters compared at export
BITS_CHUNK = 4096  # characters per LSTM call in bits(): bounded memory for any text length
UNKNOWN = "\ufffd"  # vocab[0]: any character the vocabulary lacks


@functools.cache
def _changed_by_lower() -> tuple[tuple[int, str], ...]:
    """(code point, its lowercase) for every character that ``str.lower`` changes (~1,400)."""
    points = (p for p in range(0x110000) if not 0xD800 <= p <= 0xDFFF)
    return tuple((p, chr(p).lower()) for p in points if chr(p).lower() != chr(p))


def _codes(points: list[int]) -> Tensor:
    return torch.tensor(points, dtype=torch.long)


class CharLMArtifact(nn.Module):
    """The deployable model: an eval-mode copy of a ``CharLM``'s layers plus its vocabulary.

    Attribute types are inferred by TorchScript from their values (``vocab``: List[str],
    ``lowercase``: bool, ...); class-level annotations would be strings here
    (``from __future__ import annotations``), which the compiler cannot resolve.
    """

    def __init__(self, model: CharLM, vocab: list[str], lowercase: bool) -> None:
        super().__init__()
        if len(vocab) != model.spec.vocab_size:
            raise ValueError(f"{len(vocab)} vocabulary entries for a model of {model.spec.vocab_size} outputs")
        if len(vocab) < 2 or vocab[0] != UNKNOWN or any(len(ch) != 1 for ch in vocab):
            raise ValueError(f"the vocabulary must be single characters, the unknown symbol {UNKNOWN!r} first")
        eager = copy.deepcopy(model).cpu().float().eval()
        self.embedding, self.lstm, self.head = eager.embedding, eager.lstm, eager.head
        self.vocab = list(vocab)
        self.lowercase = lowercase
        self.task = "charlm"
        # An empty prompt starts from the zero state fed a newline (the start of a line of
        # text), or the unknown symbol when the vocabulary has no newline.
        self.start = vocab.index("\n") if "\n" in vocab else 0
        self.chunk = BITS_CHUNK
        order = sorted(range(len(vocab)), key=lambda i: ord(vocab[i]))
        self.register_buffer("vocab_codes", _codes([ord(vocab[i]) for i in order]))  # sorted, for searchsorted
        self.register_buffer("vocab_ids", _codes(order))
        changed = _changed_by_lower() if lowercase else ()
        single = [(p, ord(low)) for p, low in changed if len(low) == 1]
        double = [(p, [ord(c) for c in low]) for p, low in changed if len(low) == 2]
        if len(single) + len(double) != len(changed):
            raise ValueError("a character lowercases to more than two characters")  # not so in Unicode 15
        self.register_buffer("lower_from", _codes([p for p, _ in single]))
        self.register_buffer("lower_to", _codes([q for _, q in single]))
        self.register_buffer("double_from", _codes([p for p, _ in double]))
        self.register_buffer("double_to", _codes([q for _, q in double]).view(-1, 2))

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [batch, steps]`` (ids) -> log-probabilities of the next character
        ``[batch, steps, vocab]``, from the zero state."""
        out, _ = self.lstm(self.embedding(tokens))
        return torch.log_softmax(self.head(out), dim=-1)

    def _code_points(self, text: str) -> Tensor:
        """Unicode code points of a (valid UTF-8) TorchScript string, decoded with tensor ops."""
        raw = torch.tensor([ord(b) for b in list(text)], dtype=torch.long)  # bytes (a list comprehension runs natively)
        starts = torch.nonzero((raw & 0xC0) != 0x80).flatten()  # every byte but continuation bytes starts a character
        padded = torch.cat([raw, torch.zeros(3, dtype=torch.long)])
        b0 = padded[starts]
        b1, b2, b3 = padded[starts + 1] & 0x3F, padded[starts + 2] & 0x3F, padded[starts + 3] & 0x3F
        four = ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
        three = torch.where(b0 < 0xF0, ((b0 & 0x0F) << 12) | (b1 << 6) | b2, four)
        two = torch.where(b0 < 0xE0, ((b0 & 0x1F) << 6) | b1, three)
        return torch.where(b0 < 0x80, b0, two)

    def _lower(self, points: Tensor) -> Tensor:
        """Python's ``str.lower`` of each character (one lowercases to two: U+0130)."""
        if self.double_from.numel() > 0:
            double = torch.isin(points, self.double_from)
            if bool(double.any()):
                counts = torch.where(double, 2, 1)
                pairs = self.double_to[torch.searchsorted(self.double_from, points[double])]
                first = (torch.cumsum(counts, 0) - counts)[double]
                points = torch.repeat_interleave(points, counts)
                points[first] = pairs[:, 0]
                points[first + 1] = pairs[:, 1]
        if self.lower_from.numel() > 0:
            at = torch.searchsorted(self.lower_from, points).clamp(max=self.lower_from.numel() - 1)
            points = torch.where(self.lower_from[at] == points, self.lower_to[at], points)
        return points

    def _ids(self, text: str) -> Tensor:
        points = self._code_points(text)
        if self.lowercase:
            points = self._lower(points)
        at = torch.searchsorted(self.vocab_codes, points).clamp(max=self.vocab_codes.numel() - 1)
        return torch.where(self.vocab_codes[at] == points, self.vocab_ids[at], 0)

    @torch.jit.export
    def encode(self, text: str) -> List[int]:
        """Character ids of ``text`` (lowercased first if the model was trained lowercased);
        characters outside the vocabulary are 0."""
        ids: List[int] = self._ids(text).tolist()
        return ids

    @torch.jit.export
    def decode(self, ids: List[int]) -> str:
        return "".join([self.vocab[i] for i in ids])

    def _last_logits(self, ids: List[int], state: Optional[Tuple[Tensor, Tensor]]) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        """Run ``ids`` through the LSTM from ``state``: the logits after the last one, and the state."""
        x = self.embedding(torch.tensor(ids, dtype=torch.long).unsqueeze(0))
        out, new_state = self.lstm(x, state)
        return self.head(out[0, -1]), new_state

    @torch.jit.export
    def generate(self, prompt: str, chars: int, temperature: float, seed: int) -> str:
        """``chars`` characters sampled one at a time from softmax(logits / temperature) after
        ``prompt`` (not included in the result). The same seed gives the same text; the unknown
        symbol is never sampled. An empty prompt starts from a newline (see ``start``)."""
        if not temperature > 0.0:
            raise ValueError("temperature must be above 0, got " + str(temperature))
        if chars < 0:
            raise ValueError("chars must be 0 or more, got " + str(chars))
        ids = self.encode(prompt)
        if len(ids) == 0:
            ids = [self.start]
        generator = torch.Generator()
        generator.manual_seed(seed)
        out: List[str] = []
        with torch.no_grad():
            logits, state = self._last_logits(ids, None)
            for _ in range(chars):
                masked = logits.clone()
                masked[0] = -math.inf  # never the unknown symbol
                # Shifting by the maximum first keeps a tiny temperature finite (no inf - inf).
                probs = torch.softmax((masked - masked.max()) / temperature, dim=-1)
                k = int(torch.multinomial(probs, 1, generator=generator)[0])
                out.append(self.vocab[k])
                logits, state = self._last_logits([k], state)
        return "".join(out)

    @torch.jit.export
    def bits(self, text: str) -> float:
        """Mean bits per character of predicting ``text[1:]`` from what precedes each, reading
        the text as one stream from the zero state."""
        tokens = self._ids(text).unsqueeze(0)
        n = tokens.shape[1]
        if n < 2:
            raise ValueError("bits needs a text of at least 2 characters, got " + str(n))
        total = 0.0
        state: Optional[Tuple[Tensor, Tensor]] = None
        with torch.no_grad():
            for start in range(0, n - 1, self.chunk):
                end = min(start + self.chunk, n - 1)
                out, state = self.lstm(self.embedding(tokens[:, start:end]), state)
                logp = torch.log_softmax(self.head(out), dim=-1)
                total -= float(logp.gather(2, tokens[:, start + 1 : end + 1].unsqueeze(2)).double().sum())
        return total / (n - 1) / math.log(2.0)


def script(model: CharLM, vocab: list[str], lowercase: bool) -> torch.jit.ScriptModule:
    """The TorchScript module of ``model`` (copied: later training does not change it)."""
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, which cannot export string
        # methods or a Python-level sampling loop; TorchScript can.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(CharLMArtifact(model, vocab, lowercase))


def eager_log_probs(model: CharLM, tokens: Tensor) -> Tensor:
    """Next-character log-probabilities of the eager model (evaluation mode, CPU, zero state)."""
    eager = copy.deepcopy(model).cpu().float().eval()
    with torch.no_grad():
        logits, _ = eager(tokens)
        return torch.log_softmax(logits, dim=-1)


def export(model: CharLM, vocab: list[str], lowercase: bool, test_tokens: np.ndarray, out: Path) -> dict:
    """Script, save atomically, reload from disk and compare with the eager model on (a prefix
    of) the test tokens; refuse the file if they differ by more than ``TOLERANCE``."""
    scripted = script(model, vocab, lowercase)
    tokens = torch.from_numpy(np.asarray(test_tokens[:PARITY_CHARS], dtype=np.int64)).unsqueeze(0)
    if tokens.shape[1] == 0:
        raise LstmopsError("export: no test characters to check the TorchScript file on")
    with atomic_path(out) as tmp:
        save_torchscript(scripted, tmp)
        reloaded = torch.jit.load(str(tmp))
        with torch.no_grad():
            served = reloaded(tokens)
        max_abs_diff = float((served - eager_log_probs(model, tokens)).abs().max())
        if not max_abs_diff <= TOLERANCE:
            raise LstmopsError(f"export: TorchScript differs from the eager model by {max_abs_diff:.3g} > {TOLERANCE} (log-probability)")
    return {"max_abs_diff": max_abs_diff, "checked_chars": int(tokens.shape[1])}
