"""Train: fit the LSTM on training windows, early-stop on validation loss, keep the best checkpoint.

One seed drives weight init and window order, so CPU runs are bit-identical run to run.
On CUDA the series lives on the GPU, cuDNN runs the LSTM and bf16 autocast is used when
``train.precision`` is ``bf16``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops.config import Config
from lstmops.data.prepare import Prepared
from lstmops.data.windows import gather, origins
from lstmops.io import atomic_path
from lstmops.model import LSTMForecaster, ModelSpec


@dataclass
class History:
    """Per-epoch curve; written as reports/history.csv (a DVC plot) and logged to MLflow."""

    rows: list[dict[str, float]] = field(default_factory=list)

    def best(self) -> dict[str, float]:
        return min(self.rows, key=lambda r: r["val_loss"])

    def to_csv(self) -> str:
        keys = ["epoch", "train_loss", "val_loss", "learning_rate"]
        lines = [",".join(keys)] + [",".join(f"{row[k]:.6g}" for k in keys) for row in self.rows]
        return "\n".join(lines) + "\n"


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch (weights, dropout) and return the generator that orders windows."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Denormal floats make CPU LSTM steps several times slower and change nothing visible.
    torch.set_flush_denormal(True)
    return torch.Generator().manual_seed(seed)


def model_spec(cfg: Config) -> ModelSpec:
    return ModelSpec(
        n_features=len(cfg.data.features),
        hidden_size=cfg.model.hidden_size,
        num_layers=cfg.model.num_layers,
        dropout=cfg.model.dropout,
        horizon=cfg.window.horizon,
    )


def mean_loss(model: nn.Module, series: torch.Tensor, batch_origins: torch.Tensor, meta: Prepared, batch: int) -> float:
    """Mean squared error (scaled units) over the given origins, without gradients."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in batch_origins.split(batch):
            x, y = gather(series, chunk, meta.input_steps, meta.horizon, meta.target_index)
            total += float(nn.functional.mse_loss(model(x).float(), y, reduction="sum"))
            count += y.numel()
    return total / count


def save_checkpoint(path: Path, model: nn.Module, spec: ModelSpec, epoch: int, val_loss: float) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "spec": spec.to_dict(), "epoch": epoch, "val_loss": val_loss}, tmp)


def load_model(path: Path) -> tuple[LSTMForecaster, dict]:
    """Rebuild the eager model from a checkpoint written by ``save_checkpoint``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMForecaster(ModelSpec(**ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="win", unit_scale=True, leave=False, file=sys.stderr, disable=None)


def train_epoch(model, optimizer, series, epoch_origins, meta, cfg: Config, device, desc: str) -> float:
    """One pass over ``epoch_origins`` in batches; returns the mean training loss."""
    use_bf16 = device.type == "cuda" and cfg.train.precision == "bf16"
    model.train()
    losses = []
    with progress(len(epoch_origins), desc) as bar:
        for chunk in epoch_origins.split(cfg.train.batch_size):
            x, y = gather(series, chunk.to(device, non_blocking=True), meta.input_steps, meta.horizon, meta.target_index)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = nn.functional.mse_loss(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            losses.append(loss.detach())
            bar.update(len(chunk))
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return float(torch.stack(losses).mean())


def fit(cfg: Config, prepared_dir: Path, checkpoint: Path, log_metrics=None) -> tuple[History, dict]:
    """Train with early stopping; the best epoch's weights are written to ``checkpoint``.

    ``log_metrics(dict, step)`` receives per-epoch metrics (MLflow in the CLI, nothing in tests).
    """
    meta = Prepared.load(prepared_dir)
    generator = seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    torch.backends.cudnn.benchmark = False
    series = torch.from_numpy(np.load(prepared_dir / "series.npy")).to(device)
    train_origins = torch.from_numpy(origins(meta.split, "train", meta.input_steps, meta.horizon))
    val_origins = torch.from_numpy(origins(meta.split, "val", meta.input_steps, meta.horizon)).to(device)

    spec = model_spec(cfg)
    model = LSTMForecaster(spec).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    per_epoch = min(cfg.train.windows_per_epoch or len(train_origins), len(train_origins))

    history, best, stale, started = History(), math.inf, 0, time.perf_counter()
    for epoch in range(1, cfg.train.epochs + 1):
        epoch_origins = train_origins[torch.randperm(len(train_origins), generator=generator)[:per_epoch]]
        tick = time.perf_counter()
        train_loss = train_epoch(model, optimizer, series, epoch_origins, meta, cfg, device, f"epoch {epoch}/{cfg.train.epochs}")
        seconds = time.perf_counter() - tick
        val_loss = mean_loss(model, series, val_origins, meta, 4 * cfg.train.batch_size)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "learning_rate": scheduler.get_last_lr()[0]}
        history.rows.append(row)
        scheduler.step()
        improved = val_loss < best
        if improved:
            best, stale = val_loss, 0
            save_checkpoint(checkpoint, model, spec, epoch, val_loss)
        else:
            stale += 1
        rate = per_epoch / seconds
        if log_metrics:
            log_metrics({**row, "windows_per_s": rate}, epoch)
        print(
            f"epoch {epoch:>3}/{cfg.train.epochs}  train {train_loss:.5f}  val {val_loss:.5f}"
            f"{'  *best' if improved else ''}  {rate:,.0f} windows/s",
            file=sys.stderr,
        )
        if stale >= cfg.train.patience:
            print(f"early stop: no validation improvement for {stale} epochs", file=sys.stderr)
            break
    summary = {
        "best_epoch": int(history.best()["epoch"]),
        "best_val_loss": history.best()["val_loss"],
        "epochs_run": len(history.rows),
        "fit_seconds": round(time.perf_counter() - started, 1),
        "device": device.type,
        "train_windows": len(train_origins),
    }
    return history, summary
