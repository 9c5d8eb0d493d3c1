"""Training throughput and accuracy-within-a-budget, four ways, in one process.

    .venv/bin/python benchmarks/train_throughput.py [--seconds 60] [--device cpu|cuda]

Trains the default model (params.yaml: 3 features, window 336, hidden 64, 2 layers, horizon 48)
on the default data for the same wall-clock budget each way:
  (a)  lstmops, sequence mode (spans; a forecast trained at every position after the burn-in)
  (a2) lstmops, window mode (one LSTM pass per window, batches gathered by index)
  (b)  a bare PyTorch window loop: windows materialized once as a tensor, forward/backward/Adam
  (c)  the tutorial approach: numpy windows -> TensorDataset -> shuffled DataLoader
All four flush denormal floats (torch.set_flush_denormal(True)); without it (c) runs slower still.
Training windows/s counts windows whose loss enters the gradient, the same way for all.
After each budget, validation MSE (scaled units) is measured the same way for all: one forecast
per validation window from exactly `input_steps` of history. Prints ratios, not absolute claims.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lstmops import config
from lstmops.data.ingest import ingest
from lstmops.data.prepare import Prepared, prepare
from lstmops.data.windows import origins, window_view
from lstmops.model import LSTMForecaster
from lstmops.train import batch_loss, epoch_batches, mean_loss, model_spec, seed_everything

ROOT = Path(__file__).resolve().parents[1]


def budgeted(step, seconds: float) -> int:
    """Call ``step()`` (returns windows trained) until the budget is spent; return the total."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done


def lstmops_way(cfg, meta, series, device, seconds):
    generator = seed_everything(cfg.seed)
    model = LSTMForecaster(model_spec(cfg)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate)
    train = torch.from_numpy(origins(meta.split, "train", meta.input_steps, meta.horizon)).to(device)
    use_bf16 = device.type == "cuda"
    queue: list[torch.Tensor] = []

    def step() -> int:
        if not queue:
            queue.extend(epoch_batches(cfg, len(train), generator))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, n = batch_loss(model, series, train, queue.pop(0).to(device), meta, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        opt.step()
        return n

    return model, budgeted(step, seconds)


def bare_loop(cfg, meta, series, device, seconds):
    seed_everything(cfg.seed)
    model = LSTMForecaster(model_spec(cfg)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)
    train = origins(meta.split, "train", meta.input_steps, meta.horizon)
    host = series.cpu().numpy()
    x_all = torch.from_numpy(np.ascontiguousarray(window_view(host, meta.input_steps)[train - meta.input_steps])).to(device)
    y_all = torch.from_numpy(host[train[:, None] + np.arange(meta.horizon), meta.target_index]).to(device)
    perm: list[torch.Tensor] = []

    def step() -> int:
        if not perm:
            perm.extend(torch.randperm(len(train), device=device).split(cfg.train.batch_size))
        idx = perm.pop()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = nn.functional.mse_loss(model(x_all[idx]).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(idx)

    return model, budgeted(step, seconds)


def tutorial(cfg, meta, series, device, seconds):
    from torch.utils.data import DataLoader, TensorDataset

    seed_everything(cfg.seed)
    model = LSTMForecaster(model_spec(cfg)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)
    host = series.cpu().numpy()
    train = origins(meta.split, "train", meta.input_steps, meta.horizon)
    xs = np.stack([host[t - meta.input_steps : t] for t in train])  # samples x window x features
    ys = np.stack([host[t : t + meta.horizon, meta.target_index] for t in train])
    loader = DataLoader(TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys)), batch_size=cfg.train.batch_size, shuffle=True)
    batches = iter(loader)

    def step() -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(x)

    return model, budgeted(step, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per way")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = config.load(ROOT)
        snapshot = Path(tmp) / "snapshot.parquet"
        ingest(cfg.data, ROOT, snapshot)
        prepare(cfg, snapshot, Path(tmp) / "prepared")
        meta = Prepared.load(Path(tmp) / "prepared")
        series = torch.from_numpy(np.load(Path(tmp) / "prepared" / "series.npy")).to(device)
    val = torch.from_numpy(origins(meta.split, "val", meta.input_steps, meta.horizon)).to(device)

    ways = {
        "(a)  lstmops sequence": lambda: lstmops_way(cfg.model_copy(update={"train": cfg.train.model_copy(update={"mode": "sequence"})}), meta, series, device, args.seconds),
        "(a2) lstmops window": lambda: lstmops_way(cfg.model_copy(update={"train": cfg.train.model_copy(update={"mode": "window"})}), meta, series, device, args.seconds),
        "(b)  bare window loop": lambda: bare_loop(cfg, meta, series, device, args.seconds),
        "(c)  tutorial DataLoader": lambda: tutorial(cfg, meta, series, device, args.seconds),
    }  # fmt: skip
    print(f"device {device}, budget {args.seconds:.0f} s per way, denormals flushed, "
          f"{torch.get_num_threads()} threads, bf16 autocast: {device.type == 'cuda'}")  # fmt: skip
    rates, losses = {}, {}
    for name, run in ways.items():
        model, windows = run()
        rates[name] = windows / args.seconds
        losses[name] = mean_loss(model.eval(), series, val, meta, 512)
        print(f"{name:<26} {rates[name]:>12,.0f} training windows/s   val MSE {losses[name]:.4f}", flush=True)
    a, a2, b, c = rates.values()
    print(f"ratio (a)/(c)  = {a / c:,.1f}x   (acceptance: >= 50)")
    print(f"ratio (a2)/(b) = {a2 / b:.2f}    (acceptance: >= 0.85)")
    la, lc = losses["(a)  lstmops sequence"], losses["(c)  tutorial DataLoader"]
    print(f"val MSE (a) {la:.4f} vs (c) {lc:.4f}: (a) is {'lower' if la < lc else 'NOT lower'}")


if __name__ == "__main__":
    main()
