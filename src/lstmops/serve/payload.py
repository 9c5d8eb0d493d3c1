"""Request bodies to windows: JSON as ``mlflow models serve`` accepts tensors, or CSV for one
window. Anything else is a PayloadError carrying the HTTP status and a message for the client.

Sizes are checked against ``Limits`` before anything the size of the input is allocated: the
number of windows and each one's steps from the parsed lists' lengths (or a CSV's line count)
before numpy builds an array, and a classifier's padded size before it is padded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import orjson

JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv", "application/csv")


class PayloadError(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server; each refusal is a 413 naming the limit."""

    max_windows: int
    max_steps: int
    max_elements: int  # windows x steps x features, a classifier's padding included

    def windows(self, count: int, noun: str = "windows") -> None:
        if count > self.max_windows:
            raise PayloadError(
                f"{count:,} {noun} in one request; the limit is {self.max_windows:,} (LSTMOPS_MAX_WINDOWS): split the request",
                413,
            )

    def steps(self, count: int, index: int = 0, noun: str = "window") -> None:
        if count > self.max_steps:
            raise PayloadError(f"{noun} {index} has {count:,} steps; the limit is {self.max_steps:,} (LSTMOPS_MAX_STEPS)", 413)

    def elements(self, count: int, longest: int, features: int, noun: str = "windows") -> None:
        total = count * longest * features
        if total > self.max_elements:
            raise PayloadError(
                f"{count:,} {noun} x {longest:,} steps x {features} features make {total:,} values; the limit is "
                f"{self.max_elements:,} (LSTMOPS_MAX_ELEMENTS): send fewer or shorter {noun}",
                413,
            )


UNLIMITED = Limits(max_windows=10**9, max_steps=10**9, max_elements=10**12)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def accepted_kind(body: bytes, content_type: str | None) -> str:
    """The request's media type, once it is one the server reads (415 otherwise) with a body (400)."""
    kind = media_type(content_type)
    if kind not in JSON_TYPES + CSV_TYPES:
        raise PayloadError(
            f"unsupported content type {kind or '(none)'!r}: send application/json or text/csv", status=415
        )
    if not body or body.isspace():  # not body.strip(): that copies a body of megabytes
        raise PayloadError("empty request body")
    return kind


def parse(body: bytes, content_type: str | None, features: list[str], limits: Limits = UNLIMITED) -> np.ndarray:
    """(windows, steps, features) float32, not yet checked against the model."""
    kind = accepted_kind(body, content_type)
    windows = parse_json(body, limits) if kind in JSON_TYPES else parse_csv(body, features, limits)
    return windows[None] if windows.ndim == 2 else windows  # one window: a batch of one


def check_window_sizes(inputs: object, limits: Limits) -> None:
    """Windows per request and steps per window, from the lists' lengths, before numpy
    copies them; whatever is not a list of lists is left for the shape checks to name."""
    if not isinstance(inputs, list) or not inputs:
        return
    if isinstance(inputs[0], list) and inputs[0] and not isinstance(inputs[0][0], list):
        limits.steps(len(inputs))  # one window, steps x features
        return
    limits.windows(len(inputs))
    for i, window in enumerate(inputs):
        if isinstance(window, list):
            limits.steps(len(window), i)
    first = inputs[0][0] if isinstance(inputs[0], list) and inputs[0] else None
    if isinstance(first, list):  # rectangular or refused later: the first window's width stands for all
        limits.elements(len(inputs), max(len(w) if isinstance(w, list) else 0 for w in inputs), len(first))


def load_json(body: bytes) -> object:
    """The parsed body. With orjson a window parses in about a quarter of the stdlib's time
    (benchmarks/serve_parts.py: 0.10 ms against 0.38, numpy's copy included); what it refuses (the
    NaN and Infinity literals Python clients send, integers beyond 64 bits, UTF-16) is read again
    by the stdlib, whose message names what is wrong when neither can."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise PayloadError(f"body is not valid JSON ({str(exc).splitlines()[0][:200]})") from None


def parse_json(body: bytes, limits: Limits = UNLIMITED) -> np.ndarray:
    """``{"inputs": [[[...]]]}`` (windows x steps x features) or one window (steps x features);
    ``instances`` is accepted as mlflow accepts it."""
    document = load_json(body)
    if not isinstance(document, dict) or len(document.keys() & {"inputs", "instances"}) != 1:
        raise PayloadError('expected a JSON object with "inputs": windows x steps x features (or one window)')
    inputs = document.get("inputs", document.get("instances"))
    check_window_sizes(inputs, limits)
    array = numeric_array(inputs)
    # numpy turns true/false among numbers into 1.0/0.0; look for them only when the bytes occur
    if (b"true" in body or b"false" in body) and any(isinstance(v, bool) for v in leaves(inputs)):
        raise PayloadError("inputs must contain only numbers (found true/false)")
    return array


def leaves(value: object):
    """Scalars of a (by now known to be shallow and rectangular) nested list."""
    if isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def numeric_array(value: object) -> np.ndarray:
    """A rectangular array of numbers, 2-d or 3-d; strings, nulls, booleans and ragged lists are
    refused here because numpy would quietly turn some of them into numbers."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise PayloadError("inputs must be a rectangular array: every window the same steps, every step the same features") from None
    if array.dtype.kind not in "iuf":
        raise PayloadError("inputs must contain only numbers (found strings, nulls, booleans or nested objects)")
    if array.ndim not in (2, 3):
        raise PayloadError(
            f"expected windows x steps x features (3-d) or one window, steps x features (2-d); got {array.ndim}-d"
            f" of shape {list(array.shape)}"
        )
    return array.astype(np.float32)


def parse_csv(body: bytes, features: list[str], limits: Limits = UNLIMITED) -> np.ndarray:
    """One window: a row per step, a column per feature, in the model's order, or any order
    under a header naming the model's features."""
    # Lines counted on the bytes, before a list of rows (a CSV bomb's million of them) is built;
    # one more than the limit allows for a header.
    lines = body.count(b"\n") + 1 - body.endswith(b"\n")
    if lines > limits.max_steps + 1:
        limits.steps(lines - 1)
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PayloadError("CSV body is not UTF-8 text") from None
    rows = [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]
    header = None
    if rows and not all(is_number(cell) for cell in rows[0]):
        header, rows = rows[0], rows[1:]
    if not rows:
        raise PayloadError("CSV has no data rows")
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise PayloadError(f"CSV rows have different numbers of columns: {sorted(widths)}")
    try:
        window = np.array([[float(cell) for cell in row] for row in rows], dtype=np.float32)
    except ValueError:
        bad = next(f"row {i + 1}" for i, row in enumerate(rows) if not all(is_number(c) for c in row))
        raise PayloadError(f"CSV {bad} holds a value that is not a number") from None
    return window if header is None else reorder(window, header, features)


def reorder(window: np.ndarray, header: list[str], features: list[str]) -> np.ndarray:
    if sorted(header) != sorted(features):
        raise PayloadError(f"CSV header {header} does not name the model's features {features}")
    return window[:, [header.index(name) for name in features]]


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def predictions_json(forecasts: np.ndarray) -> bytes:
    # as Python floats: the digits json.dumps wrote before (orjson writes float32 values shorter)
    return orjson.dumps({"predictions": forecasts.tolist()})


# --- a sequence classifier's input: sequences of any lengths -------------------------------------


def parse_sequences(body: bytes, content_type: str | None, features: list[str],
                    limits: Limits = UNLIMITED) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(sequences, longest, features) float32, zero-padded, and each sequence's length (int64): a
    classifier's input, not yet checked against the model. JSON: ``{"inputs": [sequence, ...]}``,
    each sequence steps x features and of any length (or one sequence, steps x features); CSV:
    one sequence, as one forecast window is sent."""
    kind = accepted_kind(body, content_type)
    sequences = json_sequences(body, limits) if kind in JSON_TYPES else [parse_csv(body, features, limits)]
    widths = {s.shape[1] for s in sequences}
    if len(widths) > 1:
        odd = next(i for i, s in enumerate(sequences) if s.shape[1] != sequences[0].shape[1])
        raise PayloadError(f"sequence {odd} has {sequences[odd].shape[1]} features, sequence 0 has {sequences[0].shape[1]}")
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    # The padded batch is sequences x longest x features: one long sequence among many short
    # ones would make it huge from a small body, so its size is checked before it exists.
    limits.elements(len(sequences), int(lengths.max()), sequences[0].shape[1], "sequences")
    padded = np.zeros((len(sequences), int(lengths.max()), sequences[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(sequences):
        padded[i, : len(s)] = s
    return padded, lengths


def json_sequences(body: bytes, limits: Limits = UNLIMITED) -> list[np.ndarray]:
    """The sequences of ``{"inputs": ...}`` (or ``instances``): a list of steps x features arrays,
    or one such array; each rectangular and numeric, with at least one step."""
    document = load_json(body)
    if not isinstance(document, dict) or len(document.keys() & {"inputs", "instances"}) != 1:
        raise PayloadError(
            'expected a JSON object with "inputs": a list of sequences, each steps x features (or one sequence)'
        )
    inputs = document.get("inputs", document.get("instances"))
    if not isinstance(inputs, list) or not inputs:
        raise PayloadError('"inputs" must be a non-empty list of sequences, each steps x features')
    one = isinstance(inputs[0], list) and bool(inputs[0]) and not isinstance(inputs[0][0], list)
    raw = [inputs] if one else inputs  # steps x features: a batch of one
    limits.windows(len(raw), "sequences")
    for i, item in enumerate(raw):
        if isinstance(item, list):
            limits.steps(len(item), i, "sequence")
    sequences = [sequence_array(item, i) for i, item in enumerate(raw)]  # shape checks bound the nesting first
    if (b"true" in body or b"false" in body) and any(isinstance(v, bool) for v in leaves(inputs)):
        raise PayloadError("inputs must contain only numbers (found true/false)")
    return sequences


def sequence_array(value: object, index: int) -> np.ndarray:
    """One sequence: a rectangular steps x features array of numbers with at least one step."""
    if not isinstance(value, list) or not value:
        raise PayloadError(f"sequence {index} is empty or not a list of steps")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, RecursionError):
        raise PayloadError(f"sequence {index} is not rectangular: every step must have the same features") from None
    if array.dtype.kind not in "iuf":
        raise PayloadError(f"sequence {index} must contain only numbers (found strings, nulls, booleans or nested objects)")
    if array.ndim != 2:
        raise PayloadError(
            f"sequence {index}: expected steps x features (2-d), got {array.ndim}-d of shape {list(array.shape)}"
        )
    return array.astype(np.float32)


def classifications_json(probabilities: np.ndarray, classes: list[str]) -> bytes:
    """The most probable class name per sequence, every class's probability, and the class order."""
    names = [classes[i] for i in probabilities.argmax(axis=1)]
    return orjson.dumps({"predictions": names, "probabilities": probabilities.tolist(), "classes": classes})
