"""The long-time-lag problems of Hochreiter & Schmidhuber (1997), "Long Short-Term Memory",
Neural Computation 9(8), as seeded generators, their encodings and the paper's success criteria.

- ``adding`` (Experiment 4): pairs (value in [-1, 1], marker in {-1, 0, 1}); the lengths are
  drawn from T..T + T/10; one of the first ten pairs and one of the first T/2 - 1 still
  unmarked pairs are marked with 1; the first and the last pair carry -1 unless marked (a
  marked first pair has its value set to 0, as the paper says); the target at the end is
  0.5 + (X1 + X2) / 4. Correct: absolute error below 0.04.
- ``embedded_reber`` (Experiment 1): strings of the embedded Reber grammar, one symbol per step
  (7 one-hot inputs), predicting the next symbol after each. Correct: at every step the
  possible next symbols are the most active outputs (each above every impossible one).
- ``temporal_order`` (Experiment 6a): E, then symbols from {a, b, c, d}, with X or Y at
  positions t1 in 10..20 and t2 in 50..60 (counted from 1, the E being position 1), then the
  trigger B; 100..110 symbols. Class Q, R, S, U for XX, XY, YX, YY. Correct: every output's
  absolute error below 0.3 at the end.

A sequence is a record (what the snapshot stores, readable) and an encoding (what the LSTM
reads): ``x [steps, inputs]``, the training ``target [steps, outputs]``, the ``ideal`` output
(the paper's target; for Reber, the grammar's next-symbol distribution: uniform over the
possible symbols, as every branch has probability 1/2) and ``scored [steps]``, the steps
whose output counts. Every sequence is generated from its own seed, so a training row is
just an integer and any process can rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Training sequences until success, as the paper reports them (LSTM rows of its result tables).
PAPER_SEQUENCES = {"adding_100": 74_000, "adding_500": 209_000, "adding_1000": 853_000,
                   "embedded_reber": 8_440, "temporal_order": 31_390}  # fmt: skip


@dataclass(frozen=True)
class Encoded:
    """A batch of sequences, right-padded with zeros to the longest: ``x [batch, steps, inputs]``,
    ``target`` and ``ideal`` ``[batch, steps, outputs]``, ``scored [batch, steps]``, ``lengths``."""

    x: np.ndarray
    target: np.ndarray
    ideal: np.ndarray
    scored: np.ndarray
    lengths: np.ndarray


def pad(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> Encoded:
    """Stack per-sequence (x, target, ideal, scored) into one right-padded batch."""
    lengths = np.array([len(p[0]) for p in parts], dtype=np.int64)
    steps = int(lengths.max())

    def stack(k: int) -> np.ndarray:
        first = parts[0][k]
        out = np.zeros((len(parts), steps, *first.shape[1:]), dtype=first.dtype)
        for i, p in enumerate(parts):
            out[i, : len(p[k])] = p[k]
        return out

    return Encoded(stack(0), stack(1), stack(2), stack(3), lengths)


def one_hot(ids: np.ndarray, size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[ids]


def lookup(alphabet: list[str]) -> np.ndarray:
    """A byte -> symbol id table (-1: not a symbol), so a string is encoded in one indexing."""
    table = np.full(256, -1, dtype=np.int64)
    table[np.frombuffer("".join(alphabet).encode("ascii"), dtype=np.uint8)] = np.arange(len(alphabet))
    return table


def symbol_ids(string: str, table: np.ndarray) -> np.ndarray:
    return table[np.frombuffer(string.encode("ascii"), dtype=np.uint8)]


@dataclass(frozen=True)
class Problem:
    """What every problem has: its name and interface, and how correct outputs are judged."""

    name: str
    inputs: list[str]  # input feature names (symbols for one-hot problems)
    outputs: list[str]  # output names
    kind: str  # "regression" (squared error) or "classification" (cross-entropy, probabilities out)
    columns: list[str] = field(default_factory=list)  # the snapshot's columns besides split

    @property
    def label(self) -> str:
        return self.name

    @property
    def paper_key(self) -> str:
        return self.name

    def settings(self) -> dict[str, Any]:
        return {}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError

    def encode_one(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def problems(self, record: dict[str, Any]) -> list[str]:
        """What in a record contradicts the paper's definition (empty: it is a valid sequence)."""
        raise NotImplementedError

    def encode(self, records: list[dict[str, Any]]) -> Encoded:
        return pad([self.encode_one(r) for r in records])

    def from_seeds(self, seeds: list[int]) -> list[dict[str, Any]]:
        return [self.sample(np.random.default_rng(int(s))) for s in seeds]

    def correct_steps(self, outputs: np.ndarray, batch: Encoded) -> np.ndarray:
        """Per step, whether the output meets the criterion (``outputs`` as the exported model
        gives them: the prediction, or probabilities). Unscored steps count as correct."""
        raise NotImplementedError

    def correct(self, outputs: np.ndarray, batch: Encoded) -> np.ndarray:
        """Per sequence: every scored step correct."""
        return np.all(self.correct_steps(outputs, batch) | ~batch.scored, axis=1)


# --- Experiment 4: the adding problem ----------------------------------------------------------------


ADDING_TOLERANCE = 0.04


@dataclass(frozen=True)
class Adding(Problem):
    T: int = 100

    @property
    def label(self) -> str:
        return f"adding (T={self.T})"

    @property
    def paper_key(self) -> str:
        return f"adding_{self.T}"

    def settings(self) -> dict[str, Any]:
        return {"T": self.T}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        T = self.T
        length = int(rng.integers(T, T + T // 10 + 1))  # between T and T + T/10
        values = rng.uniform(-1.0, 1.0, length).astype(np.float32)
        markers = np.zeros(length, dtype=np.int8)
        markers[0] = markers[-1] = -1
        first = int(rng.integers(0, 10))  # one of the first ten pairs: X1
        second = int(rng.integers(0, T // 2 - 2))  # one of the first T/2 - 1 pairs still unmarked: X2
        second += second >= first
        markers[[first, second]] = 1
        if markers[0] == 1:
            values[0] = 0.0  # "in the rare case where the first pair gets marked, we set X1 to zero"
        target = np.float32(0.5) + (values[first] + values[second]) / np.float32(4.0)
        return {"values": values, "markers": markers, "target": float(target)}

    def encode_one(self, record):
        values = np.asarray(record["values"], dtype=np.float32)
        markers = np.asarray(record["markers"], dtype=np.float32)
        steps = len(values)
        target = np.zeros((steps, 1), dtype=np.float32)
        target[-1, 0] = record["target"]
        scored = np.zeros(steps, dtype=bool)
        scored[-1] = True
        return np.stack([values, markers], axis=1), target, target, scored

    def problems(self, record) -> list[str]:
        values, markers = np.asarray(record["values"]), np.asarray(record["markers"])
        T, found = self.T, []
        if not T <= len(values) <= T + T // 10 or len(markers) != len(values):
            return [f"length {len(values)} outside {T}..{T + T // 10} (or {len(markers)} markers)"]
        if not np.all((values >= -1) & (values <= 1)):
            found.append("a value outside [-1, 1]")
        marked = np.flatnonzero(markers == 1)
        if len(marked) != 2:
            return found + [f"{len(marked)} marked pairs, not 2"]
        if not (marked[0] < 10 and marked[1] < T // 2 - 1):
            found.append(f"marked pairs at {marked.tolist()}: not one in the first 10 and one in the first T/2 - 1")
        unmarked_ends = [i for i in (0, len(values) - 1) if markers[i] != 1]
        if any(markers[i] != -1 for i in unmarked_ends):
            found.append("the first and last pairs are not marked -1")
        others = np.delete(markers, np.r_[marked, unmarked_ends])
        if np.any(others != 0):
            found.append("a marker other than 0 on an ordinary pair")
        if markers[0] == 1 and values[0] != 0:
            found.append("a marked first pair whose value is not 0")
        expected = 0.5 + (values[marked[0]] + values[marked[1]]) / 4
        if abs(record["target"] - expected) > 1e-6:
            found.append(f"target {record['target']:.6f} is not 0.5 + (X1 + X2)/4 = {expected:.6f}")
        return found

    def correct_steps(self, outputs, batch):
        return np.abs(outputs[..., 0] - batch.target[..., 0]) < ADDING_TOLERANCE


# --- Experiment 1: the embedded Reber grammar -----------------------------------------------------------

REBER_SYMBOLS = ["B", "T", "P", "S", "X", "V", "E"]
# The Reber grammar (Reber 1967; Cleeremans et al. 1989) as a deterministic automaton: state ->
# {symbol: next state}; every state's two ways out are equally likely. 0 is the state after B; 5 the
# state whose only way out is E.
REBER = {0: {"T": 1, "P": 2}, 1: {"S": 1, "X": 3}, 2: {"T": 2, "V": 4}, 3: {"X": 2, "S": 5}, 4: {"P": 3, "V": 5}, 5: {"E": None}}
REBER_TABLE = lookup(REBER_SYMBOLS)


def reber_string(rng: np.random.Generator) -> str:
    symbols, state = ["B"], 0
    while state is not None:
        options = sorted(REBER[state])
        symbol = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
        symbols.append(symbol)
        state = REBER[state][symbol]
    return "".join(symbols)


def embedded_reber_string(rng: np.random.Generator) -> str:
    """B, T or P, a Reber string, the same T or P, E."""
    branch = "TP"[int(rng.integers(2))]
    return f"B{branch}{reber_string(rng)}{branch}E"


def possible_next(string: str) -> list[set[str]] | None:
    """For each prefix ``string[:k+1]`` (k < len - 1), the set of symbols the embedded grammar
    allows next; None if the string is not a complete embedded Reber string."""
    if len(string) < 9 or string[0] != "B" or string[1] not in "TP" or string[2] != "B" or string[-1] != "E":
        return None
    branch, sets = string[1], [{"T", "P"}, {"B"}, {"T", "P"}]
    state: int | None = 0
    k = 3
    while state is not None:
        if k >= len(string) or string[k] not in REBER[state]:
            return None
        state = REBER[state][string[k]]
        sets.append(set(REBER[state]) if state is not None else {branch})
        k += 1
    if string[k:] != f"{branch}E":
        return None
    sets.append({"E"})
    return sets


@dataclass(frozen=True)
class EmbeddedReber(Problem):
    @property
    def label(self) -> str:
        return "embedded Reber grammar"

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        return {"string": embedded_reber_string(rng)}

    def encode_one(self, record):
        string = record["string"]
        sets = possible_next(string)
        if sets is None:
            raise ValueError(f"not an embedded Reber string: {string!r}")
        ids = symbol_ids(string, REBER_TABLE)
        n = len(REBER_SYMBOLS)
        ideal = np.zeros((len(string) - 1, n), dtype=np.float32)
        for k, allowed in enumerate(sets):
            ideal[k, [REBER_SYMBOLS.index(s) for s in allowed]] = 1.0 / len(allowed)
        # Input: every symbol but the last; the target after each is the symbol that followed.
        return one_hot(ids[:-1], n), one_hot(ids[1:], n), ideal, np.ones(len(string) - 1, dtype=bool)

    def problems(self, record) -> list[str]:
        return [] if possible_next(record["string"]) is not None else [f"{record['string']!r} is not in the embedded Reber grammar"]

    def correct_steps(self, outputs, batch):
        possible = batch.ideal > 0
        lowest_possible = np.where(possible, outputs, np.inf).min(axis=-1)
        highest_impossible = np.where(possible, -np.inf, outputs).max(axis=-1)
        return lowest_possible > highest_impossible


def unique_strings(problem: EmbeddedReber, rng: np.random.Generator, n: int, exclude: set[str]) -> list[dict[str, Any]]:
    """``n`` strings none of which is in ``exclude`` (the paper's test strings are not training strings)."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        record = problem.sample(rng)
        if record["string"] not in exclude:
            out.append(record)
    return out


# --- Experiment 6a: temporal order ----------------------------------------------------------------------

ORDER_SYMBOLS = ["E", "B", "a", "b", "c", "d", "X", "Y"]
ORDER_CLASSES = {"XX": "Q", "XY": "R", "YX": "S", "YY": "U"}
ORDER_TABLE = lookup(ORDER_SYMBOLS)
DISTRACTORS = np.frombuffer(b"abcd", dtype=np.uint8)
ORDER_TOLERANCE = 0.3


@dataclass(frozen=True)
class TemporalOrder(Problem):
    length: tuple[int, int] = (100, 110)
    t1: tuple[int, int] = (10, 20)
    t2: tuple[int, int] = (50, 60)

    @property
    def label(self) -> str:
        return "temporal order (6a)"

    def settings(self) -> dict[str, Any]:
        return {"length": list(self.length), "t1": list(self.t1), "t2": list(self.t2)}

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        length = int(rng.integers(self.length[0], self.length[1] + 1))
        symbols = DISTRACTORS[rng.integers(0, 4, length)]
        symbols[0], symbols[-1] = ord("E"), ord("B")
        t1 = int(rng.integers(self.t1[0], self.t1[1] + 1))
        t2 = int(rng.integers(self.t2[0], self.t2[1] + 1))
        pair = "".join("XY"[int(b)] for b in rng.integers(0, 2, 2))
        symbols[t1 - 1], symbols[t2 - 1] = ord(pair[0]), ord(pair[1])  # positions count from 1
        return {"string": symbols.tobytes().decode("ascii"), "label": ORDER_CLASSES[pair]}

    def encode_one(self, record):
        ids = symbol_ids(record["string"], ORDER_TABLE)
        steps, classes = len(ids), list(ORDER_CLASSES.values())
        target = np.zeros((steps, len(classes)), dtype=np.float32)
        target[-1, classes.index(record["label"])] = 1.0
        scored = np.zeros(steps, dtype=bool)
        scored[-1] = True
        return one_hot(ids, len(ORDER_SYMBOLS)), target, target, scored

    def problems(self, record) -> list[str]:
        s, found = record["string"], []
        if not self.length[0] <= len(s) <= self.length[1]:
            found.append(f"length {len(s)} outside {self.length[0]}..{self.length[1]}")
        if not (s[:1] == "E" and s[-1:] == "B"):
            found.append("does not start with E and end with the trigger B")
        relevant = [i + 1 for i, ch in enumerate(s) if ch in "XY"]
        if set(s[1:-1]) - set("abcdXY"):
            found.append(f"symbols outside a, b, c, d, X, Y: {sorted(set(s[1:-1]) - set('abcdXY'))}")
        if len(relevant) != 2:
            return found + [f"{len(relevant)} X/Y symbols, not 2"]
        t1, t2 = relevant
        if not (self.t1[0] <= t1 <= self.t1[1] and self.t2[0] <= t2 <= self.t2[1]):
            found.append(f"X/Y at positions {t1} and {t2}, outside {list(self.t1)} and {list(self.t2)}")
        expected = ORDER_CLASSES[s[t1 - 1] + s[t2 - 1]]
        if record["label"] != expected:
            found.append(f"class {record['label']}, but {s[t1 - 1]}, {s[t2 - 1]} is class {expected}")
        return found

    def correct_steps(self, outputs, batch):
        return np.all(np.abs(outputs - batch.target) < ORDER_TOLERANCE, axis=-1)


def problem(source: str, settings: dict[str, Any] | None = None) -> Problem:
    """The problem a ``long_lag.source`` names, with its section's settings."""
    s = settings or {}
    if source == "adding":
        return Adding("adding", ["value", "marker"], ["target"], "regression", ["values", "markers", "target"], T=int(s.get("T", 100)))
    if source == "embedded_reber":
        return EmbeddedReber("embedded_reber", REBER_SYMBOLS, REBER_SYMBOLS, "classification", ["string"])
    if source == "temporal_order":
        return TemporalOrder(
            "temporal_order", ORDER_SYMBOLS, list(ORDER_CLASSES.values()), "classification", ["string", "label"],
            length=tuple(s.get("length", (100, 110))), t1=tuple(s.get("t1", (10, 20))), t2=tuple(s.get("t2", (50, 60))),
        )  # fmt: skip
    raise ValueError(f"unknown long_lag source {source!r}")
