"""The TRL engine's ``data.max_prompt_length`` check counts a prompt as the trainer renders it: with the run's
``data.apply_chat_template_kwargs``. Qwen3's template with ``enable_thinking=false`` appends an empty
``<think>\\n\\n</think>\\n\\n`` block after the generation prompt, so counting without the switch undercounts every
prompt of the text recipe (configs/text/, thinking off) and lets over-long prompts through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import pytest

from cepo.data import student_prompt
from cepo.integrations.trl.data import load_train_dataset, prompt_length
from cepo.testing import build_qwen_tokenizer
from cepo.testing.math_data import make_math_problems

THINKING_OFF = {"enable_thinking": False}


def _verl_math_file(path: Path, n: int = 4) -> Path:
    """Text problems in verl's layout (what scripts/prepare_math.py writes)."""
    problems = make_math_problems(n, seed=0)
    datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": student_prompt(p.problem)}],
         "reward_model": {"style": "rule", "ground_truth": p.answer}} for p in problems
    ]).to_parquet(str(path))
    return path


def _rendered_length(tokenizer: Any, prompt: list[dict[str, Any]], **kwargs: Any) -> int:
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False, **kwargs)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_prompt_length_counts_the_empty_think_block() -> None:
    tokenizer = build_qwen_tokenizer()
    prompt = [{"role": "user", "content": student_prompt("What is 2 + 3?")}]
    on = prompt_length(tokenizer, prompt, None)
    off = prompt_length(tokenizer, prompt, None, THINKING_OFF)
    # independent count: the rendered text, tokenized; the difference is exactly the empty think block's tokens
    assert on == _rendered_length(tokenizer, prompt)
    assert off == _rendered_length(tokenizer, prompt, enable_thinking=False)
    block = tokenizer("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    assert off - on == len(block) > 0


def test_max_prompt_length_refuses_what_fits_only_without_the_think_block(tmp_path: Path) -> None:
    tokenizer = build_qwen_tokenizer()
    file = _verl_math_file(tmp_path / "train.parquet")
    rows = load_train_dataset(str(file))
    limit = max(prompt_length(tokenizer, r["prompt"], None) for r in rows)  # every prompt fits with thinking on
    assert len(load_train_dataset(str(file), processing_class=tokenizer, max_prompt_length=limit)) == len(rows)
    with pytest.raises(ValueError, match=rf"longer than data.max_prompt_length={limit} tokens"):
        load_train_dataset(str(file), processing_class=tokenizer, max_prompt_length=limit,
                           chat_template_kwargs=THINKING_OFF)


def test_cepo_train_counts_prompts_with_the_recipes_chat_template_kwargs(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/text/ (thinking off) through ``cepo train``'s entry point: a prompt that fits only without the
    think block is refused naming data.max_prompt_length, before any weights load."""
    from cepo.integrations.trl import from_config
    from cepo.recipes import configs_dir
    from cepo.testing import save_tiny_text_lm

    model = save_tiny_text_lm(tmp_path / "tiny-text-lm")
    tokenizer = build_qwen_tokenizer()
    file = _verl_math_file(tmp_path / "train.parquet")
    limit = max(prompt_length(tokenizer, r["prompt"], None) for r in load_train_dataset(str(file)))

    def no_weights(*_: Any, **__: Any) -> Any:
        raise AssertionError("the prompt-length check let a prompt through that the trainer renders longer")

    monkeypatch.setattr(from_config, "load_model", no_weights)
    overrides = [f"actor_rollout_ref.model.path={model}", f"data.train_files={file}",
                 f"data.max_prompt_length={limit}", "data.filter_overlong_prompts=false",
                 f"trainer.default_local_dir={tmp_path / 'run'}", "trainer.total_training_steps=10",
                 "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                 "actor_rollout_ref.rollout.n=2"]  # 4 prompts fill a step
    cfg = from_config.compose(configs_dir() / "text" / "grpo.yaml", overrides)
    assert from_config.trl_args(cfg).chat_template_kwargs == THINKING_OFF  # the recipe trains thinking off
    with pytest.raises(ValueError, match=rf"longer than data.max_prompt_length={limit} tokens"):
        from_config.train_from_config(configs_dir() / "text" / "grpo.yaml", overrides)
