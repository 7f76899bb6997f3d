"""The ``cepo`` command line: ``cepo smoke`` and ``cepo train`` (TRL engine).

The verl engine has its own Hydra entry point: ``python -m cepo.integrations.verl.main``.
"""

from __future__ import annotations

import argparse
import sys
import traceback


def _smoke(ns: argparse.Namespace) -> int:
    from cepo.smoke import run_smoke

    result = run_smoke(
        output_dir=ns.output_dir,
        method=ns.method,
        steps=ns.steps,
        seed=ns.seed,
        use_lora=not ns.no_lora,
        resume=ns.resume,
        overwrite=ns.overwrite,
    )
    print(f"smoke run finished in {result.wall_seconds:.1f} s; run directory: {result.run_dir}")
    return 0


def _train(ns: argparse.Namespace) -> int:
    from cepo.integrations.trl.from_config import train_from_config

    run_dir = train_from_config(ns.config, ns.overrides, resume=ns.resume, overwrite=ns.overwrite)
    print(f"training finished; run directory: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cepo", description="CEPO / RLSD / GRPO training (TRL engine)")
    sub = parser.add_subparsers(dest="command", required=True)

    smoke = sub.add_parser("smoke", help="a complete CEPO run on CPU with an offline tiny Qwen3-VL")
    smoke.add_argument("--method", default="cepo", choices=["grpo", "rlsd", "cepo"])
    smoke.add_argument("--steps", type=int, default=4, help="optimizer steps (default 4)")
    smoke.add_argument("--output-dir", default="runs/smoke", help="run directory (default runs/smoke)")
    smoke.add_argument("--seed", type=int, default=0)
    smoke.add_argument("--no-lora", action="store_true", help="full fine-tuning instead of LoRA r16/a32")
    smoke.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    smoke.add_argument("--overwrite", action="store_true", help="delete the checkpoints already in --output-dir")
    smoke.set_defaults(func=_smoke)

    train = sub.add_parser("train", help="train from a method YAML (configs/<method>.yaml) on the TRL engine")
    train.add_argument("--config", required=True, help="path to a method YAML, e.g. configs/cepo.yaml")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="delete the checkpoints already in the run dir")
    train.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. cepo.eps_w=0.2")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        return ns.func(ns)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"cepo {ns.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"cepo {ns.command}: failed (traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
