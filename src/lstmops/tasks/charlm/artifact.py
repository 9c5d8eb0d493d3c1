"""The exported file of a character language model: TorchScript that needs nothing but torch.

The file holds the weights, the vocabulary and the text normalization, and answers three calls:
``generate(prompt, chars, temperature, seed)`` (sampled text), ``bits(text)`` (mean bits per
character of ``text[1:]`` given what precedes each: how the registry gate scores a model on new
text without lstmops) and ``forward(tokens)`` (next-character log-probabilities, the tensor
signature MLflow logs). ``vocab``, ``lowercase`` and ``task`` are readable attributes.

TorchScript strings are UTF-8 bytes (indexing and ``len`` count bytes, ``lower()`` is ASCII
only), so the file splits text into characters by their UTF-8 lead bytes, and lowercasing is a
table built here with Python's ``str.lower`` for every character that lowercases into the
vocabulary. Lowercasing is per character: Greek final sigma, which Python's ``lower`` of a
whole string gets from context, becomes the ordinary sigma.

Export is refused unless the file, reloaded from disk, gives the eager model's log-probabilities
on the test text to ``TOLERANCE``.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from lstmops.errors import LstmopsError
from lstmops.io import atomic_path
from lstmops.tasks.charlm.model import CharLM

TOLERANCE = 1e-4  # log-probability; float32 TorchScript and eager nn.LSTM agree to ~1e-6
PARITY_CHARS = 20_000  # test characters compared at export
BITS_CHUNK = 4096  # characters per LSTM call in bits(): bounded memory for any text length
UNKNOWN = "\ufffd"  # vocab[0]: any character the vocabulary lacks


@functools.cache
def _changed_by_lower() -> tuple[tuple[str, str], ...]:
    """(character, its lowercase) for every character that ``str.lower`` changes (~1,400)."""
    pairs = ((chr(p), chr(p).lower()) for p in range(0x110000) if not 0xD800 <= p <= 0xDFFF)
    return tuple((ch, low) for ch, low in pairs if low != ch)


def lowercase_table(vocab: list[str]) -> dict[str, list[int]]:
    """Characters whose lowercase differs from them and lands in the vocabulary (or is more than
    one character), mapped to the ids of that lowercase. Every other character maps by itself."""
    index = {ch: i for i, ch in enumerate(vocab)}
    return {ch: [index.get(c, 0) for c in low] for ch, low in _changed_by_lower() if len(low) != 1 or low in index}


class CharLMArtifact(nn.Module):
    """The deployable model: an eval-mode copy of a ``CharLM``'s layers plus its vocabulary.

    Attribute types are inferred by TorchScript from their values (``vocab``: List[str],
    ``index``: Dict[str, int], ...); class-level annotations would be strings here
    (``from __future__ import annotations``), which the compiler cannot resolve.
    """

    def __init__(self, model: CharLM, vocab: list[str], lowercase: bool) -> None:
        super().__init__()
        if len(vocab) != model.spec.vocab_size:
            raise ValueError(f"{len(vocab)} vocabulary entries for a model of {model.spec.vocab_size} outputs")
        if len(vocab) < 2 or vocab[0] != UNKNOWN:
            raise ValueError(f"vocab[0] must be the unknown symbol {UNKNOWN!r}, followed by at least one character")
        eager = copy.deepcopy(model).cpu().float().eval()
        self.embedding, self.lstm, self.head = eager.embedding, eager.lstm, eager.head
        self.vocab = list(vocab)
        self.index = {ch: i for i, ch in enumerate(vocab)}
        self.lower_ids = lowercase_table(self.vocab) if lowercase else {UNKNOWN: [0]}
        self.lowercase = lowercase
        self.task = "charlm"
        # An empty prompt starts from the zero state fed a newline (the start of a line of
        # text), or the unknown symbol when the vocabulary has no newline.
        self.start = self.index.get("\n", 0)
        self.chunk = BITS_CHUNK

    def forward(self, tokens: Tensor) -> Tensor:
        """``tokens [batch, steps]`` (ids) -> log-probabilities of the next character
        ``[batch, steps, vocab]``, from the zero state."""
        out, _ = self.lstm(self.embedding(tokens))
        return torch.log_softmax(self.head(out), dim=-1)

    @torch.jit.export
    def encode(self, text: str) -> List[int]:
        """Character ids of ``text`` (lowercased first if the model was trained lowercased);
        characters outside the vocabulary are 0."""
        ids: List[int] = []
        i = 0
        n = len(text)  # bytes
        while i < n:
            lead = ord(text[i])
            width = 1
            if lead >= 0xF0:
                width = 4
            elif lead >= 0xE0:
                width = 3
            elif lead >= 0xC0:
                width = 2
            ch = text[i : i + width]
            i += width
            if self.lowercase and ch in self.lower_ids:
                ids.extend(self.lower_ids[ch])
            else:
                ids.append(self.index.get(ch, 0))
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
        ids = self.encode(text)
        n = len(ids)
        if n < 2:
            raise ValueError("bits needs a text of at least 2 characters, got " + str(n))
        tokens = torch.tensor(ids, dtype=torch.long).unsqueeze(0)
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
        torch.jit.save(scripted, str(tmp))
        reloaded = torch.jit.load(str(tmp))
        with torch.no_grad():
            served = reloaded(tokens)
        max_abs_diff = float((served - eager_log_probs(model, tokens)).abs().max())
        if not max_abs_diff <= TOLERANCE:
            raise LstmopsError(f"export: TorchScript differs from the eager model by {max_abs_diff:.3g} > {TOLERANCE} (log-probability)")
    return {"max_abs_diff": max_abs_diff, "checked_chars": int(tokens.shape[1])}
