"""The training engine shared by every task: fit a model, early-stop on validation loss, keep
the best weights.

A task supplies a ``Trainer`` (its model, its batches and their loss, its validation loss); the
engine owns what is common: the schedule (warm-up, cosine decay), clipping, the weight average,
early stopping, progress, DDP, and resumable checkpoints. (The forecaster's two batch modes,
``window`` and ``sequence``, are in ``tasks/forecast/task.py``; the language model's stateful
truncated BPTT in ``tasks/charlm/task.py``.)

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
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lstmops import distributed
from lstmops.config import Config, TrainConfig
from lstmops.cpus import ThreadGovernor
from lstmops.errors import ConfigError
from lstmops.io import atomic_path


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


class Trainer(Protocol):
    """What a task gives the engine. A batch is a tensor of rows (windows, spans, streams):
    DDP splits its rows across processes, so every row must be trainable on its own."""

    model: nn.Module
    spec: Any  # has to_dict(): saved with the checkpoint to rebuild the model
    unit: str  # what one trained target is called in progress ("windows", "chars")
    terms_per_unit: int  # loss terms per unit (horizon steps per window; 1 per character)
    batch_setting: str  # the setting that sets rows per batch, for error messages

    def view(self) -> nn.Module:
        """The module a training step calls and DDP wraps."""

    def rows_per_batch(self) -> int: ...

    def epoch_batches(self, generator: torch.Generator) -> list[torch.Tensor]: ...

    def units(self, batch: torch.Tensor) -> int:
        """Units trained by a (global) batch."""

    def errors(self, net: nn.Module, rows: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed loss over this process's rows, and how many units they hold."""

    def start_epoch(self) -> None:
        """Reset what carries over between batches within an epoch (a recurrent state)."""

    def validation_loss(self, model: nn.Module) -> float: ...

    def fingerprint(self) -> Any:
        """Facts of the prepared data that a resumable training state must match."""

    def summary(self) -> dict[str, Any]:
        """Task facts for models/train.json (the batch mode, the training units per epoch)."""

    # Optional: a task with a success criterion also defines
    #     def criterion_met(self, model: nn.Module) -> tuple[bool, dict[str, float]]
    # called after each validation_loss, on the same weights: whether the criterion is met on
    # held-out data, and the figures behind it (logged with the epoch). ``fit`` stops at the
    # first epoch that meets it, keeps those weights, and records how many units (and seconds)
    # of training it took as ``<unit>_to_solve`` and ``seconds_to_solve`` (None if never).


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


def make_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=tc.learning_rate, weight_decay=tc.weight_decay)


def uses_bf16(device: torch.device, tc: TrainConfig) -> bool:
    return device.type == "cuda" and tc.precision == "bf16"


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, averaged, tc: TrainConfig) -> None:
    """Backpropagate ``loss``, clip the gradient norm, step, and update the weight average."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    optimizer.step()
    if averaged is not None:
        averaged.update_parameters(model)


def fingerprint(cfg: Config, trainer: Trainer) -> str:
    """What a saved training state must match to be resumed: every setting that shapes training."""
    relevant = cfg.model_dump(mode="json", include={"seed", "task", *cfg.RESUME_SECTIONS})
    relevant["train"] = cfg.task_train.model_dump(mode="json", exclude={"checkpoint_every"})
    blob = json.dumps([relevant, trainer.spec.to_dict(), trainer.fingerprint()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state_dict: dict, spec: Any, epoch: int, val_loss: float) -> None:
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict, "spec": spec.to_dict(), "epoch": epoch, "val_loss": val_loss}, tmp)


def average_of(model: nn.Module, decay: float | None):
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
    units: int = 0  # training units seen (all epochs, resumed ones included)
    seconds: float = 0.0  # training wall time (all epochs, resumed ones included)
    solved_at: int | None = None  # units seen when the trainer's criterion was first met
    solved_seconds: float | None = None


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
    state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data only: nothing unpickled runs code
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

    def __init__(self, epochs: int, windows_per_epoch: int, done_epochs: int, log_metrics=None, unit: str = "win") -> None:
        from tqdm import tqdm

        quiet = None if distributed.current().is_main else True
        common = dict(unit=unit, unit_scale=True, leave=False, file=sys.stderr, disable=quiet, smoothing=0.1)
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
    cfg: Config, trainer_for, checkpoint: Path, log_metrics=None, state_path: Path | None = None
) -> tuple[History, dict]:
    """Train with early stopping; the best epoch's weights are written to ``checkpoint``.

    ``trainer_for(device)`` builds the task's ``Trainer`` (after seeding, so the weights are the
    seed's). ``log_metrics(dict, step)`` receives per-epoch metrics (MLflow in the CLI). With
    ``state_path``, the training state is saved there and a matching saved state is resumed.
    """
    tc = cfg.task_train
    generator = seed_everything(cfg.seed)
    device = resolve_device(tc.device)
    world = distributed.init(device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    use_bf16 = uses_bf16(device, tc)
    trainer: Trainer = trainer_for(device)
    model = trainer.model
    net = distributed.wrap(trainer.view(), world, device)
    # Validation and the kept weights use an exponential moving average of the weights when
    # ema_decay is set: it smooths the noise of many small, correlated steps.
    averaged = average_of(model, tc.ema_decay)
    optimizer = make_optimizer(model, tc)
    if world.size > trainer.rows_per_batch():
        raise ConfigError(f"{trainer.batch_setting}={trainer.rows_per_batch()} must be at least the number of processes ({world.size})")
    planned = trainer.epoch_batches(torch.Generator().manual_seed(0))  # an epoch's shape, for the schedule and progress
    total_steps = len(planned) * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total_steps, tc.warmup_steps))

    key = fingerprint(cfg, trainer)
    progress = Progress()
    saved = load_state(state_path, key)
    if saved is not None:
        progress = restore(saved, model, averaged, optimizer, scheduler, generator)
        if world.is_main:
            print(f"resuming from the training state saved after epoch {progress.epoch}", file=sys.stderr)

    units_per_epoch = sum(trainer.units(b) for b in planned)
    print_every = max(1, tc.epochs // 20)
    bars = ProgressBars(tc.epochs, units_per_epoch, progress.epoch, log_metrics if world.is_main else None, trainer.unit[:4])
    criterion = getattr(trainer, "criterion_met", None)  # optional: a success criterion that ends training
    seconds_before = progress.seconds
    # On CPU, fewer threads while other processes use the cores (cpus.ThreadGovernor); never more
    # than the trainer or configure_threads set, and that count again once this fit is done: tune
    # and backtest fit many times in one process, and each must start from it, not from the last
    # fit's low point.
    threads = torch.get_num_threads()
    governor = ThreadGovernor(threads) if device.type == "cpu" and tc.adapt_threads and ThreadGovernor.applies() else None
    try:
        while progress.epoch < tc.epochs and progress.stale < tc.patience and progress.solved_at is None:
            progress.epoch += 1
            bars.start_epoch(progress.epoch)
            model.train()
            trainer.start_epoch()
            losses = []
            for batch in trainer.epoch_batches(generator):
                rows = distributed.shard(batch, world).to(device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    total, n_local = trainer.errors(net, rows)
                n = trainer.units(batch)
                # Scaled so that DDP's gradient average equals the gradient of the global batch mean.
                optimizer_step(total * world.size / (n * trainer.terms_per_unit), model, optimizer, averaged, tc)
                scheduler.step()
                losses.append(total.detach() / (n_local * trainer.terms_per_unit))
                bars.update(n)
                progress.units += n
                if governor is not None:
                    governor.adjust()
            train_loss = float(torch.stack(losses).mean())
            evaluated = averaged.module if averaged is not None else model
            val_loss = trainer.validation_loss(evaluated)
            solved, figures = criterion(evaluated) if criterion is not None else (False, {})
            model.train()
            row = {"epoch": progress.epoch, "train_loss": train_loss, "val_loss": val_loss,
                   "learning_rate": scheduler.get_last_lr()[0], **figures}  # fmt: skip
            progress.history.rows.append(row)
            improved = val_loss < progress.best
            if improved:
                progress.best, progress.stale, progress.best_state = val_loss, 0, cpu_copy(evaluated.state_dict())
            else:
                progress.stale += 1
            progress.seconds = seconds_before + bars.elapsed()
            if solved:  # keep the weights that met the criterion, and when they did
                progress.solved_at, progress.solved_seconds = progress.units, round(progress.seconds, 1)
                progress.best_state = cpu_copy(evaluated.state_dict())
                if world.is_main:
                    bars.write(f"criterion met after {progress.units:,} {trainer.unit} (epoch {progress.epoch})")
            speed = bars.run_estimates()
            if log_metrics and world.is_main:
                log_metrics({**row, **speed}, progress.epoch)
            if world.is_main and (improved or progress.epoch % print_every == 0):
                bars.write(
                    f"epoch {progress.epoch:>4}/{tc.epochs}  train {train_loss:.5f}  val {val_loss:.5f}"
                    f"{'  *best' if improved else ''}  {speed['windows_per_s']:,.0f} {trainer.unit}/s"
                )
            if world.is_main and state_path is not None and progress.epoch % tc.checkpoint_every == 0:
                save_state(state_path, key, model, averaged, optimizer, scheduler, generator, progress)
    finally:
        bars.close()
        torch.set_num_threads(threads)
    best = progress.history.rows[-1] if progress.solved_at is not None else progress.history.best()
    if world.is_main:
        if progress.stale >= tc.patience:
            print(f"early stop: no validation improvement for {progress.stale} epochs", file=sys.stderr)
        save_checkpoint(checkpoint, progress.best_state, trainer.spec, int(best["epoch"]), best["val_loss"])
        if state_path is not None:
            state_path.unlink(missing_ok=True)  # finished: a rerun starts afresh
    distributed.barrier_and_close(world)
    summary = {
        "best_epoch": int(best["epoch"]),
        "best_val_loss": best["val_loss"],
        "epochs_run": len(progress.history.rows),
        "fit_seconds": round(bars.elapsed(), 1),
        f"{trainer.unit}_per_s": round(bars.run_estimates()["windows_per_s"]),
        "device": device.type,
        "processes": world.size,
        **trainer.summary(),
    }
    if criterion is not None:
        summary |= {f"{trainer.unit}_to_solve": progress.solved_at, "seconds_to_solve": progress.solved_seconds}
    return progress.history, summary
