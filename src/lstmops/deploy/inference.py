"""SageMaker handlers for an lstmops forecaster: shipped as ``code/inference.py`` in model.tar.gz.

AWS's PyTorch inference container calls ``model_fn`` once with the unpacked model directory
(``model.pt``, the TorchScript file), then ``input_fn`` -> ``predict_fn`` -> ``output_fn`` per
request. The lstmops image ignores this file and serves ``model.pt`` itself; both answer the
same JSON. Self-contained on purpose: torch, numpy and the standard library only, nothing from
lstmops (which the AWS container does not have).

Requests: JSON ``{"inputs": windows x steps x features}`` (or one window, steps x features), or
CSV with one window (a row per step, a column per feature, an optional header naming the
features). Response: ``{"predictions": windows x horizon}`` in the target's original units.
Bad input raises ValueError with a message saying what is wrong.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os

import numpy as np
import torch

MODEL_FILE = "model.pt"
SHA256_ENV = "LSTMOPS_MODEL_SHA256"  # the sha256 model.pt must have (set by lstmops deploy sagemaker)
JSON_TYPE = "application/json"
CSV_TYPES = ("text/csv", "application/csv")


def model_fn(model_dir: str) -> torch.jit.ScriptModule:
    """Load ``model.pt``; with ``LSTMOPS_MODEL_SHA256`` set (the deploy sets it on the SageMaker
    model to the registered version's sha256), only a file with exactly that hash."""
    path = os.path.join(model_dir, MODEL_FILE)
    check_sha256(path, os.environ.get(SHA256_ENV, "").strip().lower())
    model = torch.jit.load(path, map_location="cpu")
    return model.eval()


def check_sha256(path: str, expected: str) -> None:
    """Raise ValueError, naming both hashes, unless the file's sha256 is ``expected`` ('' : no check)."""
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ValueError(f"{path}: refused: its sha256 is {digest.hexdigest()}, {SHA256_ENV} expects {expected}")


def input_fn(request_body: bytes | str, request_content_type: str | None) -> tuple[torch.Tensor, list[str] | None]:
    """(windows, CSV header or None): the header is checked against the model in predict_fn."""
    kind = (request_content_type or JSON_TYPE).split(";", 1)[0].strip().lower()
    text = request_body.decode("utf-8") if isinstance(request_body, (bytes, bytearray)) else request_body
    if not text.strip():
        raise ValueError("empty request body")
    if kind == JSON_TYPE:
        array, header = from_json(text), None
    elif kind in CSV_TYPES:
        array, header = from_csv(text)
    else:
        raise ValueError(f"unsupported content type {kind!r}: send {JSON_TYPE} or text/csv")
    if array.ndim == 2:
        array = array[None]  # one window: a batch of one
    if array.ndim != 3:
        raise ValueError(f"expected windows x steps x features (3-d) or one window (2-d), got {array.ndim}-d")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), header


def from_json(text: str) -> np.ndarray:
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"body is not valid JSON ({exc})") from None
    if not isinstance(document, dict) or len(document.keys() & {"inputs", "instances"}) != 1:
        raise ValueError('expected a JSON object with "inputs": windows x steps x features')
    try:
        array = np.asarray(document.get("inputs", document.get("instances")))
    except ValueError:
        raise ValueError("inputs must be rectangular: every window the same steps, every step the same features") from None
    # numpy would turn booleans into numbers and keep strings or nulls as objects: refuse them here.
    if array.dtype.kind not in "iuf":
        raise ValueError("inputs must be a rectangular array of numbers (found strings, nulls, booleans or ragged lists)")
    return array


def from_csv(text: str) -> tuple[np.ndarray, list[str] | None]:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    header = None
    if rows and not all(is_number(cell) for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise ValueError("CSV has no data rows")
    width = len(header) if header else len(rows[0])
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            raise ValueError(f"CSV line {number} has {len(row)} values, expected {width}")
        bad = next((cell for cell in row if not is_number(cell)), None)
        if bad is not None:
            raise ValueError(f"CSV line {number}: {bad.strip()!r} is not a number")
    return np.asarray([[float(cell) for cell in row] for row in rows]), header


def is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def predict_fn(input_data: tuple[torch.Tensor, list[str] | None], model: torch.jit.ScriptModule) -> torch.Tensor:
    windows, header = input_data
    features = list(getattr(model, "features", []))
    if header is not None and features:
        if sorted(header) != sorted(features):
            raise ValueError(f"CSV columns {header} do not match the model's features {features}")
        windows = windows[:, :, [header.index(name) for name in features]]  # the model's column order
    try:
        with torch.inference_mode():
            return model(windows)
    except torch.jit.Error as exc:  # the model's own input check: keep its message, not the trace
        raise ValueError(script_message(exc)) from None


def script_message(exc: Exception) -> str:
    """A TorchScript ``raise ValueError(msg)`` reaches Python with the interpreter's traceback
    before it; its last line is ``builtins.ValueError: msg``."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return last.split(": ", 1)[1] if last.startswith("builtins.") and ": " in last else last


def output_fn(prediction: torch.Tensor, accept: str | None) -> tuple[str, str]:
    kind = (accept or JSON_TYPE).split(";", 1)[0].strip().lower()
    if kind not in (JSON_TYPE, "*/*"):
        raise ValueError(f"unsupported accept type {kind!r}: this model answers {JSON_TYPE}")
    return json.dumps({"predictions": prediction.tolist()}), JSON_TYPE
