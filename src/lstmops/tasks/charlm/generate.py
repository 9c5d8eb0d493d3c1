"""``lstmops generate``: sample text from an exported language model, a file or a registry version.

The TorchScript file carries its vocabulary and sampler, so this needs torch only (and MLflow to
fetch a registered version); the same calls work without lstmops installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lstmops.errors import LstmopsError


def load_file(path: Path):
    import torch

    if not path.is_file():
        raise LstmopsError(f"{path}: model file not found")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise LstmopsError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})") from None
    kind = getattr(model, "task", "forecast")
    if kind != "charlm":
        raise LstmopsError(f"{path}: a {kind} model; generate needs a character-level language model (task: charlm)")
    return model


def load_version(client, version) -> tuple[object, str]:
    """A registered version's TorchScript file, checked against the sha256 (and signature) it
    records before it is loaded, and its label."""
    from lstmops.registry.verify import fetch_verified

    with tempfile.TemporaryDirectory(prefix="lstmops-generate-") as tmp:
        return load_file(fetch_verified(version, Path(tmp))), f"{version.name} version {version.version}"


def generate(model, prompt: str, chars: int, temperature: float, seed: int) -> str:
    """The sampled continuation; the sampler's own refusals (temperature <= 0, ...) become one line."""
    import torch

    if chars < 0:
        raise LstmopsError(f"--chars {chars}: must be 0 or more")
    if not temperature > 0:
        raise LstmopsError(f"--temperature {temperature}: must be above 0")
    try:
        return str(model.generate(prompt, chars, temperature, seed))
    except torch.jit.Error as exc:
        raise LstmopsError(f"generate: {str(exc).strip().splitlines()[-1]}") from None
