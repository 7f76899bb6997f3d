"""``cepo smoke --engine verl``: the verl main job on one GPU with the real vLLM rollout, in about two minutes.

What a GPU user runs after ``cepo doctor`` and before the 2B job: the train scripts' entry point
(``python -m cepo.integrations.verl.main --config-name <method>``) on a tiny random Qwen3-VL written offline
(:func:`save_vllm_tiny_qwen3vl`: dimensions vLLM's kernels accept) and a tiny Geo3k-shaped parquet in verl's layout
(``scripts/prepare_geo3k.py``'s own converter), with the overrides of :func:`smoke_overrides` for one GPU: two
training steps with a checkpoint after each, then a second run that resumes from the last checkpoint and trains
one more step. It checks the checkpoints verl wrote (``global_step_<n>``, ``latest_checkpointed_iteration.txt``).

Without a CUDA GPU or vLLM it refuses in one line (:func:`missing_gpu_stack`, exit 2) before writing anything.
The composed config of the exact overrides is validated on CPU by ``tests/verl/test_verl_smoke.py``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cepo.integrations.verl.resources import MIN_VLLM

SMOKE_STEPS = 2
"""Steps of the first run; the resumed run trains one more."""

#: Text decoder of the vLLM-ready tiny Qwen3-VL: head_dim 64 (FlashAttention / FlashInfer sizes), M-RoPE sections
#: summing to head_dim / 2 in Qwen3-VL-2B's T/H/W proportions ([24, 20, 20] for head_dim 128).
VLLM_TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
}
MROPE_SECTION = [12, 10, 10]
#: Vision tower: head_dim 64 (hidden 128 / 2 heads) for vLLM's ViT attention; its output feeds the text hidden size.
VLLM_VISION_SIZES: dict[str, Any] = {
    "hidden_size": 128, "intermediate_size": 256, "num_heads": 2, "out_hidden_size": VLLM_TEXT_SIZES["hidden_size"],
}


@dataclass(frozen=True)
class SmokeResult:
    run_dir: Path
    wall_seconds: float
    checkpoints: list[int]


def missing_gpu_stack() -> list[str]:
    """What this machine lacks for the verl smoke run: a CUDA GPU visible to torch, vLLM (>= verl's minimum)."""
    import torch

    missing = []
    if not torch.cuda.is_available():
        build = "a CPU build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        missing.append(f"a CUDA GPU (torch {torch.__version__}: {build})")
    try:
        found: str | None = version("vllm")
    except PackageNotFoundError:
        found = None
    if found is None or importlib.util.find_spec("vllm") is None:
        missing.append("vLLM (not installed)")
    else:
        from packaging.version import Version

        if Version(found) < Version(MIN_VLLM):
            missing.append(f"vLLM >= {MIN_VLLM} (found {found})")
    return missing


def refusal(missing: list[str]) -> str:
    """The one line for a machine without the GPU stack."""
    return (f"--engine verl needs {' and '.join(missing)}; on a GPU node install the GPU stack "
            '(pip install -e ".[gpu,trl]", docs/install.md) and check it with cepo doctor, or run the CPU smoke '
            "test with the TRL engine: cepo smoke")


def vllm_tiny_qwen3vl_config(tokenizer: Any) -> Any:
    """The tiny Qwen3-VL of :mod:`cepo.testing` with the sizes above (2 text layers, 2 vision blocks)."""
    from transformers import Qwen3VLConfig

    from cepo.testing.models import tiny_qwen3vl_config

    spec = tiny_qwen3vl_config(tokenizer).to_dict()
    spec["text_config"].update(VLLM_TEXT_SIZES)
    spec["text_config"]["rope_parameters"] = {**spec["text_config"]["rope_parameters"], "mrope_section": MROPE_SECTION}
    spec["vision_config"].update(VLLM_VISION_SIZES)
    return Qwen3VLConfig.from_dict(spec)


def save_vllm_tiny_qwen3vl(path: Path, seed: int = 0) -> Path:
    """Write the vLLM-ready tiny Qwen3-VL (weights, generation config, processor, tokenizer) to ``path``; no download.

    The processor, tokenizer and generation ids are those of :func:`cepo.testing.save_tiny_qwen3vl`; the model is
    rebuilt with :func:`vllm_tiny_qwen3vl_config` (weights from ``seed``, the global RNG untouched).
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen3VLForConditionalGeneration

    from cepo.testing import save_tiny_qwen3vl

    save_tiny_qwen3vl(path, seed=seed)
    config = vllm_tiny_qwen3vl_config(AutoTokenizer.from_pretrained(path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig.from_pretrained(path)
    for stale in path.glob("model*.safetensors*"):
        stale.unlink()
    model.save_pretrained(path)
    return path


def _prepare_geo3k_module() -> Any:
    """``scripts/prepare_geo3k.py`` of this checkout (the converter users run on Geo3k)."""
    script = Path(__file__).resolve().parents[3] / "scripts" / "prepare_geo3k.py"
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: run cepo smoke --engine verl from a cepo checkout "
                                "(pip install -e .)")
    spec = importlib.util.spec_from_file_location("cepo_prepare_geo3k", script)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def write_verl_geo3k(out: Path, n_train: int = 8, n_test: int = 4, seed: int = 0) -> Path:
    """``train.parquet`` / ``test.parquet`` in verl's layout, converted from the Geo3k-shaped fixture."""
    from cepo.testing.geo3k import make_geo3k_like

    to_verl = _prepare_geo3k_module().to_verl
    out.mkdir(parents=True, exist_ok=True)
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + 1)):
        to_verl(make_geo3k_like(n, seed=split_seed), split).to_parquet(str(out / f"{split}.parquet"))
    return out


def smoke_overrides(model_dir: Path, data_dir: Path, run_dir: Path, method: str, steps: int,
                    use_lora: bool = True) -> list[str]:
    """The Hydra overrides of the smoke run: the method YAML on one GPU, tiny batches and lengths, vLLM with a
    small memory share and no CUDA graphs, a checkpoint every step, resume from the newest one."""
    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={data_dir / 'train.parquet'}",
        f"data.val_files={data_dir / 'test.parquet'}",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "data.train_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
        "data.max_prompt_length=256",
        "data.max_response_length=32",
        "cepo.teacher_max_prompt_length=512",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.2",
        "actor_rollout_ref.rollout.enforce_eager=true",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        f"trainer.total_training_steps={steps}",
        "trainer.save_freq=1",
        f"trainer.test_freq={steps}",
        "trainer.val_before_train=false",
        "trainer.resume_mode=auto",
        "trainer.logger=[console]",
        f"trainer.experiment_name=smoke_{method}",
        f"trainer.default_local_dir={run_dir}",
    ]
    if not use_lora:
        overrides.append("actor_rollout_ref.model.lora_rank=0")
    return overrides


def entry_point_command(method: str, overrides: list[str]) -> list[str]:
    """The train scripts' command (``scripts/_train_common.sh``) with ``overrides``."""
    return [sys.executable, "-m", "cepo.integrations.verl.main", "--config-name", method, *overrides]


def _checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("global_step_")) for p in run_dir.glob("global_step_*")
                  if p.name.removeprefix("global_step_").isdigit() and (p / "actor").is_dir())


def _clear(run_dir: Path, overwrite: bool) -> None:
    """Refuse a run directory that holds files (one line naming it and the fix), or with ``overwrite`` remove what
    a verl smoke run writes there (``inputs/``, ``global_step_*``, ``latest_checkpointed_iteration.txt``,
    ``hydra/``)."""
    import shutil

    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ValueError(f"--output-dir {run_dir} is a file; give a directory")
    if not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise ValueError(f"--output-dir {run_dir} is not empty; use --overwrite to replace a previous verl smoke run "
                         "there, or --output-dir <another dir>")
    for item in [run_dir / "inputs", run_dir / "hydra", *run_dir.glob("global_step_*")]:
        if item.is_dir():
            shutil.rmtree(item)
    (run_dir / "latest_checkpointed_iteration.txt").unlink(missing_ok=True)


def run_verl_smoke(output_dir: str | Path, method: str = "cepo", seed: int = 0, use_lora: bool = True,
                   overwrite: bool = False, resume: bool = False) -> SmokeResult:
    """Two steps with a checkpoint each, then a resumed run to step 3, on one GPU with vLLM.

    Raises:
        ValueError: one line: no CUDA GPU or no vLLM (:func:`refusal`), ``--resume`` (the run always resumes),
            a non-empty ``output_dir`` without ``overwrite``.
        RuntimeError: the job failed or did not leave the checkpoints it should have (naming the run directory).
    """
    missing = missing_gpu_stack()
    if missing:
        raise ValueError(refusal(missing))
    if resume:
        raise ValueError("--resume does not apply to --engine verl: the smoke run itself trains 2 steps, then "
                         "resumes from the checkpoint for a third; drop --resume")
    start = time.monotonic()
    run_dir = Path(output_dir).expanduser().absolute()
    _clear(run_dir, overwrite)
    work = run_dir / "inputs"
    model_dir = save_vllm_tiny_qwen3vl(work / "model", seed=seed)
    data_dir = write_verl_geo3k(work / "data", seed=seed)
    env = {k: v for k, v in os.environ.items() if k not in ("NGPUS", "MODEL_PATH", "DATA_DIR")}
    for steps in (SMOKE_STEPS, SMOKE_STEPS + 1):
        command = entry_point_command(method, smoke_overrides(model_dir, data_dir, run_dir, method, steps, use_lora))
        print(f"cepo smoke --engine verl: {' '.join(command[1:5])} ... trainer.total_training_steps={steps}",
              flush=True)
        done = subprocess.run(command, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the verl job exited with status {done.returncode} (its output is above); "
                               f"run directory {run_dir}")
        have = _checkpoints(run_dir)
        if steps not in have:
            raise RuntimeError(f"the verl job finished without the checkpoint of step {steps} in {run_dir} "
                               f"(found {have})")
    latest = (run_dir / "latest_checkpointed_iteration.txt").read_text().strip()
    if latest != str(SMOKE_STEPS + 1):
        raise RuntimeError(f"{run_dir}/latest_checkpointed_iteration.txt says {latest}, not {SMOKE_STEPS + 1}")
    return SmokeResult(run_dir, time.monotonic() - start, _checkpoints(run_dir))
