"""What one forecast costs the CPU: the exported model's forward pass per window, by batch size
and thread count, beside the single-window pass measured in the same process. This is the floor
under any server's throughput on this machine (serve_load.py measures the servers themselves).

    .venv/bin/python benchmarks/forward_cost.py [--model models/model.ts] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import time

import torch

BATCHES = (1, 8, 32, 64, 128)


def per_window_ms(model, batch: int, seconds: float) -> float:
    steps, n = int(model.input_steps), len(model.features)
    x = torch.randn(batch, steps, n) * 0.1 + model.mean
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(x)
            calls += 1
    return (time.perf_counter() - start) / calls / batch * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/model.ts")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    model = torch.jit.load(args.model).eval()
    print(f"{args.model}: {model.input_steps} steps x {len(model.features)} features per window")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        costs = {b: per_window_ms(model, b, args.seconds) for b in BATCHES}
        row = "  ".join(f"batch {b}: {ms:.3f} ms" for b, ms in costs.items())
        best = min(costs.values())
        print(f"{threads} thread(s): {row}")
        print(f"  best {best:.3f} ms/window = {1000 / best:,.0f} windows/s of forward pass alone; "
              f"batching gains {costs[1] / best:.1f}x over single windows")  # fmt: skip


if __name__ == "__main__":
    main()
