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
    """A registered version's TorchScript file (its run's torchscript/model.ts), and its label."""
    import mlflow

    from lstmops.registry.gate import TORCHSCRIPT_ARTIFACT

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path=TORCHSCRIPT_ARTIFACT, dst_path=tmp)
        return load_file(Path(path)), f"{version.name} version {version.version}"


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
