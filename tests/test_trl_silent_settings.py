"""TRL runs that would silently compute something other than what was asked are refused (issue 17, section 1):
SDPO's EMA teacher under parameter sharding, a resume from inside a generation round. A tiny random Qwen3-VL (no
warm start: these runs only need to start and checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward
from cepo.testing import make_geo3k_like, save_tiny_qwen3vl
from cepo.testing.trl_runs import first_half_correct, tiny_run_settings


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen3vl(tmp_path_factory.mktemp("tiny_qwen3vl"))


class _Recording(CEPOTrainer):
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        self.generated.append({"output": {k: v.clone() if isinstance(v, torch.Tensor) else v
                                          for k, v in output.items()},
                               "prompts": self._cepo_rollouts["prompts"], "images": [list(x["images"]) for x in inputs],
                               "rewards": self._cepo_rollouts["rewards_per_func"].sum(dim=1)})
        return output


def _trainer(tiny_model: Path, tmp_path: Path, method: str, peft: Any = None,
             **extra: Any) -> _Recording:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    trainer = _Recording(
        model=AutoModelForImageTextToText.from_pretrained(tiny_model),
        reward_funcs=[make_math_reward(), first_half_correct],
        args=CEPOGRPOConfig(**tiny_run_settings(tmp_path, method, bf16=False, **extra)),
        train_dataset=to_conversational(make_geo3k_like(32)),
        processing_class=AutoProcessor.from_pretrained(tiny_model), peft_config=peft,
    )
    trainer.generated = []
    return trainer


@pytest.mark.parametrize("sharding", ["fsdp", "zero3"])
def test_ema_teacher_refused_under_parameter_sharding(tiny_model: Path, tmp_path: Path, sharding: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The EMA lerps ``named_parameters()``: under FSDP / ZeRO-3 those are shards, so the run is refused."""
    from types import SimpleNamespace

    from peft import LoraConfig

    trainer = _trainer(tiny_model, tmp_path, "sdpo", peft=LoraConfig(r=4, target_modules=["q_proj"]),
                       cepo_distill_teacher="ema")
    trainer._check_ema_unsharded()  # unsharded (this process): accepted
    if sharding == "fsdp":
        trainer.is_fsdp_enabled = True
    else:
        trainer.is_deepspeed_enabled = True  # accelerate's DeepSpeedPlugin needs deepspeed: its zero_stage only
        monkeypatch.setattr(type(trainer.accelerator.state), "deepspeed_plugin", SimpleNamespace(zero_stage=3))
    with pytest.raises(ValueError, match=r"cepo\.distill\.teacher=ema is not supported under .*teacher=live") as info:
        trainer._check_ema_unsharded()
    assert "\n" not in str(info.value) and ("FSDP" in str(info.value)) == (sharding == "fsdp")


def test_resume_inside_a_generation_round_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    """Two optimizer steps per generation round (steps_per_generation 4, gradient accumulation 2) and a checkpoint
    after step 1: resuming there would generate a new round mid-round, so it is refused naming save_steps."""
    layout = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_generation": 4,
              "save_strategy": "steps", "save_steps": 1, "max_steps": 1}
    _trainer(tiny_model, tmp_path, "grpo", **layout).train()
    checkpoint = tmp_path / "checkpoint-1"
    assert checkpoint.is_dir()
    resumed = _trainer(tiny_model, tmp_path, "grpo", **{**layout, "max_steps": 2})
    with pytest.raises(ValueError, match=r"inside a generation round .*save_steps to a multiple of 2") as info:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    assert "\n" not in str(info.value)


def test_conspo_refuses_tools(tiny_model: Path, tmp_path: Path) -> None:
    """TRL's loss leaves tool results out (tool_mask) but ConSPO's 1/|o| counts them: refused. (Building a trainer
    with tools needs jmespath on this transformers; the check reads the trainer's own ``tools`` attribute.)"""
    trainer = _trainer(tiny_model, tmp_path, "conspo")
    trainer._check_one_update_per_rollout()  # no tools: accepted
    trainer.tools = [len]
    with pytest.raises(ValueError, match=r"'conspo' does not support tools.*tool_mask.*cepo_method='grpo'") as info:
        trainer._check_one_update_per_rollout()
    assert "\n" not in str(info.value)
