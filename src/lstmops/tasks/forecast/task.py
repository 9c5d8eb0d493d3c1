"""The forecasting task: a numeric series in, the next ``window.horizon`` steps of the target out.

Data: a table (file, partitions or S3) validated with Great Expectations, split chronologically,
scaled with training statistics (``data/``). Training: the LSTM forecaster in one of two batch
modes (``train.mode``):
- ``window``: the textbook loop, one LSTM pass over ``input_steps`` rows per training window;
- ``sequence``: truncated BPTT as in character-level language models: one pass over a span
  (``burn_in`` rows, then ``positions`` more) trains the head at every position after the
  burn-in, so a pass yields ``positions`` windows instead of one. Each epoch covers every
  training window exactly once in both modes.
Metrics: RMSE, MAE, MAPE, R² and MASE in original units beside persistence and seasonal-naive
baselines. Artifact: a TorchScript file taking raw windows (batch, steps, features) and returning
forecasts. With ``data.gaps: segment`` the series has segments: windows and spans stay inside one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops import paths
from lstmops.tasks.forecast.settings import Settings
from lstmops.tasks.forecast.prepare import Prepared
from lstmops.tasks.forecast.windows import gather, gather_spans, history_available, origins, run_chunks, span_chunks
from lstmops.io import write_json
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec
from lstmops.tasks.base import Evaluated, Exported, GateInputs

# --- data stages --------------------------------------------------------------------------------


def ingest(cfg: Settings, root: Path) -> str:
    from lstmops.data.clean import describe
    from lstmops.data.ingest import ingest as run

    snapshot = run(cfg.data, root, root / paths.SNAPSHOT)
    note = f" (resampled to {cfg.data.frequency})" if cfg.data.irregular_index == "resample" else ""
    shape = f"{snapshot.rows:,} rows x {snapshot.columns} columns"
    cleaned = f"\n  cleaning: {describe(snapshot.cleaning, cfg.data)}" if snapshot.cleaning is not None else ""
    return f"ingested {shape} from {cfg.data.source} -> {paths.SNAPSHOT}{note}{cleaned}"


def validate(cfg: Settings, root: Path, data: str | None = None) -> str:
    """Validate the snapshot, or with ``data`` any file or s3:// source, standalone."""
    import pandas as pd

    from lstmops.data.clean import describe, read_counts
    from lstmops.data.ingest import load_frame
    from lstmops.data.validate import validate as run
    from lstmops.tasks.forecast.prepare import series_rules

    if data is None:
        frame, label, report = pd.read_parquet(root / paths.SNAPSHOT), cfg.data.source, paths.VALIDATION
        cleaning = read_counts(root / paths.SNAPSHOT)
    else:
        frame = load_frame(cfg.data, data, root)
        label, report = data, paths.VALIDATION.with_name(f"validation-{Path(data).stem or 'data'}.json")
        cleaning = frame.attrs.pop("cleaning", None)
    # Only the pipeline's own snapshot becomes the accepted reference; a standalone check does not.
    accepted = root / paths.ACCEPTED_PROFILE
    rules = partial(series_rules, cfg)  # too short for the split, or constant: refused here, not at prepare
    checks = run(cfg.data, frame, root / report, label, accepted, accept=data is None, cleaning=cleaning, rules=rules)
    cleaned = f"\n  cleaned before validation: {describe(cleaning, cfg.data)}" if cleaning is not None else ""
    return f"validation passed: {len(checks)} expectations -> {report} (and .html){cleaned}"


def prepare(cfg: Settings, root: Path) -> str:
    from lstmops.tasks.forecast.prepare import prepare as run

    meta = run(cfg, root / paths.SNAPSHOT, root / paths.PREPARED)
    s = meta.split
    line = (
        f"prepared {s.length:,} rows: train {s.train_end:,}, validation {s.val_end - s.train_end:,}, "
        f"test {s.length - s.val_end:,} (scaler fitted on train) -> {paths.PREPARED}"
    )
    return line if meta.windows is None else f"{line}\n  {segment_line(meta.windows)}"


def segment_line(w: dict[str, int]) -> str:
    """What ``gaps: segment`` kept and lost, for the prepare line (also in meta.json and MLflow)."""
    spans = ", ".join(f"{name} {w[f'{part}_kept']:,} kept / {w[f'{part}_lost']:,} lost"
                      for part, name in (("train", "train"), ("val", "validation"), ("test", "test")))  # fmt: skip
    return (
        f"segments: {w['segments']} kept, {w['segments_dropped']} dropped as too short for one window "
        f"({w['rows_dropped']:,} rows); windows {spans} (lost: crossing a gap or in a dropped segment)"
    )


# --- training: what the engine (train.py) runs ------------------------------------------------------


def model_spec(cfg: Settings) -> ModelSpec:
    return ModelSpec(
        n_features=len(cfg.data.features),
        hidden_size=cfg.model.hidden_size,
        num_layers=cfg.model.num_layers,
        dropout=cfg.model.dropout,
        horizon=cfg.window.horizon,
        seasonal_skip=cfg.model.seasonal_skip or 0,
        target_index=cfg.target_index,
    )


# --- batches: what one optimizer step sees ------------------------------------------------------


def rows_per_batch(cfg: Settings) -> int:
    return cfg.train.batch_size if cfg.train.mode == "window" else cfg.train.spans_per_batch


def epoch_batches(
    cfg: Settings, n_origins: int, generator: torch.Generator, origin_rows: np.ndarray | None = None
) -> list[torch.Tensor]:
    """This epoch's global batches as index tensors into the training origins, in random order.

    window mode: rows are origin indices. sequence mode: rows are (first index, length) chunks,
    cut within runs of consecutive ``origin_rows`` (the origins' rows; None: one run) so that a
    span never steps over a gap between segments.
    A short last batch joins the one before it, so every batch has at least ``rows_per_batch``
    rows and can be split across that many ranks; the batches never depend on the rank count.
    """
    size = rows_per_batch(cfg)
    if cfg.train.mode == "window":
        batches = list(torch.randperm(n_origins, generator=generator).split(size))
    else:
        phase = int(torch.randint(cfg.train.positions, (1,), generator=generator))
        positions = cfg.train.positions
        cut = span_chunks(n_origins, positions, phase) if origin_rows is None else run_chunks(origin_rows, positions, phase)
        chunks = torch.tensor(cut, dtype=torch.int64)
        batches = list(chunks[torch.randperm(len(chunks), generator=generator)].split(size))
    if len(batches) > 1 and len(batches[-1]) < size:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


class TrainView(nn.Module):
    """What a training step calls (and DDP wraps): the forecast at every span position after the
    burn-in (sequence mode), or after the window's last step (window mode)."""

    def __init__(self, model: LSTMForecaster, cfg: Settings) -> None:
        super().__init__()
        self.model, self.sequence = model, cfg.train.mode == "sequence"
        self.skip, self.grad_through_burn_in = cfg.burn_in - 1, cfg.train.backprop_burn_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence:
            return self.model(x)
        return self.model.forward_all(x, self.skip, self.grad_through_burn_in)


def windows_in(batch: torch.Tensor, cfg: Settings) -> int:
    """Training windows in a (global) batch: origins, or the chunk lengths of its spans."""
    return len(batch) if cfg.train.mode == "window" else int(batch[:, 1].sum())


def batch_errors(net: nn.Module, series, all_origins, rows, meta: Prepared, cfg: Settings) -> tuple[torch.Tensor, int]:
    """Sum of squared errors (scaled units) over the rows' windows and horizon steps, and the
    number of windows. ``net`` is a ``TrainView`` (possibly DDP-wrapped)."""
    if cfg.train.mode == "window":
        x, y = gather(series, all_origins[rows], meta.input_steps, meta.horizon, meta.target_index)
        return ((net(x).float() - y) ** 2).sum(), len(rows)
    starts, lengths = all_origins[rows[:, 0]], rows[:, 1].to(series.device)
    x, y, mask = gather_spans(series, starts, lengths, cfg.train.positions, cfg.burn_in, meta.horizon, meta.target_index)
    pred = net(x).float()
    return ((pred - y) ** 2).sum(dim=2)[mask].sum(), int(mask.sum())


def batch_loss(model: LSTMForecaster, series, all_origins, batch, meta: Prepared, cfg: Settings) -> tuple[torch.Tensor, int]:
    """Mean squared error of one batch in one process, and how many windows it trained."""
    sse, n = batch_errors(TrainView(model, cfg), series, all_origins, batch, meta, cfg)
    return sse / (n * meta.horizon), n


def mean_loss(model: nn.Module, series: torch.Tensor, batch_origins: torch.Tensor, meta: Prepared, batch: int) -> float:
    """Mean squared error (scaled units) of the window forecasts at the given origins."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in batch_origins.split(batch):
            x, y = gather(series, chunk, meta.input_steps, meta.horizon, meta.target_index)
            total += float(nn.functional.mse_loss(model(x).float(), y, reduction="sum"))
            count += y.numel()
    return total / count


def validation_loss(model, series, val_origins, meta: Prepared, cfg: Settings) -> float:
    """Validation MSE as the mode trains: windows, or spans (cheap: one pass per span)."""
    if cfg.train.mode == "window":
        return mean_loss(model, series, val_origins, meta, 4 * cfg.train.batch_size)
    model.eval()
    chunks = torch.tensor(run_chunks(val_origins.cpu().numpy(), cfg.train.positions, 0), dtype=torch.int64)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in chunks.split(4 * cfg.train.spans_per_batch):
            loss, n = batch_loss(model, series, val_origins, batch, meta, cfg)
            total, count = total + float(loss) * n, count + n
    return total / count




def load_model(path: Path) -> tuple[LSTMForecaster, dict]:
    """Rebuild the eager model from a checkpoint written by ``save_checkpoint``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMForecaster(ModelSpec(**ckpt["spec"]))
    # A checkpoint from before the seasonal skip has no weight for it: the skip is off there.
    model.load_state_dict({"seasonal": model.seasonal.detach().clone(), **ckpt["state_dict"]})
    return model.eval(), ckpt


class ForecastTrainer:
    """The forecaster's side of the training engine (``train.Trainer``)."""

    unit, batch_setting = "windows", ""

    def __init__(self, cfg: Settings, prepared_dir: Path, device: torch.device) -> None:
        self.cfg, self.meta = cfg, Prepared.load(prepared_dir)
        meta = self.meta
        self.series = torch.from_numpy(np.load(prepared_dir / "series.npy")).to(device)
        # A span reads burn_in rows before its first origin: in sequence mode that is the history
        # an origin needs inside its segment (burn_in >= input_steps; equal by default).
        history = cfg.burn_in if cfg.train.mode == "sequence" else meta.input_steps
        self.train_rows = origins(meta.split, "train", meta.input_steps, meta.horizon, meta.segments, history)
        self.train_origins = torch.from_numpy(self.train_rows).to(device)
        val = origins(meta.split, "val", meta.input_steps, meta.horizon, meta.segments, history)
        self.val_origins = torch.from_numpy(val).to(device)
        self.spec = model_spec(cfg)
        self.model = LSTMForecaster(self.spec).to(device)
        self.terms_per_unit = meta.horizon
        self.batch_setting = "train.batch_size" if cfg.train.mode == "window" else "train.spans_per_batch"

    def view(self) -> nn.Module:
        return TrainView(self.model, self.cfg)

    def rows_per_batch(self) -> int:
        return rows_per_batch(self.cfg)

    def epoch_batches(self, generator: torch.Generator) -> list[torch.Tensor]:
        return epoch_batches(self.cfg, len(self.train_origins), generator, self.train_rows)

    def units(self, batch: torch.Tensor) -> int:
        return windows_in(batch, self.cfg)

    def errors(self, net: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        return batch_errors(net, self.series, self.train_origins, rows, self.meta, self.cfg)

    def start_epoch(self) -> None:
        """Nothing carries over: every span starts from a zero state."""

    def validation_loss(self, model: nn.Module) -> float:
        return validation_loss(model, self.series, self.val_origins, self.meta, self.cfg)

    def fingerprint(self) -> list:
        segments = [self.meta.segments] if self.meta.segments is not None else []
        return [self.meta.split.__dict__, self.meta.mean, self.meta.std, *segments]

    def summary(self) -> dict:
        windows = {"windows": self.meta.windows} if self.meta.windows is not None else {}
        return {"mode": self.cfg.train.mode, "train_windows": len(self.train_origins), **windows}


def trainer(cfg: Settings, root: Path, device: torch.device) -> ForecastTrainer:
    return ForecastTrainer(cfg, root / paths.PREPARED, device)


# --- evaluation, export and the gate's scoring ----------------------------------------------------------


def _eval_inputs(cfg: Settings, root: Path):
    import pandas as pd

    meta = Prepared.load(root / paths.PREPARED)
    series = np.load(root / paths.SERIES)
    raw_target = pd.read_parquet(root / paths.SNAPSHOT, columns=[cfg.data.target])[cfg.data.target].to_numpy(np.float64)
    model, _ = load_model(root / paths.CHECKPOINT)
    return meta, series, raw_target, model


def evaluate(cfg: Settings, root: Path) -> Evaluated:
    from lstmops.tasks.forecast.evaluate import best_baseline, mase_scale, skill, write_plots
    from lstmops.tasks.forecast.evaluate import evaluate as run

    meta, series, raw_target, model = _eval_inputs(cfg, root)
    period = mase_period(cfg)
    scale = mase_scale(raw_target, meta, period)
    periods = cfg.evaluate.seasonal_periods
    test_origins, actual, forecasts, overall, per_step = run(model, meta, series, raw_target, periods, scale)
    best = best_baseline(overall)
    metrics = {"test": overall, "test_windows": len(test_origins), "horizon": meta.horizon, "target": meta.target,
               **{f"skill_vs_{name}": skill(overall, name) for name in overall if name != "lstm"},
               "best_baseline": best, "skill_vs_best_baseline": skill(overall, best),
               "mase_scale": {"period": period, "train_mae": scale}}  # fmt: skip
    write_json(root / paths.METRICS, metrics)
    per_step.to_csv(root / paths.PER_STEP, index=False, float_format="%.6g")
    plots = write_plots(root / paths.PLOTS, meta, test_origins, actual, forecasts, per_step, cfg.evaluate.plot_days)
    by_step = [("test_lstm_rmse_by_step", float(r.rmse), int(r.step)) for r in per_step[per_step.forecaster == "lstm"].itertuples()]
    flat = {f"test_{name}_{m}": v for name, ms in overall.items() for m, v in ms.items()}
    files = [root / paths.METRICS, root / paths.PER_STEP, *plots]
    report, line, diag_metrics = diagnostics(cfg, root, meta, series, model, test_origins, actual, forecasts["lstm"])
    summary = format_metrics(overall, meta.target) + line
    return Evaluated(summary, files, {**flat, **diag_metrics}, by_step, {"diagnostics": report})


def diagnostics(cfg: Settings, root: Path, meta, series, model, test_origins, actual, predicted):
    """The diagnostics report (diagnostics.py) on the test windows: its files, the summary's line
    about it (with a leading newline) and its MLflow metrics; a page saying it is off when it is."""
    import pandas as pd

    from lstmops.tasks.forecast import diagnostics as diag

    out = root / paths.DIAGNOSTICS
    if not cfg.evaluate.diagnostics.enabled:
        diag.placeholder(out, "Diagnostics are off (evaluate.diagnostics.enabled: false).")
        return [], "", {}
    times = pd.Series(meta.timestamps())  # the prepared rows' times: no second read of the snapshot
    d, files = diag.for_forecaster(cfg.evaluate.diagnostics, meta, series, model, test_origins, actual, predicted, times, out)
    return files, f"\n{d.line(paths.DIAGNOSTICS / 'index.html')}", d.metrics()


def mase_period(cfg: Settings) -> int:
    """MASE's seasonal period: ``evaluate.mase_period``, else the first seasonal period, else 1."""
    return cfg.evaluate.mase_period or next(iter(cfg.evaluate.seasonal_periods.values()), 1)


def format_metrics(overall: dict[str, dict[str, float]], target: str) -> str:
    """A small table: one row per forecaster, test metrics in original units (MASE: scaled)."""
    mase = all("mase" in m for m in overall.values())  # metrics.json of a run before MASE has none
    head = f"  {'forecaster':<22}{'RMSE':>9}{'MAE':>9}{'MAPE%':>8}{'R2':>8}" + (f"{'MASE':>8}" if mase else "")
    lines = [f"test metrics ({target}, original units)", head]
    for name, m in overall.items():
        row = f"  {name:<22}{m['rmse']:>9.4f}{m['mae']:>9.4f}{m['mape']:>8.2f}{m['r2']:>8.3f}"
        lines.append(row + (f"{m['mase']:>8.3f}" if mase else ""))
    return "\n".join(lines)


def _signature(n_features: int, horizon: int):
    """Tensor signature with batch and history length free (-1): any history length works."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, n_features))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, horizon))]),
    )


def export(cfg: Settings, root: Path) -> Exported:
    from lstmops.tasks.forecast.export import export as run

    meta, series, _, model = _eval_inputs(cfg, root)
    check = run(model, meta, series, root / paths.TORCHSCRIPT)
    metadata = {"features": meta.features, "target": meta.target, "input_steps": meta.input_steps,
                "horizon": meta.horizon, "frequency": meta.frequency}  # fmt: skip
    summary = (
        f"exported {paths.TORCHSCRIPT} (max |TorchScript - eager| = {check['max_abs_diff']:.2e} "
        f"on {check['checked_windows']} test windows)"
    )
    return Exported(check, _signature(len(meta.features), meta.horizon), metadata, summary)


@dataclass(frozen=True)
class Holdout:
    """The newest test windows as raw data in original units: what the gate and `lstmops compare`
    score TorchScript files on."""

    meta: Prepared
    raw: np.ndarray  # (rows, features) float32, the snapshot's features
    test_origins: np.ndarray
    actual: np.ndarray  # (windows, horizon) float64
    history_left: int  # the history every test window has inside its segment


def holdout(root: Path) -> Holdout:
    import pandas as pd

    meta = Prepared.load(root / paths.PREPARED)
    raw = pd.read_parquet(root / paths.SNAPSHOT, columns=meta.features).to_numpy(np.float32)
    test_origins = origins(meta.split, "test", meta.input_steps, meta.horizon, meta.segments)
    # The history every test window has inside its segment: a champion needing more cannot score them.
    history_left = int(history_available(test_origins, meta.segments).min())
    actual = raw[test_origins[:, None] + np.arange(meta.horizon), meta.target_index].astype(np.float64)
    return Holdout(meta, raw, test_origins, actual, history_left)


def seen(cfg: Settings, root: Path) -> dict[str, str]:
    """The time span the model trained and validated on: its first row, and the last timestamp of
    the training and of the validation span (every target it fitted or was selected on lies in
    ``[series_from, validated_until]``)."""
    meta = Prepared.load(root / paths.PREPARED)
    times = meta.timestamps()
    return {"series_from": times[0].isoformat(), "trained_until": times[meta.split.train_end - 1].isoformat(),
            "validated_until": times[meta.split.val_end - 1].isoformat()}  # fmt: skip


def unseen_windows(h: Holdout, records: list[dict[str, str]]) -> np.ndarray:
    """Mask of the test windows whose every target time lies outside each record's span: what no
    version trained or validated on. A window's inputs may reach into seen rows: they are history,
    which a forecaster always reads."""
    import pandas as pd

    times = h.meta.timestamps()
    first = times[h.test_origins].to_numpy()
    last = times[h.test_origins + h.meta.horizon - 1].to_numpy()
    keep = np.ones(len(h.test_origins), dtype=bool)
    for r in records:
        start, until = (pd.Timestamp(r[k]).to_datetime64() for k in ("series_from", "validated_until"))
        keep &= (last < start) | (first > until)
    return keep


def gate_inputs(cfg: Settings, root: Path, metrics: dict, seen: list[dict[str, str]]) -> GateInputs:
    """Forecasts from raw test windows in original units, on the windows whose targets no version
    in ``seen`` trained or validated on; the naive baselines on the same windows. A champion may
    use its own history length."""
    from lstmops.tasks.forecast.evaluate import baselines as naive
    from lstmops.tasks.forecast.evaluate import error_metrics
    from lstmops.registry.gate import champion_problem, forecast
    from lstmops.stats import LOSS_OF_METRIC, window_losses

    full = holdout(root)
    keep = unseen_windows(full, seen)
    h = Holdout(full.meta, full.raw, full.test_origins[keep], full.actual[keep], full.history_left)
    meta, metric, last = h.meta, cfg.promote.metric, {}

    def forecasts(model) -> np.ndarray:  # the last model's, kept: score and losses both need them
        if last.get("model") is not model:
            history = int(getattr(model, "input_steps", meta.input_steps))
            last.update(model=model, out=forecast(model, h.raw, h.test_origins, history))
        return last["out"]

    def score_model(model) -> float:
        return float(error_metrics(h.actual, forecasts(model))[metric])

    def losses(model) -> np.ndarray:
        return window_losses(h.actual, forecasts(model), LOSS_OF_METRIC[metric])

    def problem(model) -> str | None:
        return champion_problem(model, meta.features, meta.horizon, h.history_left)

    baselines = {k: v[metric] for k, v in metrics["test"].items() if k != "lstm"}
    if 0 < len(h.test_origins) < len(full.test_origins):  # evaluate scored every test window; the gate scores these
        target = h.raw[:, meta.target_index].astype(np.float64)
        forecasts_of = naive(target, h.test_origins, meta.horizon, cfg.evaluate.seasonal_periods)
        baselines = {k: float(error_metrics(h.actual, f)[metric]) for k, f in forecasts_of.items()}
    return GateInputs(metric, baselines, score_model, problem, "windows", len(full.test_origins), int(keep.sum()),
                      scored_on(full, keep), losses, meta.horizon)  # fmt: skip


def scored_on(h: Holdout, keep: np.ndarray) -> str:
    """Which test windows the gate scored (by the time of their first target), and how many it left out."""
    times = h.meta.timestamps()
    dropped = f"; {int((~keep).sum())} left out: a compared version trained or validated on their targets" if (~keep).any() else ""
    if not keep.any():
        return f"none of {len(keep)} test windows{dropped}"
    origins_kept = h.test_origins[keep]
    span = f"{times[origins_kept[0]]:%Y-%m-%d %H:%M} to {times[origins_kept[-1]]:%Y-%m-%d %H:%M}"
    return f"{int(keep.sum())} of {len(keep)} test windows, origins {span}{dropped}"


def metrics_lines(metrics: dict) -> list[str]:
    """The run's closing summary: the metrics table and the skill against the best naive baseline
    (lowest test RMSE), with MASE's scale."""
    lines = [format_metrics(metrics["test"], metrics.get("target", "target"))]
    best = metrics.get("best_baseline")
    if best is None:  # a metrics.json written before best_baseline: its one skill line
        skills = {k: v for k, v in metrics.items() if k.startswith("skill_vs_")}
        return lines + [f"{k.replace('_', ' ')}: {v:+.1%} (RMSE reduction)" for k, v in skills.items()]
    skill = metrics["skill_vs_best_baseline"]
    lines.append(f"skill vs the best naive baseline, {best.replace('_', ' ')}: {skill:+.1%} (RMSE reduction)")
    if "mase_scale" in metrics:
        scale = metrics["mase_scale"]
        lines.append(
            f"MASE: MAE / {scale['train_mae']:.4g}, the in-sample MAE on the training span of the naive forecast "
            f"{scale['period']} steps back"
        )
    return lines


def artifact_line(root: Path, exported: dict) -> str:
    return (
        f"TorchScript: {(root / exported['torchscript']).resolve()} "
        f"(raw windows of {exported['input_steps']}+ steps x {len(exported['features'])} features "
        f"-> {exported['horizon']} forecasts, original units)"
    )


def lineage_tags(cfg: Settings) -> dict[str, str]:
    """The columns a version's artifact reads, in order (the gate and the server check them)."""
    return {"features": json.dumps(cfg.data.features)}


# --- capabilities (tasks/base.py): backtest, tune, compare -----------------------------------------


def backtest(cfg: Settings, root: Path) -> dict | None:
    """The rolling-origin backtest's report (backtest.py); None when evaluate.backtest_folds is 0."""
    from lstmops.tasks.forecast.backtest import backtest as run

    return None if cfg.evaluate.backtest_folds == 0 else run(cfg, root)


def backtest_lines(report: dict) -> list[str]:
    from lstmops.tasks.forecast.backtest import report_lines

    return report_lines(report)


def tune(root: Path, overrides: list[str], trials: int | None, timeout_s: float | None) -> list[str]:
    """``lstmops tune`` (tune.py): an Optuna study over ``tune.space``; the lines it prints."""
    from lstmops.tasks.forecast.tune import summary_lines
    from lstmops.tasks.forecast.tune import tune as run

    return summary_lines(run(root, overrides, trials, timeout_s))


def compare(cfg: Settings, root: Path, a: str, b: str, loss: str, level: float, registry) -> tuple[dict, list[str]]:
    """``lstmops compare`` (compare.py): two forecasters on this pipeline's test windows."""
    import tempfile

    from lstmops.tasks.forecast import compare as cmp

    with tempfile.TemporaryDirectory(prefix="lstmops-compare-") as tmp:
        a_file, b_file = (cmp.locate(arg, Path(tmp) / side, registry) for arg, side in ((a, "a"), (b, "b")))
        result = cmp.compare(cfg, root, a_file, b_file, loss, level)  # type: ignore[arg-type]
    return cmp.as_json(result), cmp.render(result)


# --- capabilities (tasks/base.py): predict and monitor (monitor.py) ------------------------------------


def predict(cfg: Settings, root: Path, model, after, limit: int):
    """``lstmops predict``: the champion's forecasts from each new origin of the newest data."""
    from lstmops.tasks.forecast.monitor import predict as run

    return run(cfg, root, model, after, limit)


def observe(cfg: Settings, root: Path):
    """``lstmops monitor``: actuals, features, naive forecasts and the training span of the newest data."""
    from lstmops.tasks.forecast.monitor import observe as run

    return run(cfg, root)
