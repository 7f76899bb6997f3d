"""``cepo smoke``: a complete CEPO run on CPU with the offline tiny Qwen3-VL and Geo3k-shaped data, or with
``--text`` the tiny Qwen3 text LM and small arithmetic problems (the text recipe's path: no image, Qwen3's
thinking switch off as in ``configs/text/math_base.yaml``).

It exercises the whole single-machine path — image inputs, generation, the verifier, r-
selection, the two teacher passes with the image in context, the (B, T) advantages in TRL's
loss, LoRA, checkpointing — in well under a minute on two CPU cores. The tiny model is
random, so it first gets a short supervised warm start on the answer format (see
``cepo.testing.warm_start``); without it every reward would be 0 and nothing would train.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

SMOKE_PROMPTS = 32
SMOKE_WARM_START_STEPS = 150
TEXT_CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}
"""The text smoke renders its prompts as ``configs/text/math_base.yaml`` does (Qwen3's thinking switch off)."""


@dataclass
class SmokeResult:
    run_dir: Path
    wall_seconds: float
    trainer: Any


def _is_prepared(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def smoke_dataset(text: bool = False, seed: int = 0) -> Any:
    """The smoke run's prompts in TRL's conversational layout: Geo3k-like figures, or (``text``) arithmetic
    problems with integer answers (``cepo.testing.math_data``)."""
    if text:
        from cepo.testing.math_data import make_math_like

        return make_math_like(SMOKE_PROMPTS, seed=seed)
    from cepo.data import to_conversational
    from cepo.testing import make_geo3k_like

    return to_conversational(make_geo3k_like(SMOKE_PROMPTS, seed=seed))


def prepare_smoke_model(model_dir: Path, seed: int = 0, echo: bool = False, text: bool = False) -> Path:
    """Build, warm-start and save the tiny Qwen3-VL (``text``: the tiny Qwen3 text LM and its tokenizer) once
    (reused when ``model_dir`` holds it).

    The warm start is most of a first smoke run's time; ``echo`` announces it and shows a progress bar. The
    model is saved to a temporary directory and renamed into ``model_dir``, so an interrupted warm start
    never leaves a half-saved model that a later run would reuse.
    """
    from cepo.testing import build_qwen_tokenizer, build_tiny_processor, build_tiny_qwen3vl, build_tiny_text_lm
    from cepo.testing.warm_start import warm_start

    model_dir = Path(model_dir)
    if _is_prepared(model_dir):
        return model_dir
    if echo:
        print(
            f"warm start: teaching the random tiny model the answer format ({SMOKE_WARM_START_STEPS} supervised "
            f"steps; done once and cached in {model_dir} for the next run)",
            flush=True,
        )
    tic = time.perf_counter()
    tokenizer = build_qwen_tokenizer()
    if text:
        processor: Any = tokenizer
        model = build_tiny_text_lm(tokenizer, seed=seed)
    else:
        processor = build_tiny_processor(tokenizer)
        model = build_tiny_qwen3vl(tokenizer, seed=seed)
    warm_start(model, processor, smoke_dataset(text, seed), steps=SMOKE_WARM_START_STEPS, seed=seed, progress=echo,
               chat_template_kwargs=TEXT_CHAT_TEMPLATE_KWARGS if text else None)
    staged = model_dir.with_name(f"{model_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(staged)
    processor.save_pretrained(staged)
    shutil.rmtree(model_dir, ignore_errors=True)  # an incomplete one from an older version
    os.replace(staged, model_dir)
    if echo:
        print(f"warm start: done in {time.perf_counter() - tic:.1f} s; cached in {model_dir}", flush=True)
    return model_dir


def run_smoke(
    output_dir: str | Path = "runs/smoke",
    method: str = "cepo",
    steps: int = 4,
    seed: int = 0,
    use_lora: bool = True,
    resume: bool = False,
    echo: bool = True,
    model_dir: str | Path | None = None,
    overwrite: bool = False,
    option_names: Any = None,
    text: bool = False,
    **overrides: Any,
) -> SmokeResult:
    """Run ``steps`` optimizer steps of ``method`` and return the run directory.

    ``overrides`` are extra ``CEPOGRPOConfig`` fields (e.g. ``cepo_eps_w=0.2``). ``model_dir`` reuses a
    prepared tiny model (default: ``<output_dir>/base-model``, or ``base-model-text`` with ``text``, built on
    first use). ``text`` runs the tiny text LM on arithmetic problems (module docstring). ``option_names``
    (``cepo.integrations.trl.run.OptionNames``) spells resume/overwrite/... in error messages (the CLI passes
    its flags). A Ctrl-C raises ``cepo.integrations.trl.run.TrainingInterrupted``.
    """
    from cepo.integrations.trl.config import CEPOGRPOConfig
    from cepo.integrations.trl.run import OptionNames, check_run_dir, lora_config, train

    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    tic = time.perf_counter()
    names = option_names or OptionNames(
        resume="resume=True", overwrite="overwrite=True", output_dir="another output_dir", steps="steps={}"
    )
    from cepo.output_paths import check_output_dir

    run_dir = check_output_dir(output_dir, names.output_option)
    settings: dict[str, Any] = {
        "output_dir": str(run_dir),
        "per_device_train_batch_size": 16,
        "num_generations": 4,
        "max_completion_length": 16,
        "max_steps": steps,
        "learning_rate": 2e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0,
        "logging_steps": 1,
        "save_steps": max(1, steps // 2),
        "report_to": "none",
        "use_cpu": True,
        "bf16": False,  # TRL defaults to bf16 autocast even on CPU; the tiny model trains in fp32
        "seed": seed,
        "temperature": 1.0,
        "cepo_method": method,
        "disable_tqdm": not echo,
        "chat_template_kwargs": dict(TEXT_CHAT_TEMPLATE_KWARGS) if text else None,
    }
    settings.update(overrides)
    args = CEPOGRPOConfig(**settings)
    checkpoint = check_run_dir(args, True if resume else None, overwrite, names)  # before the warm start
    default_dir = run_dir / ("base-model-text" if text else "base-model")
    model_dir = prepare_smoke_model(Path(model_dir) if model_dir else default_dir, seed=seed, echo=echo, text=text)
    if text:
        processor, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
    dataset = smoke_dataset(text, seed)
    trainer = train(
        model,
        processor,
        dataset,
        args,
        peft_config=lora_config() if use_lora else None,
        resume_from_checkpoint=checkpoint,
        echo=echo,
        overwrite=overwrite,
        names=names,
    )
    return SmokeResult(run_dir=run_dir, wall_seconds=time.perf_counter() - tic, trainer=trainer)
