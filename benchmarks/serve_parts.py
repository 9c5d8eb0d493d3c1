"""What two of the server's choices save per request, each against the alternative in the same run.

    .venv/bin/python benchmarks/serve_parts.py [--rounds 300]

  parse     one window of the default forecaster (336 x 3) as JSON, through serve/payload.parse:
            orjson (what the server uses) against the stdlib's json (what it used before)
  gc        32 windows parsed in a process that has loaded what the server loads (torch, mlflow):
            with its heap as loaded against after serve/server.freeze_heap (gc.freeze), which the
            serving process runs once it is built. Full collections walk every object not frozen.

Prints ms per call and the ratio; the rest of serving's figures come from benchmarks/serve_load.py.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import numpy as np

from lstmops.serve import payload
from lstmops.serve.payload import Limits, parse

FEATURES = ["demand_gw", "temperature_c", "workday"]
LIMITS = Limits(64, 1344, 4_000_000)


def body(windows: int) -> bytes:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((windows, 336, 3)) * [1.0, 5.0, 0.45] + [5.0, 17.0, 0.7]
    return json.dumps({"inputs": x.round(4).tolist()}).encode()


def ms_per_call(call, rounds: int) -> float:
    """The best of five timings of ``rounds`` calls: the machine is shared, the minimum is the cost."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            call()
        best = min(best, (time.perf_counter() - start) / rounds * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()

    one = body(1)
    fast = ms_per_call(lambda: parse(one, "application/json", FEATURES, LIMITS), args.rounds)
    with mock.patch.object(payload.orjson, "loads", side_effect=payload.orjson.JSONDecodeError("off", "", 0)):
        stdlib = ms_per_call(lambda: parse(one, "application/json", FEATURES, LIMITS), args.rounds)
    print(f"parse one window: orjson {fast:.3f} ms, stdlib json {stdlib:.3f} ms ({stdlib / fast:.1f}x)")

    import mlflow  # noqa: F401  (what the server has loaded when it serves)
    import torch  # noqa: F401

    from lstmops.serve.server import freeze_heap

    batch = body(32)
    rounds = max(10, args.rounds // 10)
    as_loaded = ms_per_call(lambda: parse(batch, "application/json", FEATURES, LIMITS), rounds)
    freeze_heap()
    frozen = ms_per_call(lambda: parse(batch, "application/json", FEATURES, LIMITS), rounds)
    print(f"parse 32 windows with torch and mlflow loaded: heap as loaded {as_loaded:.2f} ms, "
          f"frozen {frozen:.2f} ms ({as_loaded / frozen:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
