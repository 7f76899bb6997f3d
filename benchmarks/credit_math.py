"""Cost of the credit math itself (Eqs. 1, 5, 7 + metrics) at the paper's batch shape, on CPU.

256 rollouts (32 prompts x 8) x 2048 response tokens: how long `compute_token_advantages` takes for
grpo / rlsd / cepo, to show the method's overhead is the teacher forwards, not the arithmetic.
Writes ``benchmarks/results/credit_math.json``. Usage: ``python benchmarks/credit_math.py``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from cepo.algorithms import CreditInputs, compute_token_advantages, group_advantages


def main(rollouts: int = 256, length: int = 2048, group: int = 8, repeats: int = 5) -> None:
    gen = torch.Generator().manual_seed(0)
    scores = (torch.rand(rollouts, generator=gen) > 0.5).float()
    ids = [i // group for i in range(rollouts)]
    lengths = torch.randint(length // 4, length + 1, (rollouts,), generator=gen)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).float()
    logps = [-(torch.rand(rollouts, length, generator=gen) * 3) for _ in range(3)]
    has_neg = torch.rand(rollouts, generator=gen) < 0.8
    results = {}
    tic = time.perf_counter()
    adv = group_advantages(scores, ids)
    results["group_advantages_ms"] = (time.perf_counter() - tic) * 1e3
    for method in ("grpo", "rlsd", "cepo"):
        inputs = CreditInputs(adv, mask, 0.5, 0.5, logps[0], logps[1], logps[2], has_neg)
        compute_token_advantages(method, inputs)  # warm-up
        tic = time.perf_counter()
        for _ in range(repeats):
            compute_token_advantages(method, inputs)
        results[f"{method}_ms"] = (time.perf_counter() - tic) / repeats * 1e3
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    print(f"batch {rollouts} x {length} tokens on {machine['cpu_count']} CPU cores:")
    for key, value in results.items():
        print(f"  {key:<22} {value:8.1f}")
    out = Path(__file__).parent / "results" / "credit_math.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "shape": [rollouts, length], "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
