"""Per-step wall time of GRPO vs RLSD vs CEPO on the TRL engine (tiny Qwen3-VL, CPU).

Same prepared model, data, seed and settings for every method; prints a table and writes
``benchmarks/results/trl_step_time.json``. Usage: ``python benchmarks/trl_step_time.py [--steps 8]``.
The first step of each run is excluded (warm-up). State the machine when you quote the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from cepo.smoke import prepare_smoke_model, run_smoke


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    ns = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    model = prepare_smoke_model(root / "model")
    results = {}
    for method in ("grpo", "rlsd", "cepo"):
        run = run_smoke(root / method, method=method, steps=ns.steps, model_dir=model, echo=False, save_steps=10_000)
        rows = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()][1:]
        results[method] = {
            "step_seconds_mean": statistics.mean(r["wall_seconds"] for r in rows),
            "teacher_seconds_mean": statistics.mean(r.get("cepo/teacher_seconds", 0.0) for r in rows),
            "steps_timed": len(rows),
        }
    base = results["grpo"]["step_seconds_mean"]
    print(f"{'method':<6} {'step s':>8} {'teacher s':>10} {'vs grpo':>8}")
    for method, r in results.items():
        r["ratio_vs_grpo"] = r["step_seconds_mean"] / base
        step, teacher, ratio = r["step_seconds_mean"], r["teacher_seconds_mean"], r["ratio_vs_grpo"]
        print(f"{method:<6} {step:>8.3f} {teacher:>10.3f} {ratio:>8.2f}")
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "device": "cpu", "threads": torch.get_num_threads()}
    out = Path(__file__).parent / "results" / "trl_step_time.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "steps": ns.steps, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
