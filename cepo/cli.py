"""The ``cepo`` command line: ``cepo smoke`` and ``cepo train`` (TRL engine; ``cepo smoke --engine verl`` on a GPU),
``cepo doctor`` (is this node ready for the verl job); ``cepo eval``, ``cepo report``,
``cepo credit-map`` and ``cepo plot`` (``cepo.evaluation.commands``: results, Fig. 5 heat-maps, training curves).

The verl engine has its own Hydra entry point: ``python -m cepo.integrations.verl.main``.

Exit codes: 0 success, 2 bad input (one line on stderr naming the option, file or row, and the fix),
1 failure (a traceback), 130 interrupted (Ctrl-C; one line naming the last checkpoint and the ``--resume``
command).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from typing import Any, NoReturn

from cepo.output_paths import DiskFull


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, without the usage block, exit code 2:
    ``cepo smoke: error: <message> (see cepo smoke --help)``. ``error_prefix`` replaces ``<prog>:`` (the scripts'
    ``[prepare_math]``, so that their usage errors read as their other errors)."""

    def __init__(self, *args: Any, error_prefix: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.error_prefix = error_prefix

    def error(self, message: str) -> NoReturn:
        prefix = self.error_prefix or f"{self.prog}:"
        self.exit(2, f"{prefix} error: {message} (see {self.prog} --help)\n")


_Parser = OneLineParser


SMOKE_DEFAULT_STEPS = 4
"""``cepo smoke --steps`` when not given (TRL engine)."""
VERL_SMOKE_STEPS = 2
"""Steps of ``cepo smoke --engine verl`` before its resumed step (``cepo.integrations.verl.smoke.SMOKE_STEPS``)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _smoke_verl(ns: argparse.Namespace) -> int:
    from cepo.integrations.verl.smoke import run_verl_smoke

    result = run_verl_smoke(ns.output_dir, method=ns.method, seed=ns.seed, use_lora=not ns.no_lora,
                            overwrite=ns.overwrite, resume=ns.resume)
    print(f"verl smoke run finished in {result.wall_seconds:.1f} s: checkpoints {result.checkpoints} (the last one "
          f"resumed); run directory: {result.run_dir}")
    return 0


def _smoke_base_model(path: str | None) -> str | None:
    """``--base-model``: a folder that is reused when it holds a warm-started model, else must be writable."""
    if path is None:
        return None
    from pathlib import Path

    from cepo.output_paths import check_output_dir

    if not (Path(path).expanduser() / "config.json").is_file():
        check_output_dir(path, "--base-model")
    return str(Path(path).expanduser())


def _smoke(ns: argparse.Namespace) -> int:
    if getattr(ns, "engine", "trl") == "verl":
        if getattr(ns, "text", False):
            print("cepo smoke: error: --text runs on the TRL engine (the default --engine trl); the verl smoke run "
                  "uses the tiny Qwen3-VL", file=sys.stderr)
            return 2
        for option, given in (("--steps", ns.steps is not None), ("--base-model", ns.base_model is not None)):
            if given:  # the verl smoke run has its own fixed steps and builds its own model: refused, not ignored
                print(f"cepo smoke: error: {option} applies to the TRL smoke run (the default --engine trl); the verl "
                      f"smoke run trains {VERL_SMOKE_STEPS} steps, then resumes for one more, on its own tiny model: "
                      f"leave {option} out", file=sys.stderr)
                return 2
        return _smoke_verl(ns)
    from cepo.integrations.trl.run import OptionNames
    from cepo.smoke import run_smoke

    result = run_smoke(
        output_dir=ns.output_dir,
        method=ns.method,
        steps=ns.steps if ns.steps is not None else SMOKE_DEFAULT_STEPS,
        seed=ns.seed,
        use_lora=not ns.no_lora,
        resume=ns.resume,
        overwrite=ns.overwrite,
        text=ns.text,
        model_dir=_smoke_base_model(ns.base_model),
        option_names=OptionNames(
            resume="--resume",
            overwrite="--overwrite",
            output_dir="--output-dir <another dir>",
            steps="--steps {}",
            batch="the smoke settings",
            output_option="--output-dir",
        ),
    )
    print(f"smoke run finished in {result.wall_seconds:.1f} s; run directory: {result.run_dir}")
    if not getattr(ns, "text", False):
        from cepo.smoke_files import write_try_files

        print(f"try the trained model on held-out problems and one figure in {result.run_dir / 'try'}:")
        for command in write_try_files(result.run_dir, seed=ns.seed):
            print(f"  {command}")
    return 0


def _train(ns: argparse.Namespace) -> int:
    from cepo.integrations.trl.from_config import train_from_config

    run_dir = train_from_config(
        ns.config, ns.overrides, resume=ns.resume, overwrite=ns.overwrite, on_bad_image=ns.on_bad_image
    )
    print(f"training finished; run directory: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cepo", description="CEPO / RLSD / GRPO training (TRL engine), evaluation and analysis")
    sub = parser.add_subparsers(dest="command", required=True)

    smoke = sub.add_parser("smoke", help="a complete CEPO run on CPU with an offline tiny Qwen3-VL")
    from cepo.algorithms import METHODS

    smoke.add_argument("--method", default="cepo", choices=sorted(METHODS))
    smoke.add_argument("--steps", type=_positive_int, default=None,
                       help=f"optimizer steps, at least 1 (default {SMOKE_DEFAULT_STEPS}; TRL engine)")
    smoke.add_argument("--output-dir", default="runs/smoke", help="run directory (default runs/smoke)")
    smoke.add_argument("--seed", type=int, default=0)
    smoke.add_argument("--no-lora", action="store_true", help="full fine-tuning instead of LoRA r16/a32")
    smoke.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    smoke.add_argument("--overwrite", action="store_true", help="delete the checkpoints already in --output-dir")
    smoke.add_argument("--base-model", metavar="DIR",
                       help="the warm-started tiny model: reused when DIR holds one, else built and saved there "
                            "(default <output-dir>/base-model); give every method the same DIR to warm-start once")
    smoke.add_argument("--text", action="store_true",
                       help="the tiny Qwen3 text LM on arithmetic problems (the text recipe's path, thinking off) "
                            "instead of the tiny Qwen3-VL on Geo3k-like figures")
    smoke.add_argument("--engine", choices=["trl", "verl"], default="trl",
                       help="trl (default): CPU; verl: the verl main job with vLLM on one GPU (2 steps, a "
                            "checkpoint, a resume; needs CUDA and vLLM)")
    smoke.set_defaults(func=_smoke)

    train = sub.add_parser("train", help="train from a method YAML (configs/<method>.yaml) on the TRL engine")
    train.add_argument("--config", required=True, help="path to a method YAML, e.g. configs/cepo.yaml")
    train.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    train.add_argument("--overwrite", action="store_true", help="delete the checkpoints already in the run dir")
    train.add_argument("--on-bad-image", choices=["fail", "skip"], default="fail",
                       help="rows whose image cannot be opened: fail naming them (default) or skip them")
    train.add_argument("overrides", nargs="*", help="Hydra-style overrides, e.g. cepo.eps_w=0.2")
    train.set_defaults(func=_train)

    from cepo.evaluation.commands import add_parsers

    add_parsers(sub)  # eval, report, credit-map, plot
    from cepo.doctor import add_parser as add_doctor_parser

    add_doctor_parser(sub)  # doctor
    return parser


def _rerun_command(argv: list[str], resume: bool) -> str:
    """The command line that was run, with ``--resume`` (and without ``--overwrite``) when ``resume``."""
    args = [a for a in argv if not (resume and a == "--overwrite")]
    if resume and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["cepo", *args])


def _interrupted(ns: argparse.Namespace, argv: list[str], err: BaseException) -> int:
    from cepo.integrations.trl.run import TrainingInterrupted

    prefix = f"cepo {ns.command}: interrupted"
    if not isinstance(err, TrainingInterrupted):
        print(f"{prefix} before training started; nothing to resume (rerun: {_rerun_command(argv, False)})",
              file=sys.stderr)
    elif err.checkpoint is None:
        print(f"{prefix} at step {err.step}, before the first checkpoint in {err.run_dir}; nothing to resume "
              f"(rerun: {_rerun_command(argv, False)})", file=sys.stderr)
    else:
        print(f"{prefix} at step {err.step}; last checkpoint: {err.checkpoint}; resume with: "
              f"{_rerun_command(argv, True)}", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage errors (2) and --help (0), already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    from cepo.hub_messages import quiet_hub_retries

    quiet_hub_retries()
    try:
        return ns.func(ns)
    except KeyboardInterrupt as err:
        return _interrupted(ns, argv, err)
    except DiskFull as err:
        where = f"last checkpoint: {err.checkpoint}; free space, then resume with: {_rerun_command(argv, True)}" \
            if err.checkpoint else f"no checkpoint was saved; free space, then rerun: {_rerun_command(argv, False)}"
        print(f"cepo {ns.command}: no space left on device in {err.run_dir} at step {err.step}; {where}",
              file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"cepo {ns.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"cepo {ns.command}: failed (traceback above)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
