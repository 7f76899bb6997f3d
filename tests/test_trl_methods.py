"""OPSD, SDPO and ConSPO on the TRL engine: the token advantages reaching TRL's loss equal an independent
computation (``cepo.teacher`` forwards + ``cepo.algorithms``) on the same rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cepo.algorithms import demonstration_rows
from cepo.config import SDPO_TEMPLATE, CEPOConfig
from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward
from cepo.integrations.trl.rewards import completion_text
from cepo.teacher import STUDENT_TEMPLATE, build_teacher_inputs, teacher_logprobs
from cepo.testing import make_geo3k_like, reference
from cepo.testing.trl_runs import first_half_correct, tiny_run_settings


class _Recording(CEPOTrainer):
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        rollouts = self._cepo_rollouts
        self.generated.append({
            "output": {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in output.items()},
            "prompts": rollouts["prompts"], "images": [list(x["images"]) for x in inputs],
            "answers": [x["answer"] for x in inputs],
            "texts": [completion_text(c) for c in rollouts["completions"]],
            "rewards": rollouts["rewards_per_func"].sum(dim=1),
        })
        return output


def _train(method: str, smoke_model: Path, tmp_path: Path, **extra: Any) -> _Recording:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    settings = tiny_run_settings(tmp_path, method, bf16=False, **extra)
    trainer = _Recording(
        model=AutoModelForImageTextToText.from_pretrained(smoke_model),
        reward_funcs=[make_math_reward(), first_half_correct], args=CEPOGRPOConfig(**settings),
        train_dataset=to_conversational(make_geo3k_like(32)),
        processing_class=AutoProcessor.from_pretrained(smoke_model),
    )
    trainer.generated = []
    trainer.train()
    trainer.initial_model = AutoModelForImageTextToText.from_pretrained(smoke_model).eval()  # round 0's weights
    return trainer


def _score(trainer: _Recording, gen: dict, hints: list[str], template: str) -> torch.Tensor:
    out = gen["output"]
    inputs = build_teacher_inputs(trainer.processing_class, gen["prompts"], hints, out["completion_ids"],
                                  out["completion_mask"], gen["images"], template=template)
    return teacher_logprobs(trainer.initial_model, inputs)


@pytest.mark.parametrize("method", ["opsd", "sdpo"])
def test_self_distillation_advantages(method: str, smoke_model: Path, tmp_path: Path) -> None:
    """OPSD: every rollout (A = 0 too) distils towards the r+ teacher; SDPO: towards the teacher shown a successful
    peer rollout of its group (none for a group's only success). Pure distillation (w = 1): A_t = log P_T - log P_S."""
    trainer = _train(method, smoke_model, tmp_path)
    gen = trainer.generated[0]
    out, rewards = gen["output"], gen["rewards"]
    student = _score(trainer, gen, [""] * len(rewards), STUDENT_TEMPLATE)
    if method == "opsd":
        has_teacher = torch.ones(len(rewards), dtype=torch.bool)
        teacher = _score(trainer, gen, [str(a) for a in gen["answers"]], CEPOConfig().teacher_template)
    else:
        demos = demonstration_rows(rewards, [i // 4 for i in range(len(rewards))])
        has_teacher = torch.tensor([d is not None for d in demos])
        teacher = _score(trainer, gen, [gen["texts"][d] if d is not None else "" for d in demos], SDPO_TEMPLATE)
        calls = [c for c in trainer.teacher_calls if c["kind"] == "demo"]
        assert [c["hint"] for c in calls] == [gen["texts"][d] for d in demos if d is not None]
    assert has_teacher.any()
    expected = reference.distillation_advantages(teacher, student, out["completion_mask"], has_teacher)
    torch.testing.assert_close(out["advantages"], expected.float(), rtol=1e-4, atol=1e-5)
    assert bool((out["advantages"] != 0).any())


def test_conspo_advantages(smoke_model: Path, tmp_path: Path) -> None:
    """ConSPO: sequence advantages from the rollout policy's length-normalised log-probs of every rollout."""
    trainer = _train("conspo", smoke_model, tmp_path)
    gen = trainer.generated[0]
    out, rewards = gen["output"], gen["rewards"]
    mask = out["completion_mask"]
    student = _score(trainer, gen, [""] * len(rewards), STUDENT_TEMPLATE)
    # float64 reference: the paper's tau = 10 and margin 0 (the curriculum's start), -dL/ds by autograd of the
    # written-out Eq. 13, spread as A_i N / |o_i| over the batch's N response tokens
    scores = reference.mean_logprob_scores(student, mask)
    seq = reference.conspo_sequence_advantages(scores, rewards, [i // 4 for i in range(len(rewards))], tau=10.0,
                                               margin=0.0)
    expected = reference.conspo_token_advantages(seq, mask)
    torch.testing.assert_close(out["advantages"], expected.float(), rtol=1e-3, atol=1e-4)
    assert bool((out["advantages"] != 0).any())


def test_conspo_needs_one_update_per_rollout(smoke_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs one optimizer step per generation round"):
        _train("conspo", smoke_model, tmp_path, per_device_train_batch_size=8, steps_per_generation=2)
