"""The whole distance on the TRL engine: runs past the lambda warm-up, lambda per generation round, the paper's
batch layout, unscorable rollouts, and P_S scored only where it is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from cepo.algorithms import group_advantages, linear_lambda, negative_hints
from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward
from cepo.integrations.trl.rewards import completion_text
from cepo.rewards import extract_answer
from cepo.smoke import run_smoke
from cepo.testing import make_geo3k_like
from cepo.testing.trl_runs import tiny_run_settings


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["grpo", "rlsd", "cepo"])
def test_run_continues_past_lambda_warmup(method: str, smoke_model: Path, tmp_path: Path) -> None:
    """warmup_steps + 2 steps: lambda reaches 0 and the run goes on as GRPO, with no teacher pass (the paper's
    50-step schedule used to crash at step 26 with "method 'cepo' needs logp_pos")."""
    result = run_smoke(tmp_path / method, method=method, steps=4, model_dir=smoke_model, echo=False, save_steps=10,
                       cepo_warmup_steps=2)
    rows = _rows(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    if method == "grpo":  # lambda modulates RLSD and CEPO only: GRPO's run neither logs nor plots one
        assert not any("cepo/lambda" in r for r in rows)
    else:
        assert [r["cepo/lambda"] for r in rows] == [0.5, 0.25, 0.0, 0.0]
    teacher_steps = {c["step"] for c in result.trainer.teacher_calls}  # none in a round whose groups all tie
    assert teacher_steps <= {0, 1} and bool(teacher_steps) == (method != "grpo")
    assert all(e["step"] < 2 for e in result.trainer.forward_log)
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(
    "layout",
    [{"steps_per_generation": 2, "per_device_train_batch_size": 8}, {"num_iterations": 2}],
    ids=["steps_per_generation", "num_iterations"],
)
def test_lambda_counts_generation_rounds_not_optimizer_steps(
    layout: dict[str, int], smoke_model: Path, tmp_path: Path
) -> None:
    """Two optimizer steps per generation round: lambda (and the teacher passes) follow the rounds, as verl's
    training steps and the authors' code do, so lambda falls once per round, not once per optimizer step."""
    result = run_smoke(tmp_path / "run", steps=4, model_dir=smoke_model, echo=False, save_steps=10,
                       cepo_warmup_steps=2, **layout)  # 16 rollouts (4 prompts x 4) per generation round
    trainer = result.trainer
    rounds = [r for r in _rows(result.run_dir / "metrics.jsonl") if "cepo/lambda" in r]
    assert [r["cepo/generation_round"] for r in rounds] == [0, 1]
    assert [r["cepo/lambda"] for r in rounds] == [linear_lambda(0, 0.5, 2), linear_lambda(1, 0.5, 2)] == [0.5, 0.25]
    # generated at optimizer steps 0 and 2; round 1 (step 2) still has lambda > 0, so its teacher passes run
    # (counting optimizer steps gave lambda(2) = 0 there); round 0's may all be skipped when every group ties
    steps = {c["step"] for c in trainer.teacher_calls}
    assert 2 in steps and steps <= {0, 2}


def test_paper_batch_layout_maps_onto_trl() -> None:
    """The paper's batch (32 prompts x 8 = 256 rollouts per training step, 2 optimizer steps of 16 prompts, micro
    4, 1 epoch, gradient checkpointing, 50 steps with 5 warm-up steps) becomes the same layout on TRL."""
    from cepo.integrations.trl.from_config import trl_args, trl_batch_layout
    from cepo.recipes import compose_method_config

    cfg = compose_method_config("cepo")
    for processes in (1, 2, 8):
        layout = trl_batch_layout(cfg, processes)
        per_step = layout["per_device_train_batch_size"] * processes
        assert layout["per_device_train_batch_size"] == 4
        assert layout["steps_per_generation"] * per_step == 256  # one generation round = one verl training step
        assert layout["gradient_accumulation_steps"] * per_step == 128  # one optimizer step = 16 prompts x 8
        assert layout["optimizer_steps_per_training_step"] == 2 and layout["num_iterations"] == 1
    args = trl_args(cfg, num_processes=1)
    assert args.generation_batch_size == 256 and args.max_steps == 100 and args.warmup_steps == 10
    assert args.gradient_checkpointing and args.save_steps == 50 and args.lr_scheduler_type == "cosine"
    epochs = trl_batch_layout(compose_method_config("cepo", ["actor_rollout_ref.actor.ppo_epochs=2"]), 1)
    assert epochs["num_iterations"] == 2 and epochs["optimizer_steps_per_training_step"] == 4
    bad = compose_method_config("cepo", ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5"])
    with pytest.raises(ValueError, match=r"ppo_micro_batch_size_per_gpu=5 x 1 process\(es\) must divide"):
        trl_batch_layout(bad, 1)


class _Recording(CEPOTrainer):
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        self.generated.append({"advantages": output["advantages"].clone(), "mask": output["completion_mask"].clone(),
                               "rewards_per_func": self._cepo_rollouts["rewards_per_func"].clone(),
                               "completions": [completion_text(c) for c in self._cepo_rollouts["completions"]]})
        return output


def _trainer(smoke_model: Path, tmp_path: Path, method: str, reward: Any, **extra: Any) -> _Recording:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    args = CEPOGRPOConfig(**tiny_run_settings(tmp_path, method, **extra))
    trainer = _Recording(
        model=AutoModelForImageTextToText.from_pretrained(smoke_model), reward_funcs=reward, args=args,
        train_dataset=to_conversational(make_geo3k_like(32)),
        processing_class=AutoProcessor.from_pretrained(smoke_model),
    )
    trainer.generated = []
    return trainer


@pytest.mark.parametrize("method", ["grpo", "cepo"])
def test_unscorable_rollouts_get_zero_advantage(method: str, smoke_model: Path, tmp_path: Path) -> None:
    """A rollout every reward function left unscored (None) is not a reward-0 rollout: it stays out of its group's
    mean and std and gets advantage 0, as TRL itself does (it used to be summed to 0 by nansum)."""
    base = make_math_reward()

    def partial_reward(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float | None]:
        scores = base(completions, answer, **kwargs)
        return [None if i % 3 == 0 else s for i, s in enumerate(scores)]

    trainer = _trainer(smoke_model, tmp_path, method, partial_reward)
    trainer.train()
    gen = trainer.generated[0]
    rewards = gen["rewards_per_func"][:, 0]
    unscored = torch.isnan(rewards)
    assert unscored.any() and (~unscored).any()
    assert torch.all(gen["advantages"][unscored] == 0)
    # the scored rows: Eq. 1 over the scored members of each group only (an independent float64 computation)
    expected = torch.zeros(rewards.shape[0], dtype=torch.float64)
    for start in range(0, rewards.shape[0], 4):
        rows = [r for r in range(start, start + 4) if not unscored[r]]
        scored = rewards[rows].double()
        if len(rows) >= 2:
            expected[rows] = (scored - scored.mean()) / (scored.std() + 1e-6)
    sequence = (gen["advantages"] * gen["mask"]).sum(-1) / gen["mask"].sum(-1).clamp(min=1)
    if method == "grpo":
        torch.testing.assert_close(sequence.double(), expected, rtol=1e-5, atol=1e-6)
    else:  # CEPO keeps the sign and stays within A x [1 -+ lam eps_w] on every token
        assert torch.all(torch.sign(gen["advantages"]) == torch.sign(expected.float()).unsqueeze(-1) * gen["mask"])
    assert not torch.equal(expected, group_advantages(torch.nan_to_num(rewards, 0.0).double(),
                                                      [i // 4 for i in range(rewards.shape[0])]))


@pytest.mark.parametrize("method", ["rlsd", "cepo"])
def test_student_pass_scores_only_the_rows_that_read_it(method: str, smoke_model: Path, tmp_path: Path) -> None:
    """P_S is scored only where the credit reads it (RLSD: rows with A != 0; CEPO: those whose group has no r-),
    and not at all when TRL already computed old log-probs (steps_per_generation > gradient_accumulation_steps)."""
    trainer = _trainer(smoke_model, tmp_path / "a", method, make_math_reward())
    trainer.train()
    gen = trainer.generated[0]
    active = int(((gen["advantages"] != 0).any(-1)).sum())
    student = [e for e in trainer.forward_log if e["kind"] == "student"]
    pos = sum(1 for c in trainer.teacher_calls if c["kind"] == "pos")
    neg = sum(1 for c in trainer.teacher_calls if c["kind"] == "neg")
    assert pos == active and active > 0
    expected_student = active if method == "rlsd" else pos - neg
    assert sum(e["rows"] for e in student) == expected_student < gen["advantages"].shape[0]

    reused = _trainer(smoke_model, tmp_path / "b", method, make_math_reward(), per_device_train_batch_size=8,
                      steps_per_generation=2)
    reused.train()
    assert [e for e in reused.forward_log if e["kind"] == "student"] == []


@pytest.mark.parametrize("reference", ["own_answer", "most_frequent"])
def test_negative_reference_reaches_the_teacher(reference: str, smoke_model: Path, tmp_path: Path) -> None:
    """``cepo_negative_reference`` decides the r- hint of every teacher row the trainer scores."""
    trainer = _trainer(smoke_model, tmp_path, "cepo", make_math_reward(), max_steps=3,
                       cepo_negative_reference=reference)
    trainer.train()
    checked = 0
    for step, gen in enumerate(trainer.generated):
        rewards = gen["rewards_per_func"][:, 0]
        groups = [i // 4 for i in range(rewards.shape[0])]
        answers = [extract_answer(text) for text in gen["completions"]]
        expected, _ = negative_hints(answers, rewards, groups, reference=reference)
        for call in trainer.teacher_calls:
            if call["step"] == step and call["kind"] == "neg":
                assert call["hint"] == expected[call["row"]]
                checked += 1
    assert checked > 0
