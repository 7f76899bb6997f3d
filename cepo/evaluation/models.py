"""What to evaluate: a base model id, a merged checkpoint, or a LoRA adapter from either engine.

:func:`resolve_model` turns what the user typed into a :class:`ModelSource`:

* a Hugging Face hub id (``Qwen/Qwen3-VL-2B-Instruct``): used as is;
* a directory with ``config.json`` and weights (a merged checkpoint, ``scripts/merge_lora.py`` output, a TRL
  ``final/`` of a full fine-tune): used as is;
* a PEFT adapter directory (``adapter_config.json``): a TRL ``final/`` or ``checkpoint-*``, a verl
  ``global_step_*/actor/lora_adapter``; its base model is ``--base`` or the adapter's ``base_model_name_or_path``;
* a TRL run directory (it holds ``final/``) or a verl ``global_step_*`` / ``actor`` directory (it holds
  ``lora_adapter/``): the model inside.

lmms-eval 0.7.3's vLLM backend takes no adapter, so :func:`merged_checkpoint` merges one into its base model in a
temporary directory with ``cepo.lora.merge`` (the same function as ``scripts/merge_lora.py``) and removes it
afterwards. ``cepo eval --local`` and ``cepo credit-map`` load the adapter on top of its base model in memory
(:func:`load_model`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: ``path`` is a hub id or a directory; ``base`` is set for an adapter."""

    given: str
    path: str
    kind: str  # "hub", "checkpoint" or "adapter"
    base: str | None = None
    run_dir: Path | None = None
    """The TRL run directory the model came from (its ``config.json`` names the method)."""

    @property
    def is_adapter(self) -> bool:
        return self.kind == "adapter"

    def method(self) -> str | None:
        """The training method of the run this model came from (TRL ``cepo_method``, verl ``algorithm.adv_estimator``
        in a saved Hydra config), or ``None``."""
        if self.run_dir is None:
            return None
        config = self.run_dir / "config.json"
        if config.is_file():
            with contextlib.suppress(ValueError, OSError):
                method = json.loads(config.read_text()).get("cepo_method")
                if isinstance(method, str):
                    return method
        return None


def _has_weights(path: Path) -> bool:
    return (path / "config.json").is_file() and any(any(path.glob(g)) for g in _WEIGHT_GLOBS)


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") != 1 or Path(text).exists()


def _trl_run_dir(path: Path) -> Path | None:
    """``path`` when it is a TRL run directory (it holds ``metrics.jsonl``, or ``config.json`` and checkpoints)."""
    if (path / "metrics.jsonl").is_file() or ((path / "config.json").is_file() and any(path.glob("checkpoint-*"))):
        return path
    return None


def resolve_model(given: str, base: str | None = None, option: str = "MODEL") -> ModelSource:
    """Resolve ``given`` (module docstring). ``FileNotFoundError`` / ``ValueError`` name ``option`` and the fix."""
    text = str(given).strip()
    if not text:
        raise ValueError(f"{option} is empty; pass a hub id, a checkpoint directory or a LoRA adapter directory")
    if not _looks_like_path(text):
        return ModelSource(given=text, path=text, kind="hub")
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{option} {text!r} does not exist (a checkpoint path; a hub id looks like org/name)")
    if not path.is_dir():
        raise ValueError(f"{option} {text!r} is a file; pass the checkpoint or adapter directory")
    path = path.resolve()
    inner = path
    if not (_has_weights(path) or _is_adapter(path)):
        for sub in ("final", "lora_adapter", "actor/lora_adapter"):
            if _has_weights(path / sub) or _is_adapter(path / sub):
                inner = path / sub
                break
        else:
            shards = any(path.glob("model_world_size_*")) or any(path.glob("actor/model_world_size_*"))
            if shards:
                actor = path if any(path.glob("model_world_size_*")) else path / "actor"
                raise ValueError(
                    f"{option} {text!r} is a sharded verl FSDP checkpoint without a LoRA adapter; merge it first: "
                    f"python -m verl.model_merger merge --backend fsdp --local_dir {actor} --target_dir <dir>, "
                    "then pass <dir>"
                )
            raise ValueError(
                f"{option} {text!r} holds no model: expected config.json + weights, an adapter_config.json, or a "
                "run directory with final/ (TRL) or lora_adapter/ (verl actor)"
            )
    # a TRL run's own model (final/, checkpoint-*) carries the run's method; a base model kept inside a run
    # directory (cepo smoke's base-model/) does not
    run_dir = _trl_run_dir(inner.parent) if inner.name == "final" or inner.name.startswith("checkpoint-") else None
    if _has_weights(inner) and not _is_adapter(inner):
        return ModelSource(given=text, path=str(inner), kind="checkpoint", run_dir=run_dir)
    adapter_base = base
    if adapter_base is None:
        with contextlib.suppress(ValueError, OSError):
            adapter_base = json.loads((inner / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not adapter_base:
        raise ValueError(
            f"{option} {text!r} is a LoRA adapter whose adapter_config.json names no base model; pass --base"
        )
    if _looks_like_path(adapter_base) and not Path(adapter_base).expanduser().exists():
        where = "--base" if base else f"the adapter's base_model_name_or_path ({inner / 'adapter_config.json'})"
        raise FileNotFoundError(
            f"the base model {adapter_base!r} of adapter {str(inner)!r} does not exist ({where}); pass --base"
        )
    return ModelSource(given=text, path=str(inner), kind="adapter", base=str(adapter_base), run_dir=run_dir)


@contextlib.contextmanager
def merged_checkpoint(source: ModelSource, work_dir: str | Path, dtype: str = "bfloat16") -> Iterator[str]:
    """The model as a directory lmms-eval can load: ``source.path`` itself, or, for an adapter, the adapter merged
    into its base in a temporary directory under ``work_dir`` (removed on exit)."""
    if not source.is_adapter:
        yield source.path
        return
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="merged-", dir=work_dir))
    try:
        from cepo.lora import merge

        print(f"cepo eval: merging adapter {source.path} into {source.base} -> {tmp} (removed afterwards)", flush=True)
        merge(source.base, source.path, str(tmp), dtype)
        yield str(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(source: ModelSource, device: str = "cpu", dtype: str | None = None) -> tuple[Any, Any]:
    """``(model, processing_class)`` in eval mode on ``device``: an adapter is applied to its base in memory.

    ``dtype``: ``None`` = float32 on CPU, bfloat16 on CUDA. The processing class is the processor of a
    vision-language model (the adapter directory's own if it has one, else the base model's), else the tokenizer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    weights = source.base if source.is_adapter else source.path
    assert weights is not None
    torch_dtype = getattr(torch, dtype) if dtype else (torch.float32 if device == "cpu" else torch.bfloat16)
    try:
        config = AutoConfig.from_pretrained(weights)
    except OSError as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"cannot load model {weights!r}: {first}") from None
    vision = getattr(config, "vision_config", None) is not None
    loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar above our one-line messages
    try:
        model = loader.from_pretrained(weights, dtype=torch_dtype)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    if source.is_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source.path).merge_and_unload()
    model.to(device).eval()
    return model, load_processing_class(source)


def load_processing_class(source: ModelSource) -> Any:
    """The processor (vision-language model) or tokenizer of ``source``, without loading weights."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    weights = source.base if source.is_adapter else source.path
    vision = getattr(AutoConfig.from_pretrained(weights), "vision_config", None) is not None
    for where in ([source.path, weights] if source.is_adapter else [weights]):
        with contextlib.suppress(OSError, ValueError, TypeError):
            return AutoProcessor.from_pretrained(where) if vision else AutoTokenizer.from_pretrained(where)
    raise ValueError(f"cannot load the processor/tokenizer of {source.given!r}")


def context_length(model_or_config: Any) -> int | None:
    """The maximum sequence length (``max_position_embeddings`` of the text config) of a model or a config, if it
    declares one."""
    config = getattr(model_or_config, "config", model_or_config)
    text = getattr(config, "text_config", None) or config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None
