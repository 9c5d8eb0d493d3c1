"""Train: fit the LSTM, early-stop on validation loss, keep the best weights.

Two modes (``train.mode``):
- ``window``: the textbook loop, one LSTM pass over ``input_steps`` rows per training window;
- ``sequence``: truncated BPTT as in character-level language models: one pass over a span
  (``burn_in`` rows, then ``positions`` more) trains the head at every position after the
  burn-in, so a pass yields ``positions`` windows instead of one. Each epoch covers every
  training window exactly once in both modes.

One seed drives weight init, dropout and window order, so CPU runs are bit-identical. The
training state (model, optimizer, schedule, RNG states, history) is saved atomically every
``checkpoint_every`` epochs; a run that was killed resumes from it and ends bit-identical on CPU.
On CUDA the series lives on the GPU, cuDNN runs the LSTM, and bf16 autocast is used when
``train.precision`` is ``bf16``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops import distributed
from lstmops.config import Config
from lstmops.errors import ConfigError
from lstmops.data.prepare import Prepared
from lstmops.data.windows import gather, gather_spans, origins, span_chunks
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


# --- batches: what one optimizer step sees ------------------------------------------------------


def rows_per_batch(cfg: Config) -> int:
    return cfg.train.batch_size if cfg.train.mode == "window" else cfg.train.spans_per_batch


def epoch_batches(cfg: Config, n_origins: int, generator: torch.Generator) -> list[torch.Tensor]:
    """This epoch's global batches as index tensors into the training origins, in random order.

    window mode: rows are origin indices. sequence mode: rows are (first index, length) chunks.
    A short last batch joins the one before it, so every batch has at least ``rows_per_batch``
    rows and can be split across that many ranks; the batches never depend on the rank count.
    """
    size = rows_per_batch(cfg)
    if cfg.train.mode == "window":
        batches = list(torch.randperm(n_origins, generator=generator).split(size))
    else:
        phase = int(torch.randint(cfg.train.positions, (1,), generator=generator))
        chunks = torch.tensor(span_chunks(n_origins, cfg.train.positions, phase), dtype=torch.int64)
        batches = list(chunks[torch.randperm(len(chunks), generator=generator)].split(size))
    if len(batches) > 1 and len(batches[-1]) < size:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


class TrainView(nn.Module):
    """What a training step calls (and DDP wraps): the forecast at every span position after the
    burn-in (sequence mode), or after the window's last step (window mode)."""

    def __init__(self, model: LSTMForecaster, cfg: Config) -> None:
        super().__init__()
        self.model, self.sequence = model, cfg.train.mode == "sequence"
        self.skip, self.grad_through_burn_in = cfg.burn_in - 1, cfg.train.backprop_burn_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence:
            return self.model(x)
        return self.model.forward_all(x, self.skip, self.grad_through_burn_in)


def windows_in(batch: torch.Tensor, cfg: Config) -> int:
    """Training windows in a (global) batch: origins, or the chunk lengths of its spans."""
    return len(batch) if cfg.train.mode == "window" else int(batch[:, 1].sum())


def batch_errors(net: nn.Module, series, all_origins, rows, meta: Prepared, cfg: Config) -> tuple[torch.Tensor, int]:
    """Sum of squared errors (scaled units) over the rows' windows and horizon steps, and the
    number of windows. ``net`` is a ``TrainView`` (possibly DDP-wrapped)."""
    if cfg.train.mode == "window":
        x, y = gather(series, all_origins[rows], meta.input_steps, meta.horizon, meta.target_index)
        return ((net(x).float() - y) ** 2).sum(), len(rows)
    starts, lengths = all_origins[rows[:, 0]], rows[:, 1].to(series.device)
    x, y, mask = gather_spans(series, starts, lengths, cfg.train.positions, cfg.burn_in, meta.horizon, meta.target_index)
    pred = net(x).float()
    return ((pred - y) ** 2).sum(dim=2)[mask].sum(), int(mask.sum())


def batch_loss(model: LSTMForecaster, series, all_origins, batch, meta: Prepared, cfg: Config) -> tuple[torch.Tensor, int]:
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


def validation_loss(model, series, val_origins, meta: Prepared, cfg: Config) -> float:
    """Validation MSE as the mode trains: windows, or spans (cheap: one pass per span)."""
    if cfg.train.mode == "window":
        return mean_loss(model, series, val_origins, meta, 4 * cfg.train.batch_size)
    model.eval()
    chunks = torch.tensor(span_chunks(len(val_origins), cfg.train.positions, 0), dtype=torch.int64)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in chunks.split(4 * cfg.train.spans_per_batch):
            loss, n = batch_loss(model, series, val_origins, batch, meta, cfg)
            total, count = total + float(loss) * n, count + n
    return total / count


# --- schedule and checkpoints ---------------------------------------------------------------------


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """The learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to
    zero as ``progress`` (the share of the decay done) goes from 0 to 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def lr_lambda(total_steps: int, warmup: int):
    """``lr_factor`` over a planned number of steps, for ``LambdaLR``."""
    return lambda step: lr_factor(step, warmup, (step - warmup) / max(1, total_steps - warmup))


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)


def uses_bf16(device: torch.device, cfg: Config) -> bool:
    return device.type == "cuda" and cfg.train.precision == "bf16"


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, averaged, cfg: Config) -> None:
    """Backpropagate ``loss``, clip the gradient norm, step, and update the weight average."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    if averaged is not None:
        averaged.update_parameters(model)


def fingerprint(cfg: Config, meta: Prepared) -> str:
    """What a saved training state must match to be resumed: every setting that shapes training."""
    relevant = cfg.model_dump(mode="json", include={"seed", "window", "model", "train"})
    relevant["train"].pop("checkpoint_every")
    blob = json.dumps([relevant, meta.split.__dict__, meta.mean, meta.std], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state_dict: dict, spec: ModelSpec, epoch: int, val_loss: float) -> None:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, "spec": spec.to_dict(), "epoch": epoch, "val_loss": val_loss}, tmp)


def load_model(path: Path) -> tuple[LSTMForecaster, dict]:
    """Rebuild the eager model from a checkpoint written by ``save_checkpoint``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMForecaster(ModelSpec(**ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def average_of(model: LSTMForecaster, decay: float | None):
    """An EMA copy of ``model`` to update after each step, or None when decay is None.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's
    ExponentialMovingAverage does), so a short run is not dragged back to its initial weights.
    """
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel

    def ema(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + int(n)) / (10 + int(n)))
        return averaged * d + current * (1 - d)

    return AveragedModel(model, avg_fn=ema)


def cpu_copy(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@dataclass
class Progress:
    """Mutable training progress: what a resumable state holds besides the torch objects."""

    epoch: int = 0
    best: float = math.inf
    stale: int = 0
    best_state: dict | None = None
    history: History = field(default_factory=History)


def save_state(path: Path, key: str, model, averaged, optimizer, scheduler, generator, progress: Progress) -> None:
    state = {
        "fingerprint": key,
        "model": cpu_copy(model.state_dict()),
        "averaged": cpu_copy(averaged.state_dict()) if averaged is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "progress": {**progress.__dict__, "history": progress.history.rows},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: Path | None, key: str) -> dict | None:
    """The saved training state if it belongs to this exact configuration, else None."""
    if path is None or not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state if state.get("fingerprint") == key else None


def restore(state: dict, model, averaged, optimizer, scheduler, generator) -> Progress:
    model.load_state_dict(state["model"])
    if averaged is not None:
        averaged.load_state_dict(state["averaged"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    raw = dict(state["progress"])
    return Progress(**{**raw, "history": History(rows=raw["history"])})


class ProgressBars:
    """Two bars on stderr, both counting training windows with windows/s and an ETA, estimated
    after the first steps and refined as it goes: the whole run (an upper bound when early
    stopping ends it sooner) and the current epoch. The same estimates go to MLflow at most every
    ``LOG_EVERY_S`` seconds during an epoch, so a long epoch is visible while it runs. (The counts
    are kept here, not read from tqdm, which does not count when stderr is not a terminal.)"""

    LOG_EVERY_S = 30.0

    def __init__(self, epochs: int, windows_per_epoch: int, done_epochs: int, log_metrics=None) -> None:
        from tqdm import tqdm

        quiet = None if distributed.current().is_main else True
        common = dict(unit="win", unit_scale=True, leave=False, file=sys.stderr, disable=quiet, smoothing=0.1)
        self.total, self.per_epoch = epochs * windows_per_epoch, windows_per_epoch
        self.done, self.in_epoch, self.epochs = done_epochs * windows_per_epoch, 0, epochs
        self.run = tqdm(total=self.total, initial=self.done, desc="run", position=0, **common)
        self.epoch = tqdm(total=windows_per_epoch, desc="epoch", position=1, **common)
        self.log_metrics, self.logged_at, self.current = log_metrics, time.perf_counter(), done_epochs + 1
        self.started = self.epoch_started = time.perf_counter()
        self.trained = 0  # windows trained by this process (not counting epochs done before a resume)

    def start_epoch(self, epoch: int) -> None:
        self.epoch.reset(total=self.per_epoch)
        self.epoch.set_description(f"epoch {epoch}/{self.epochs}")
        self.current, self.in_epoch, self.epoch_started = epoch, 0, time.perf_counter()

    def update(self, windows: int) -> None:
        self.run.update(windows)
        self.epoch.update(windows)
        self.done, self.in_epoch, self.trained = self.done + windows, self.in_epoch + windows, self.trained + windows
        if self.log_metrics is not None and time.perf_counter() - self.logged_at >= self.LOG_EVERY_S:
            self.logged_at = time.perf_counter()
            self.log_metrics(self.estimates(), self.current)

    def estimates(self) -> dict[str, float]:
        """windows/s so far in this epoch, and the seconds left in the epoch and in the run."""
        rate = max(self.in_epoch / max(time.perf_counter() - self.epoch_started, 1e-9), 1e-9)
        return {
            "windows_per_s": rate,
            "epoch_eta_s": (self.per_epoch - self.in_epoch) / rate,
            "eta_s": (self.total - self.done) / rate,
        }

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def run_estimates(self) -> dict[str, float]:
        """At an epoch's end: windows/s over the whole run so far, and the seconds left in it."""
        rate = max(self.trained / max(self.elapsed(), 1e-9), 1e-9)
        return {"windows_per_s": rate, "eta_s": (self.total - self.done) / rate}

    def write(self, line: str) -> None:
        self.run.write(line, file=sys.stderr)

    def close(self) -> None:
        self.epoch.close()
        self.run.close()


# --- the loop --------------------------------------------------------------------------------------


def fit(
    cfg: Config, prepared_dir: Path, checkpoint: Path, log_metrics=None, state_path: Path | None = None
) -> tuple[History, dict]:
    """Train with early stopping; the best epoch's weights are written to ``checkpoint``.

    ``log_metrics(dict, step)`` receives per-epoch metrics (MLflow in the CLI). With
    ``state_path``, the training state is saved there and a matching saved state is resumed.
    """
    meta = Prepared.load(prepared_dir)
    generator = seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    world = distributed.init(device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    use_bf16 = uses_bf16(device, cfg)
    series = torch.from_numpy(np.load(prepared_dir / "series.npy")).to(device)
    train_origins = torch.from_numpy(origins(meta.split, "train", meta.input_steps, meta.horizon)).to(device)
    val_origins = torch.from_numpy(origins(meta.split, "val", meta.input_steps, meta.horizon)).to(device)

    spec = model_spec(cfg)
    model = LSTMForecaster(spec).to(device)
    net = distributed.wrap(TrainView(model, cfg), world, device)
    # Validation and the kept weights use an exponential moving average of the weights when
    # ema_decay is set: it smooths the noise of many small, correlated steps.
    averaged = average_of(model, cfg.train.ema_decay)
    optimizer = make_optimizer(model, cfg)
    if world.size > rows_per_batch(cfg):
        key_name = "batch_size" if cfg.train.mode == "window" else "spans_per_batch"
        raise ConfigError(f"train.{key_name}={rows_per_batch(cfg)} must be at least the number of processes ({world.size})")
    steps_per_epoch = len(epoch_batches(cfg, len(train_origins), torch.Generator().manual_seed(0)))
    total_steps = steps_per_epoch * cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, cfg.train.warmup_steps))

    key = fingerprint(cfg, meta)
    progress = Progress()
    saved = load_state(state_path, key)
    if saved is not None:
        progress = restore(saved, model, averaged, optimizer, scheduler, generator)
        if world.is_main:
            print(f"resuming from the training state saved after epoch {progress.epoch}", file=sys.stderr)

    windows_per_epoch = len(train_origins)
    print_every = max(1, cfg.train.epochs // 20)
    bars = ProgressBars(cfg.train.epochs, windows_per_epoch, progress.epoch, log_metrics if world.is_main else None)
    try:
        while progress.epoch < cfg.train.epochs and progress.stale < cfg.train.patience:
            progress.epoch += 1
            bars.start_epoch(progress.epoch)
            model.train()
            losses = []
            for batch in epoch_batches(cfg, len(train_origins), generator):
                rows = distributed.shard(batch, world).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    sse, n_local = batch_errors(net, series, train_origins, rows, meta, cfg)
                n = windows_in(batch, cfg)
                # Scaled so that DDP's gradient average equals the gradient of the global batch mean.
                optimizer_step(sse * world.size / (n * meta.horizon), model, optimizer, averaged, cfg)
                scheduler.step()
                losses.append(sse.detach() / (n_local * meta.horizon))
                bars.update(n)
            train_loss = float(torch.stack(losses).mean())
            evaluated = averaged.module if averaged is not None else model
            val_loss = validation_loss(evaluated, series, val_origins, meta, cfg)
            model.train()
            row = {"epoch": progress.epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "learning_rate": scheduler.get_last_lr()[0]}  # fmt: skip
            progress.history.rows.append(row)
            improved = val_loss < progress.best
            if improved:
                progress.best, progress.stale, progress.best_state = val_loss, 0, cpu_copy(evaluated.state_dict())
            else:
                progress.stale += 1
            speed = bars.run_estimates()
            if log_metrics and world.is_main:
                log_metrics({**row, **speed}, progress.epoch)
            if world.is_main and (improved or progress.epoch % print_every == 0):
                bars.write(
                    f"epoch {progress.epoch:>4}/{cfg.train.epochs}  train {train_loss:.5f}  val {val_loss:.5f}"
                    f"{'  *best' if improved else ''}  {speed['windows_per_s']:,.0f} windows/s"
                )
            if world.is_main and state_path is not None and progress.epoch % cfg.train.checkpoint_every == 0:
                save_state(state_path, key, model, averaged, optimizer, scheduler, generator, progress)
    finally:
        bars.close()
    best = progress.history.best()
    if world.is_main:
        if progress.stale >= cfg.train.patience:
            print(f"early stop: no validation improvement for {progress.stale} epochs", file=sys.stderr)
        save_checkpoint(checkpoint, progress.best_state, spec, int(best["epoch"]), best["val_loss"])
        if state_path is not None:
            state_path.unlink(missing_ok=True)  # finished: a rerun starts afresh
    distributed.barrier_and_close(world)
    summary = {
        "best_epoch": int(best["epoch"]),
        "best_val_loss": best["val_loss"],
        "epochs_run": len(progress.history.rows),
        "fit_seconds": round(bars.elapsed(), 1),
        "windows_per_s": round(bars.run_estimates()["windows_per_s"]),
        "device": device.type,
        "processes": world.size,
        "mode": cfg.train.mode,
        "train_windows": windows_per_epoch,
    }
    return progress.history, summary
