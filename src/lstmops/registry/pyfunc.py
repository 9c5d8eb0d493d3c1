"""The registered MLflow model: the TorchScript file as a pyfunc that nothing unpickles.

``mlflow.pyfunc.load_model("models:/NAME@champion")`` and ``mlflow models serve`` import this
module (the model's ``loader_module``) and call ``_load_pyfunc`` on the model's data folder,
which holds the TorchScript file and ``lstmops.json`` (its sha256, size, signature and input
names). The file is checked (size, sha256 and, with a verify key configured, the signature:
``registry/verify.py``) and loaded with ``torch.jit.load``. No pickle, no cloudpickle, and no
Python code is read from the artifact store: the loader is the installed lstmops, so the model
loads with ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``, where lstmops is installed
(``mlflow models serve --env-manager local``).

MLflow's "models from code" (``python_model=`` a .py file) was the alternative: it avoids pickle
too, but stores that .py file with the model and executes it at load, so whoever can write the
artifact store still runs code in every process that loads the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

RECORD = "lstmops.json"
DATA = "torchscript"


def log_model(file: Path, record, signature, metadata: dict, pip_requirements: list[str]):
    """Log ``file`` as the active run's pyfunc model ``model``; returns MLflow's ModelInfo."""
    import mlflow.pyfunc

    inputs = [spec.name for spec in signature.inputs.inputs] if signature is not None and signature.inputs.has_input_names() else []
    with tempfile.TemporaryDirectory(prefix="lstmops-pyfunc-") as tmp:
        data = Path(tmp) / DATA
        data.mkdir()
        shutil.copyfile(file, data / "model.ts")
        (data / RECORD).write_text(json.dumps({
            "sha256": record.sha256, "size": record.size, "signature": record.signature,
            "signing_key": record.key_id, "inputs": inputs,
        }, sort_keys=True))  # fmt: skip
        return mlflow.pyfunc.log_model(
            name="model", loader_module=__name__, data_path=str(data), signature=signature,
            pip_requirements=pip_requirements, metadata=metadata,
        )  # fmt: skip


class TorchScriptModel:
    """What ``_load_pyfunc`` returns: ``predict`` runs the file's forward pass."""

    def __init__(self, module, inputs: list[str]) -> None:
        self.module, self.inputs = module, inputs

    def predict(self, model_input, params=None):
        import numpy as np
        import torch

        if isinstance(model_input, dict):  # named tensors (a classifier: x and lengths), in the signature's order
            names = self.inputs or list(model_input)
            args = [torch.from_numpy(np.ascontiguousarray(model_input[name])) for name in names]
        else:
            args = [torch.from_numpy(np.ascontiguousarray(np.asarray(model_input)))]
        with torch.inference_mode():
            out = self.module(*args)
        return out.numpy()

    def get_raw_model(self):
        return self.module


def _load_pyfunc(data_path: str, model_config=None) -> TorchScriptModel:
    import torch

    from lstmops.registry.verify import Recorded, check_file

    folder = Path(data_path)
    record = json.loads((folder / RECORD).read_text())
    expected = Recorded(record["sha256"], int(record["size"]), DATA, record.get("signature"), record.get("signing_key"))
    check_file(folder / "model.ts", expected, f"MLflow model {folder.parent.name}")
    module = torch.jit.load(str(folder / "model.ts"), map_location="cpu").eval()
    return TorchScriptModel(module, list(record.get("inputs") or []))
