"""Training throughput and accuracy-within-a-budget, four ways, in one process.

    .venv/bin/python benchmarks/train_throughput.py [--seconds 60] [--seeds 42,1,2] [--device cpu|cuda]

Trains the default model (params.yaml: 3 features, window 336, hidden 64, 2 layers, horizon 48)
on the default data for the same wall-clock budget each way, once per seed:
  (a)  lstmops, sequence mode (spans; a forecast trained at every position after the burn-in)
  (a2) lstmops, window mode (one LSTM pass per window, batches gathered by index)
  (a and a2 use lstmops's AdamW, gradient clipping, weight averaging (train.ema_decay) and
  warm-up + cosine schedule, stretched over the budget; b and c use plain Adam at the same
  constant learning rate, as tutorials do)
  (b)  a bare PyTorch window loop: windows materialized once as a tensor, forward/backward/Adam
  (c)  the tutorial approach: numpy windows -> TensorDataset -> shuffled DataLoader
All four flush denormal floats (torch.set_flush_denormal(True)); without it (c) runs slower still.
Training windows/s counts windows whose loss enters the gradient, the same way for all (mean
over seeds). Validation MSE (scaled units) is measured the same way for all, every 5 s of
training (the clock stops meanwhile): one forecast per validation window from exactly
`input_steps` of history; the best value within the budget is reported per seed. One seed is
not enough to compare: (c)'s validation loss jumps by 20% between checks, so its best is partly
luck; hence several seeds and their mean. Prints ratios, not absolute claims.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import torch
from _common import ROOT, load_prepared, prepared_dir
from torch import nn

from lstmops import config
from lstmops.tasks.forecast.windows import origins, window_view
from lstmops.tasks.forecast.model import LSTMForecaster
from lstmops.tasks.forecast.task import batch_loss, epoch_batches, mean_loss, model_spec
from lstmops.train import average_of, lr_factor, make_optimizer, optimizer_step, resolve_device, seed_everything, uses_bf16

EVERY = 5.0  # seconds of training between validation checks (not counted in the budget)


TRACE: list[str] = []


def budgeted(step, seconds: float, validate, every: float) -> tuple[int, float]:
    """Call ``step(fraction of the budget spent)`` (returns windows trained) until ``seconds`` of
    training time are spent. Every ``every`` seconds of training, the clock stops for
    ``validate()``. Returns (windows trained, best validation loss seen): what early stopping
    with a kept best checkpoint would deliver within the budget."""
    done, trained, best, next_check = 0, 0.0, float("inf"), every
    while trained < seconds:
        tick = time.perf_counter()
        done += step(trained / seconds)
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run asynchronously: count their time, not their launch
        trained += time.perf_counter() - tick
        if trained >= next_check or trained >= seconds:
            loss = validate()
            TRACE.append(f"{trained:.0f}s:{loss:.4f}")
            best, next_check = min(best, loss), next_check + every
    return done, best


def lstmops_way(cfg, meta, series, device, seconds, validate, every):
    generator = seed_everything(cfg.seed)
    model = LSTMForecaster(model_spec(cfg)).to(device).train()
    averaged = average_of(model, cfg.train.ema_decay)
    opt = make_optimizer(model, cfg.train)
    train = torch.from_numpy(origins(meta.split, "train", meta.input_steps, meta.horizon)).to(device)
    batches: Iterator[torch.Tensor] = iter(())
    steps = 0

    def step(spent: float) -> int:
        # lstmops's schedule (linear warm-up, cosine decay), the decay stretched over the time budget.
        nonlocal steps, batches
        for group in opt.param_groups:
            group["lr"] = cfg.train.learning_rate * lr_factor(steps, cfg.train.warmup_steps, spent)
        steps += 1
        batch = next(batches, None)
        if batch is None:
            batches = iter(epoch_batches(cfg, len(train), generator))
            batch = next(batches)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, cfg.train)):
            loss, n = batch_loss(model, series, train, batch.to(device), meta, cfg)
        optimizer_step(loss, model, opt, averaged, cfg.train)
        return n

    return budgeted(step, seconds, lambda: validate(averaged.module if averaged is not None else model), every)


def bare_loop(cfg, meta, series, device, seconds, validate, every):
    seed_everything(cfg.seed)
    model = LSTMForecaster(model_spec(cfg)).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)
    train = origins(meta.split, "train", meta.input_steps, meta.horizon)
    host = series.cpu().numpy()
    x_all = torch.from_numpy(np.ascontiguousarray(window_view(host, meta.input_steps)[train - meta.input_steps])).to(device)
    y_all = torch.from_numpy(host[train[:, None] + np.arange(meta.horizon), meta.target_index]).to(device)
    perm: list[torch.Tensor] = []

    def step(spent: float) -> int:
        if not perm:
            perm.extend(torch.randperm(len(train), device=device).split(cfg.train.batch_size))
        idx = perm.pop()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, cfg.train)):
            loss = nn.functional.mse_loss(model(x_all[idx]).float(), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return len(idx)

    return budgeted(step, seconds, lambda: validate(model), every)


def tutorial(cfg, meta, series, device, seconds, validate, every):
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

    def step(spent: float) -> int:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, cfg.train)):
            loss = nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return len(x)

    return budgeted(step, seconds, lambda: validate(model), every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training budget per way")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: train.device from params)")
    parser.add_argument("--every", type=float, default=EVERY, help="seconds of training between validations")
    parser.add_argument("--trace", action="store_true", help="print every validation loss")
    parser.add_argument("-S", dest="overrides", action="append", default=[], help="params override, key=value")
    parser.add_argument("--seeds", default="42,1,2", help="comma-separated seeds; each way runs once per seed")
    parser.add_argument("--ways", default="a,a2,b,c", help="subset to run, e.g. a,c")
    args = parser.parse_args()
    cfg = config.load(ROOT, args.overrides)
    device = torch.device(args.device) if args.device else resolve_device(cfg.train.device)
    with prepared_dir(cfg) as directory:
        meta, host_series = load_prepared(directory)
    series = torch.from_numpy(host_series).to(device)
    val = torch.from_numpy(origins(meta.split, "val", meta.input_steps, meta.horizon)).to(device)

    def validate(model) -> float:
        loss = mean_loss(model.eval(), series, val, meta, 512)
        model.train()
        return loss

    def with_(mode: str, seed: int):
        return cfg.model_copy(update={"seed": seed, "train": cfg.train.model_copy(update={"mode": mode})})

    ways = {
        "(a)  lstmops sequence": lambda seed: lstmops_way(with_("sequence", seed), meta, series, device, args.seconds, validate, args.every),
        "(a2) lstmops window": lambda seed: lstmops_way(with_("window", seed), meta, series, device, args.seconds, validate, args.every),
        "(b)  bare window loop": lambda seed: bare_loop(with_("window", seed), meta, series, device, args.seconds, validate, args.every),
        "(c)  tutorial DataLoader": lambda seed: tutorial(with_("window", seed), meta, series, device, args.seconds, validate, args.every),
    }  # fmt: skip
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"device {device}, budget {args.seconds:.0f} s of training per way and seed (seeds {args.seeds}), "
          f"denormals flushed, {torch.get_num_threads()} threads, bf16 autocast: {uses_bf16(device, cfg.train)}; "
          f"best validation MSE (scaled units) checked every {args.every:g} s of training")  # fmt: skip
    rates, losses = {}, {}
    chosen = set(args.ways.split(","))
    for name, run in ways.items():
        if name.split(")")[0].strip("( ") not in chosen:
            continue
        per_seed = []
        for seed in seeds:
            TRACE.clear()
            windows, best = run(seed)
            per_seed.append((windows / args.seconds, best))
            if args.trace:
                print(f"    seed {seed}: " + " ".join(TRACE), flush=True)
        rates[name] = sum(r for r, _ in per_seed) / len(seeds)
        losses[name] = [best for _, best in per_seed]
        shown = " / ".join(f"{best:.4f}" for best in losses[name])
        print(f"{name:<26} {rates[name]:>10,.0f} training windows/s   best val MSE {shown}"
              f"   mean {sum(losses[name]) / len(seeds):.4f}", flush=True)  # fmt: skip
    if len(rates) < 4:
        return
    a, a2, b, c = rates.values()
    print(f"ratio (a)/(c)  = {a / c:,.1f}x   (acceptance: >= 50)")
    print(f"ratio (a2)/(b) = {a2 / b:.2f}    (acceptance: >= 0.85)")
    la, lc = losses["(a)  lstmops sequence"], losses["(c)  tutorial DataLoader"]
    wins = sum(x < y for x, y in zip(la, lc, strict=True))
    mean_a, mean_c = sum(la) / len(la), sum(lc) / len(lc)
    print(f"val MSE (a) vs (c): lower for (a) with {wins} of {len(seeds)} seeds; "
          f"mean {mean_a:.4f} vs {mean_c:.4f}: (a) is {'lower' if mean_a < mean_c else 'NOT lower'}")


if __name__ == "__main__":
    main()
