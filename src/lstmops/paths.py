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
