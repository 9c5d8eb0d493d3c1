"""Baselines for the character model: an add-one unigram, an interpolated modified Kneser-Ney
n-gram (Chen & Goodman 1998: three discounts per order, for counts 1, 2 and 3+), both fitted on
the training ids, and the share of a sample's words that are real (training-text) words.

The n-gram stores, per order, sorted numpy arrays of integer-encoded n-grams and contexts (an
n-gram of ids ``a b c`` is the base-V number ``(a*V + b)*V + c``), so fitting is a few sorts and
scoring a few binary searches per order, vectorized over every position at once.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from lstmops.errors import ConfigError

# A word: a maximal run of letters and apostrophes with at least one letter, outer apostrophes
# dropped (so a quoted 'word' and an elided 'tis match the training text's words either way).
WORD = re.compile(r"(?:[^\W\d_]|')+")


def unigram_bits(train: np.ndarray, test: np.ndarray, vocab_size: int) -> float:
    """Mean bits per character of ``test`` under add-one smoothed character frequencies of ``train``."""
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size) + 1.0
    probs = counts / counts.sum()
    return float(-np.log2(probs[np.asarray(test, dtype=np.int64)]).mean())


def _discounts(counts: np.ndarray) -> np.ndarray:
    """[0, D1, D2, D3+] from the count-of-counts n1..n4 (Chen & Goodman's estimates), each kept
    within (0, c] so every seen context leaves some mass to the lower order and none goes negative.
    With too little data for the estimates (some n_i = 0), fixed moderate discounts."""
    n1, n2, n3, n4 = np.bincount(np.minimum(counts, 5), minlength=6)[1:5].astype(float)
    if min(n1, n2, n3, n4) == 0:
        return np.array([0.0, 0.5, 1.0, 1.5])
    y = n1 / (n1 + 2 * n2)
    d = np.array([0.0, 1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
    return np.clip(d, [0.0, 0.05, 0.05, 0.05], [0.0, 1.0, 2.0, 3.0])


@dataclass(frozen=True)
class _Level:
    """One order k: its k-grams (sorted keys, counts: raw at the top order, continuation counts
    below), discounts, and per context (the first k-1 ids): total count and back-off weight."""

    grams: np.ndarray
    counts: np.ndarray
    discounts: np.ndarray
    contexts: np.ndarray
    totals: np.ndarray
    backoff: np.ndarray  # gamma(h) = sum over followers of D(count) / total(h)

    @classmethod
    def build(cls, grams: np.ndarray, counts: np.ndarray, vocab_size: int) -> _Level:
        discounts = _discounts(counts)
        contexts, starts = np.unique(grams // vocab_size, return_index=True)  # grams sorted: groups contiguous
        totals = np.add.reduceat(counts, starts)
        backoff = np.add.reduceat(discounts[np.minimum(counts, 3)], starts) / totals
        return cls(grams, counts, discounts, contexts, totals, backoff)

    def interpolate(self, contexts: np.ndarray, grams: np.ndarray, lower: np.ndarray) -> np.ndarray:
        """P_k(w | h) for each (context h, gram h w) given P_{k-1}(w | h'): discounted count plus
        the back-off mass times the lower order; a context never seen keeps the lower order."""
        ci = np.minimum(np.searchsorted(self.contexts, contexts), len(self.contexts) - 1)
        seen = self.contexts[ci] == contexts
        gi = np.minimum(np.searchsorted(self.grams, grams), len(self.grams) - 1)
        count = np.where(self.grams[gi] == grams, self.counts[gi], 0)
        own = (count - self.discounts[np.minimum(count, 3)]) / self.totals[ci]
        return np.where(seen, own + self.backoff[ci] * lower, lower)


class NGram:
    """Interpolated modified Kneser-Ney character n-gram over token ids.

    P(w | h) interpolates down to a uniform distribution over all ``vocab_size`` ids, so every id
    (the unknown symbol 0 included) has a probability above zero and the probabilities over the
    vocabulary sum to 1 for any context. Lower orders use continuation counts (how many distinct
    ids precede an n-gram), which is what makes it Kneser-Ney."""

    def __init__(self, levels: list[_Level], vocab_size: int) -> None:
        self.levels = levels  # levels[k - 1] is order k
        self.vocab_size = vocab_size
        self.order = len(levels)

    @classmethod
    def fit(cls, train: np.ndarray, vocab_size: int, order: int) -> NGram:
        if vocab_size**order >= 1 << 63:
            raise ConfigError(
                f"charlm.ngram_order={order} with {vocab_size} characters: n-grams do not fit 63-bit keys "
                f"(lower charlm.ngram_order)"
            )
        ids = np.asarray(train, dtype=np.int64)
        if len(ids) < order:
            raise ValueError(f"{len(ids)} training ids are fewer than the n-gram order {order}")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"training ids must lie in 0..{vocab_size - 1}")
        grams, counts = np.unique(_keys(ids, order, vocab_size), return_counts=True)
        levels = [_Level.build(grams, counts, vocab_size)]
        for k in range(order - 1, 0, -1):
            # Continuation counts: each distinct (k+1)-gram x h w adds one to its suffix h w.
            grams, counts = np.unique(grams % vocab_size**k, return_counts=True)
            levels.insert(0, _Level.build(grams, counts, vocab_size))
        return cls(levels, vocab_size)

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """P(ids[i] | up to order-1 previous ids) for every i: the first positions use the
        longer contexts they have."""
        v = self.vocab_size
        probs = np.full(len(ids), 1.0 / v)
        context = np.zeros(len(ids), dtype=np.int64)  # the last m ids before i, base-V
        for m, level in enumerate(self.levels):  # m: context length of order m + 1
            if m:
                context[m:] += ids[: len(ids) - m] * v ** (m - 1)
            ok = slice(m, None)
            probs[ok] = level.interpolate(context[ok], context[ok] * v + ids[ok], probs[ok])
        return probs

    def bits(self, tokens: np.ndarray, warmup: int = 0) -> float:
        """Mean bits per character of ``tokens``; the first ``warmup`` ids only serve as context
        (pass the end of the previous span there to score a span as if read on from it)."""
        ids = np.asarray(tokens, dtype=np.int64)
        if len(ids) <= warmup:
            raise ValueError(f"nothing to score: {len(ids)} ids, warmup {warmup}")
        return float(-np.log2(self._positions(ids)[warmup:]).mean())

    def distribution(self, context: list[int]) -> np.ndarray:
        """P(w | context) for every id w (only the last order-1 ids of the context matter)."""
        v = self.vocab_size
        history = [int(i) for i in context[-(self.order - 1) :]] if self.order > 1 else []
        words = np.arange(v, dtype=np.int64)
        probs = np.full(v, 1.0 / v)
        key = 0
        for m, level in enumerate(self.levels):
            if m > len(history):
                break
            if m:
                key += history[-m] * v ** (m - 1)
            probs = level.interpolate(np.full(v, key), key * v + words, probs)
        return probs

    def sample(self, prompt: list[int], chars: int, temperature: float, rng: np.random.Generator) -> list[int]:
        """``chars`` ids following ``prompt`` (the prompt itself is not returned). Probabilities are
        raised to 1/temperature and renormalized; temperature 0 takes the most likely id. The
        unknown symbol 0 is never produced."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        history, out = list(prompt), []
        for _ in range(chars):
            probs = self.distribution(history)
            probs[0] = 0.0
            if temperature == 0:
                nxt = int(np.argmax(probs))
            else:
                logits = np.log(np.maximum(probs, 1e-300)) / temperature
                weights = np.exp(logits - logits.max())  # the likeliest id weighs 1: no overflow at small T
                weights[0] = 0.0
                cumulative = np.cumsum(weights)
                nxt = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
                nxt = min(max(nxt, 1), self.vocab_size - 1)
            history.append(nxt)
            out.append(nxt)
        return out


def _keys(ids: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
    """Base-V keys of every window of ``order`` ids, the oldest id most significant."""
    n = len(ids) - order + 1
    keys = np.zeros(n, dtype=np.int64)
    for j in range(order):
        keys = keys * vocab_size + ids[j : j + n]
    return keys


def _words(text: str, cut: bool = False) -> list[str]:
    """Lowercased words in order; ``cut``: leave out a last word that runs to the end of the text."""
    found = list(WORD.finditer(text))
    if cut and found and found[-1].end() == len(text):
        found.pop()
    return [w for w in (m.group().lower().strip("'") for m in found) if w]


def vocabulary_words(train_text: str) -> set[str]:
    """The training text's words (lowercased), built once and reused for every sample."""
    return {w.strip("'") for w in set(WORD.findall(train_text.lower()))} - {""}  # findall: no Match objects


def word_share(sample: str, train_text: str | AbstractSet[str]) -> float:
    """Share of the sample's words that are words of the training text (pass ``vocabulary_words``
    output to avoid re-reading it). A sample that ends inside a word was cut there, so its last
    word is left out; a first word continuing the prompt is the caller's to include (pass the
    prompt along) or not. A sample without words scores 0: it produced nothing word-like."""
    known = vocabulary_words(train_text) if isinstance(train_text, str) else train_text
    words = _words(sample, cut=True)
    return sum(w in known for w in words) / len(words) if words else 0.0
