"""The TRL engine on a text-only causal LM: LoRA placement, the text warm start, Qwen3's thinking switch."""

from __future__ import annotations

import pytest
import torch

from cepo.testing import build_qwen_tokenizer, build_tiny_qwen3vl, build_tiny_text_lm
from cepo.testing.math_data import make_math_like


def _adapted(model: torch.nn.Module) -> set[str]:
    from peft import get_peft_model

    from cepo.integrations.trl.run import lora_config

    peft_model = get_peft_model(model, lora_config())
    return {name.removeprefix("base_model.model.").removesuffix(".lora_A") for name, _ in peft_model.named_modules()
            if name.endswith(".lora_A")}


def _decoder_linears(model: torch.nn.Module, prefix: str) -> set[str]:
    return {name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.startswith(prefix) and ".layers." in name}


def test_lora_adapts_every_decoder_linear_of_a_text_model_and_of_a_vlm_language_model():
    text = build_tiny_text_lm()
    expected = _decoder_linears(text, "model.layers.")  # before peft wraps them
    assert _adapted(text) == expected != set()  # no layer found before the fix: peft raised
    vlm = build_tiny_qwen3vl()
    expected = _decoder_linears(vlm, "model.language_model.layers.")
    assert _adapted(vlm) == expected != set() and not any("visual" in n for n in expected)


def test_text_warm_start_batch_targets_the_boxed_answer_after_the_thinking_switch():
    from cepo.testing.warm_start import _sft_batch

    tokenizer = build_qwen_tokenizer()
    rows = [make_math_like(2)[i] for i in range(2)]
    batch = _sft_batch(tokenizer, rows, {"enable_thinking": False})
    for i, row in enumerate(rows):
        target = batch["labels"][i][batch["labels"][i] != -100]
        assert tokenizer.decode(target) == f"\\boxed{{{row['answer']}}}<|im_end|>"
        text = tokenizer.decode(batch["input_ids"][i][batch["attention_mask"][i] == 1])
        assert text.startswith("<|im_start|>user\n" + row["prompt"][0]["content"])
        assert "<|im_start|>assistant\n<think>\n\n</think>\n\n\\boxed{" in text


@pytest.mark.slow
def test_text_user_path_prepare_math_then_cepo_train_text_config(tmp_path):
    """scripts/prepare_math.py output trains through ``cepo train --config configs/text/cepo.yaml`` (TRL, LoRA on the
    tiny text LM, the thinking switch carried into the run's settings)."""
    import importlib.util
    import json
    from pathlib import Path

    from cepo.cli import main
    from cepo.recipes import configs_dir
    from cepo.testing import save_tiny_text_lm
    from cepo.testing.math_data import write_math_sources

    sources = write_math_sources(tmp_path / "src", n_train=8, n_eval=2)
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_math.py"
    spec = importlib.util.spec_from_file_location("prepare_math", script)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    data = tmp_path / "data"
    assert module.main(["--local-dir", str(data), "--train-dataset", str(sources["train"]), "--math500",
                        str(sources["math500"]), "--aime2024", str(sources["aime2024"]), "--aime2025",
                        str(sources["aime2025"])]) == 0
    model = save_tiny_text_lm(tmp_path / "model")
    run = tmp_path / "run"
    assert main(["train", "--config", str(configs_dir() / "text" / "cepo.yaml"),
                 f"actor_rollout_ref.model.path={model}", f"data.train_files={data / 'train.parquet'}",
                 "data.train_batch_size=4", "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                 "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8", "actor_rollout_ref.rollout.n=2",
                 "data.max_response_length=8", "trainer.total_training_steps=1",
                 "actor_rollout_ref.actor.optim.lr_warmup_steps=0", f"trainer.default_local_dir={run}",
                 "actor_rollout_ref.model.enable_gradient_checkpointing=false"]) == 0
    settings = json.loads((run / "config.json").read_text())
    assert settings["chat_template_kwargs"] == {"enable_thinking": False} and settings["cepo_method"] == "cepo"
    assert (run / "final" / "adapter_config.json").is_file()


def test_eval_prompts_take_the_thinking_switch():
    from cepo.evaluation.generation import encode_prompts

    tokenizer = build_qwen_tokenizer()
    conversation = [[{"role": "user", "content": "What is $2 + 3$?"}]]
    off = encode_prompts(tokenizer, conversation, None, {"enable_thinking": False})
    on = encode_prompts(tokenizer, conversation, None)
    assert tokenizer.decode(off["input_ids"][0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tokenizer.decode(on["input_ids"][0]).endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_cepo_eval_local_no_thinking_on_prepared_math(tmp_path):
    """``cepo eval --local <prepare_math output> --no-thinking`` with the tiny text LM: graded by cepo's verifier."""
    import json

    from cepo.cli import main
    from cepo.rewards import compute_score
    from cepo.testing import save_tiny_text_lm
    from cepo.testing.math_data import make_math_like

    rows = make_math_like(4, seed=3)
    data = tmp_path / "math500.parquet"
    rows.to_parquet(str(data))
    model = save_tiny_text_lm(tmp_path / "model")
    out = tmp_path / "eval"
    assert main(["eval", str(model), "--local", str(data), "--no-thinking", "--max-new-tokens", "6",
                 "--temperature", "0", "--output-dir", str(out)]) == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["answer"] for s in samples] == list(rows["answer"])
    assert [s["accuracy"] for s in samples] == [compute_score(s["response"], s["answer"]).accuracy for s in samples]
