"""What one forecast costs the CPU, by forward path, beside today's path measured in the same run.

Today's path is the exported TorchScript file in float32 (PyTorch's oneDNN LSTM kernel). Each
candidate is timed per window at several batch sizes on the server's thread count (1 on these
2 cores: the event loop has the other), and judged by the test-set RMSE in original units
against the file's own, so a faster path that forecasts worse shows it:

  torchscript-fp32   the exported file as the server ran it (the baseline)
  freeze             torch.jit.freeze
  optimize           torch.jit.optimize_for_inference (freeze + oneDNN fusions)
  int8-dynamic       torch.ao dynamic quantization of the LSTM and head (eager)
  bf16-nn.LSTM       the file's nn.LSTM in bfloat16, the rest float32 (the first bf16 fast path)
  bf16-lstm          serve/fastpath.py (LSTMOPS_PRECISION=bf16): the same oneDNN LSTM in bfloat16,
                     called directly (weights converted once, no batch-first transposes)

Batches of 128 and 256 are there for the server's max_batch: the best batch size of a path is
what a busy server running it would be set to.

The model is the default pipeline's (params.yaml: 336 steps of 3 features, one LSTM layer of 64,
the seasonal skip, 48 forecasts). With --model it is that exported file (models/model.ts after
`dvc repro`); without, the default architecture is fitted here for --train-seconds on the default
data's training windows, which is enough for the test RMSE to mean something.

    .venv/bin/python benchmarks/forward_cost.py [--model models/model.ts] [--seconds 0.6] [--train-seconds 40]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load_prepared, prepared_dir  # noqa: E402

from lstmops import config  # noqa: E402
from lstmops.serve.fastpath import Bf16Forecaster, bf16_supported  # noqa: E402
from lstmops.tasks.forecast.export import raw_windows, script  # noqa: E402
from lstmops.tasks.forecast.model import LSTMForecaster, ModelSpec  # noqa: E402
from lstmops.tasks.forecast.windows import gather, origins  # noqa: E402

BATCHES = (1, 8, 32, 64, 128, 256)


def fit_default(cfg, meta, series: np.ndarray, seconds: float) -> torch.jit.ScriptModule:
    """The default architecture, fitted with Adam on random training windows for ``seconds``."""
    torch.manual_seed(cfg.seed)
    m = cfg.model
    core = LSTMForecaster(ModelSpec(n_features=len(meta.features), hidden_size=m.hidden_size, num_layers=m.num_layers,
                                    dropout=m.dropout, horizon=meta.horizon, seasonal_skip=m.seasonal_skip or 0,
                                    target_index=meta.target_index))  # fmt: skip
    train = torch.from_numpy(origins(meta.split, "train", meta.input_steps, meta.horizon, meta.segments))
    tensor = torch.from_numpy(series)
    optimizer = torch.optim.Adam(core.parameters(), lr=3e-3)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        x, y = gather(tensor, train[torch.randint(len(train), (64,))], meta.input_steps, meta.horizon, meta.target_index)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(core(x), y).backward()
        optimizer.step()
        steps += 1
    print(f"fitted the default architecture for {seconds:.0f} s ({steps} steps of 64 windows)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return script(core.eval(), meta)


def candidates(exported) -> dict[str, object]:
    paths: dict[str, object] = {"torchscript-fp32": exported}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths["freeze"] = torch.jit.freeze(copy.deepcopy(exported))
        paths["optimize"] = torch.jit.optimize_for_inference(torch.jit.freeze(copy.deepcopy(exported)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        paths["int8-dynamic"] = int8_dynamic(exported)
    if bf16_supported():
        paths["bf16-nn.LSTM"] = NnLstmBf16(exported).eval()
        paths["bf16-lstm"] = Bf16Forecaster(exported).eval()
    return paths


class NnLstmBf16(torch.nn.Module):
    """The first bf16 fast path, kept to show what calling oneDNN's LSTM op directly gains:
    a bf16 copy of the file's ``nn.LSTM`` (weights converted and output sequence transposed on
    every call), the rest in float32."""

    def __init__(self, exported) -> None:
        super().__init__()
        core, lstm = exported.core, exported.core.lstm
        self.exported, self.core = exported, core
        self.lstm = torch.nn.LSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, batch_first=True)
        self.lstm.load_state_dict({name: p.detach().clone() for name, p in lstm.named_parameters()})
        self.lstm.to(torch.bfloat16).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.exported.check(x)
        ex, core, target = self.exported, self.core, int(self.exported.target_index)
        scaled = (x.to(torch.float32) - ex.mean) / ex.std
        _, (h, _) = self.lstm(scaled.to(torch.bfloat16))
        forecast = core.head(h[-1].to(torch.float32))
        if int(core.period) > 0:
            start = x.shape[1] - int(core.period)
            forecast = forecast + scaled[:, start : start + core.seasonal.shape[0], target] @ core.seasonal.T
        return forecast * ex.std[target] + ex.mean[target]


def int8_dynamic(exported):
    """The same network in eager mode, its LSTM and head dynamically quantized to int8."""
    from lstmops.tasks.forecast.model import ScaledForecaster

    core = exported.core
    spec = ModelSpec(n_features=core.lstm.input_size, hidden_size=core.lstm.hidden_size, num_layers=core.lstm.num_layers,
                     dropout=0.0, horizon=core.head.out_features, seasonal_skip=int(core.period),
                     target_index=int(core.target_index))  # fmt: skip
    eager = LSTMForecaster(spec)
    eager.load_state_dict({k: v for k, v in core.state_dict().items()})
    wrapped = ScaledForecaster(eager.eval(), exported.mean.tolist(), exported.std.tolist(), int(exported.target_index),
                               list(exported.features), int(exported.input_steps))  # fmt: skip
    return torch.ao.quantization.quantize_dynamic(wrapped.eval(), {torch.nn.LSTM, torch.nn.Linear}, dtype=torch.qint8)


def per_window_ms(paths: dict[str, object], x: torch.Tensor, seconds: float, rounds: int = 5) -> dict[str, float]:
    """Per window, each path's best of ``rounds`` timed rounds, the paths taking turns within each
    round: the machine is shared, so the minimum is the cost, and no path gets the quiet moment."""
    best = dict.fromkeys(paths, float("inf"))
    with torch.inference_mode():
        for model in paths.values():
            for _ in range(5):  # TorchScript's profiling executor settles after its first runs
                model(x)
        for _ in range(rounds):
            for name, model in paths.items():
                start, calls = time.perf_counter(), 0
                while time.perf_counter() - start < seconds / rounds:
                    model(x)
                    calls += 1
                best[name] = min(best[name], (time.perf_counter() - start) / calls / x.shape[0] * 1000)
    return best


def test_rmse(model, windows: np.ndarray, actual: np.ndarray) -> float:
    with torch.inference_mode():
        forecasts = np.concatenate([model(torch.from_numpy(c)).float().numpy() for c in np.array_split(windows, 16)])
    return float(np.sqrt(np.mean((forecasts - actual) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported default model (default: fit one here)")
    parser.add_argument("--seconds", type=float, default=0.6, help="timing per path and batch size")
    parser.add_argument("--train-seconds", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server's default on 2 cores)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    cfg = config.load(ROOT)
    with prepared_dir(cfg) as directory:
        meta, series = load_prepared(directory)
    torch.set_num_threads(2)
    exported = torch.jit.load(args.model).eval() if args.model else fit_default(cfg, meta, series, args.train_seconds)
    torch.set_num_threads(args.threads)
    test = origins(meta.split, "test", meta.input_steps, meta.horizon, meta.segments)
    windows = raw_windows(series, meta, test)
    target = series[:, meta.target_index].astype(np.float64) * meta.std[meta.target_index] + meta.mean[meta.target_index]
    actual = target[test[:, None] + np.arange(meta.horizon)]
    print(f"{int(exported.input_steps)} steps x {len(exported.features)} features per window, {len(test)} test windows, "
          f"{args.threads} thread(s), bf16 on this CPU: {bf16_supported()}")  # fmt: skip

    paths = candidates(exported)
    rng = np.random.default_rng(0)
    base_rmse = test_rmse(exported, windows, actual)
    costs: dict[str, dict[int, float]] = {name: {} for name in paths}
    for b in BATCHES:
        x = torch.from_numpy(windows[rng.choice(len(windows), b, replace=False)])
        for name, ms in per_window_ms(paths, x, args.seconds).items():
            costs[name][b] = ms
    print(f"\n{'path':<18}" + "".join(f"{'batch ' + str(b):>16}" for b in BATCHES) + f"{'test RMSE':>12}{'vs file':>9}")
    for name, model in paths.items():
        rmse = test_rmse(model, windows, actual)
        cells = "".join(f"{costs[name][b]:>8.3f} ms {costs['torchscript-fp32'][b] / costs[name][b]:>4.2f}x" for b in BATCHES)
        print(f"{name:<18}{cells}{rmse:>12.4f}{(rmse / base_rmse - 1) * 100:>+8.2f}%")
    base = costs["torchscript-fp32"]
    best_batch = min(base, key=base.get)
    best = base[best_batch]
    print(f"\ntoday's path: best {best:.3f} ms/window at batch {best_batch} = {1000 / best:,.0f} windows/s of forward "
          f"pass alone ({base[1] / best:.1f}x from batching)")  # fmt: skip
    if "bf16-lstm" in costs:
        fast_batch = min(costs["bf16-lstm"], key=costs["bf16-lstm"].get)
        fast = costs["bf16-lstm"][fast_batch]
        print(f"bf16-lstm:    best {fast:.3f} ms/window at batch {fast_batch} = {1000 / fast:,.0f} windows/s "
              f"({best / fast:.2f}x today's best; {base[64] / costs['bf16-lstm'][64]:.2f}x at batch 64)")  # fmt: skip


if __name__ == "__main__":
    main()
