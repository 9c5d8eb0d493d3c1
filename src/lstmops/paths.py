"""Where each stage reads and writes, relative to the project root (dvc.yaml lists the same paths)."""

from pathlib import Path

SNAPSHOT = Path("data/raw/snapshot.parquet")
VALIDATION = Path("reports/validation.json")
ACCEPTED_PROFILE = Path("data/accepted_profile.json")  # last snapshot that passed validation, for drift
PREPARED = Path("data/prepared")
SERIES = PREPARED / "series.npy"
PREPARED_META = PREPARED / "meta.json"
CHECKPOINT = Path("models/checkpoint.pt")
TRAIN_SUMMARY = Path("models/train.json")
METRICS = Path("reports/metrics.json")
PER_STEP = Path("reports/per_step.csv")
BACKTEST = Path("reports/backtest.json")  # the rolling-origin backtest's folds and their spread
HISTORY = Path("reports/history.csv")
PLOTS = Path("reports/plots")
DIAGNOSTICS = Path("reports/diagnostics")  # the forecaster's diagnostics page (diagnostics.py)
TORCHSCRIPT = Path("models/model.ts")
EXPORT_SUMMARY = Path("models/export.json")
REGISTERED = Path("models/registered.json")
GATE = Path("reports/gate.json")  # the promotion verdict of the latest registered version
TRAIN_STATE = Path("models/train_state.pt")
TRAIN_RUN = Path("models/train_state.json")  # MLflow run of an unfinished training, for resume

# A project holds many pipelines: the root folder (the default one) and pipelines/NAME/, each with
# its own params.yaml and dvc.yaml and the outputs above under it. What they share lives at the
# project root: the MLflow store (one registry), flows/, the DVC repository and its cache.
PIPELINES = Path("pipelines")
PARAMS = Path("params.yaml")
DVC_FILE = Path("dvc.yaml")


def project_root(pipeline: Path) -> Path:
    """The project a pipeline folder belongs to: the nearest folder at or above it that holds a DVC
    repository (``.dvc/``), else a git one; the folder itself when neither is found."""
    start = pipeline.resolve()
    for marker in (".dvc", ".git"):
        for folder in (start, *start.parents):
            if (folder / marker).is_dir():
                return folder
    return start
