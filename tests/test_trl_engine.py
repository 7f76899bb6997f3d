"""The TRL engine end to end on CPU: smoke run, advantages equal cepo.algorithms, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from cepo.algorithms import linear_lambda, negative_hints
from cepo.cli import main as cli_main
from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward
from cepo.integrations.trl.rewards import completion_text
from cepo.rewards import extract_answer
from cepo.smoke import run_smoke
from cepo.teacher import STUDENT_TEMPLATE, build_teacher_inputs, teacher_logprobs
from cepo.testing import make_geo3k_like, reference


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_smoke_run_trains_and_writes_run_dir(smoke_model: Path, tmp_path: Path) -> None:
    result = run_smoke(tmp_path / "run", steps=3, model_dir=smoke_model, echo=False)
    rows = _rows(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["cepo/lambda"] for r in rows] == pytest.approx([linear_lambda(s, 0.5, 25) for s in range(3)])
    # LoRA B matrices start at exactly 0: a non-zero one proves the optimizer moved the adapter
    adapter = load_file(str(result.run_dir / "final" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["cepo_method"] == "cepo" and config["cepo_eps_w"] == 0.5
    # teacher passes ran with hint contexts: r+ = the ground truth, r- = an extracted wrong answer
    calls = result.trainer.teacher_calls
    answers = {str(a) for a in make_geo3k_like(32)["answer"]}
    assert {c["kind"] for c in calls} == {"pos", "neg"}
    assert all(c["hint"] in answers for c in calls if c["kind"] == "pos")
    assert all(c["hint"] and c["hint"] != "None" for c in calls if c["kind"] == "neg")
    assert any(r["cepo/clip_rate"] > 0 for r in rows)


@pytest.mark.parametrize("method", ["grpo", "rlsd"])
def test_baselines_run(method: str, smoke_model: Path, tmp_path: Path) -> None:
    result = run_smoke(tmp_path / method, method=method, steps=2, model_dir=smoke_model, echo=False, save_steps=10)
    rows = _rows(result.run_dir / "metrics.jsonl")
    assert len(rows) == 2
    kinds = {c["kind"] for c in result.trainer.teacher_calls}
    assert kinds == (set() if method == "grpo" else {"pos"})
    assert ("cepo/delta_pos_frac" in rows[-1]) == (method == "rlsd")


class _RecordingTrainer(CEPOTrainer):
    """Records each generated batch, recomputes its advantages independently, and records what reaches
    TRL's loss (TRL shuffles rows between generation and loss)."""

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        self.generated.append({"output": output, "expected": self._independent_advantages(output, self._cepo_rollouts)})
        return output

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        self.at_loss.append({k: inputs[k].detach().clone() for k in ("advantages", "prompt_ids", "completion_ids")})
        return super()._compute_loss(model, inputs)

    def _independent_advantages(self, inputs: dict[str, Any], rollouts: dict[str, Any]) -> torch.Tensor:
        """Eq. 1 and Eqs. 5 + 7 as the float64 loops of cepo.testing.reference, on teacher log-probs from
        cepo.teacher's own forward (not TRL's routine); lambda by hand: 0.5 (1 - step / 25)."""
        rewards = rollouts["rewards_per_func"].sum(dim=1)
        groups = [i // self.num_generations for i in range(len(rewards))]
        answers = [extract_answer(completion_text(c)) for c in rollouts["completions"]]
        neg, has_neg = negative_hints(answers, rewards, groups)
        prompts, rows = rollouts["prompts"], rollouts["inputs"]
        ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        images = [list(r["images"]) for r in rows]
        model = self.model
        proc = self.processing_class
        pos_text = [r["answer"] for r in rows]
        logp_pos = teacher_logprobs(model, build_teacher_inputs(proc, prompts, pos_text, ids, mask, images))
        neg_text = [h if h is not None else "" for h in neg]
        logp_neg = teacher_logprobs(model, build_teacher_inputs(proc, prompts, neg_text, ids, mask, images))
        student = build_teacher_inputs(proc, prompts, [""] * len(rows), ids, mask, images, template=STUDENT_TEMPLATE)
        logp_student = teacher_logprobs(model, student)
        lam = 0.5 * (1.0 - self.state.global_step / 25)
        seq = reference.grpo_advantages(rewards, groups)
        return reference.modulated_advantages(seq, mask, lam, 0.5, logp_student, logp_pos, logp_neg, has_neg).float()


def test_advantages_reaching_trl_loss_equal_cepo_algorithms(smoke_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    args = CEPOGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=16, num_generations=4, max_completion_length=16,
        max_steps=2, learning_rate=2e-3, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
        bf16=False,  # TRL autocasts to bf16 even on CPU; the reference is fp32
    )
    trainer = _RecordingTrainer(
        model=AutoModelForImageTextToText.from_pretrained(smoke_model),
        reward_funcs=make_math_reward(),
        args=args,
        train_dataset=to_conversational(make_geo3k_like(32)),
        processing_class=AutoProcessor.from_pretrained(smoke_model),
    )
    trainer.generated, trainer.at_loss = [], []
    trainer.train()
    assert len(trainer.generated) == len(trainer.at_loss) == 2
    nonzero = 0
    for gen, loss in zip(trainer.generated, trainer.at_loss, strict=True):
        out = gen["output"]
        assert out["advantages"].dim() == 2
        torch.testing.assert_close(out["advantages"], gen["expected"], rtol=1e-4, atol=1e-5)
        nonzero += int((out["advantages"] != 0).any())
        # the rows reaching the loss are the generated rows (shuffled by TRL), each with its own token advantages
        def rows(batch: dict[str, torch.Tensor]) -> list[tuple]:
            parts = (batch["prompt_ids"], batch["completion_ids"], batch["advantages"])
            return sorted(tuple(torch.cat([p.float(), c.float(), a]).tolist()) for p, c, a in zip(*parts, strict=True))

        assert rows(loss) == rows(out)
    assert nonzero >= 1  # the comparison was not vacuous


def test_resume_continues_step_count_and_lambda(smoke_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "resume"
    run_smoke(run, steps=3, model_dir=smoke_model, echo=False, save_steps=2)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert [r["step"] for r in _rows(run / "metrics.jsonl")] == [1, 2, 3]
    shutil.rmtree(run / "checkpoint-3")  # as if the job died after logging step 3, before saving it
    result = run_smoke(run, steps=4, model_dir=smoke_model, echo=False, save_steps=2, resume=True)
    assert result.trainer.state.global_step == 4
    rows = _rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 3 re-run from checkpoint-2, not duplicated
    assert rows[2]["cepo/lambda"] == pytest.approx(linear_lambda(2, 0.5, 25))


def test_cli_smoke_exit_codes(smoke_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "cli"
    run.mkdir()
    (run / "base-model").symlink_to(smoke_model)
    assert cli_main(["smoke", "--steps", "1", "--output-dir", str(run)]) == 0
    assert "smoke run finished" in capsys.readouterr().out
    # a second run never overwrites the first one's checkpoints silently
    assert cli_main(["smoke", "--steps", "1", "--output-dir", str(run)]) == 2
    assert "already holds checkpoints (checkpoint-1); resume it (--resume)" in capsys.readouterr().err
    assert (run / "checkpoint-1").is_dir()
    assert cli_main(["smoke", "--steps", "2", "--output-dir", str(run), "--overwrite"]) == 0
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_bad_input_fails_before_training(smoke_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cepo.integrations.trl.run import train

    processor = AutoProcessor.from_pretrained(smoke_model)
    model = AutoModelForImageTextToText.from_pretrained(smoke_model)
    args = CEPOGRPOConfig(output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=4,
                          report_to="none", use_cpu=True)
    no_answer = to_conversational(make_geo3k_like(4)).remove_columns("answer")
    with pytest.raises(ValueError, match="no 'answer' column"):
        train(model, processor, no_answer, args, echo=False)
    with pytest.raises(ValueError, match=r"cepo\.eps_w must be in"):
        CEPOGRPOConfig(output_dir=str(tmp_path), cepo_eps_w=1.5, report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=r"rows \[1\] have no 'answer'"):
        to_conversational(make_geo3k_like(3).map(lambda r, i: {"answer": "" if i == 1 else r["answer"]},
                                                 with_indices=True))
    processor.tokenizer.chat_template = None
    processor.chat_template = None
    with pytest.raises(ValueError, match="tokenizer has none"):
        CEPOTrainer(model=model, reward_funcs=make_math_reward(), args=args,
                    train_dataset=to_conversational(make_geo3k_like(4)), processing_class=processor)
    processor = AutoProcessor.from_pretrained(smoke_model)
    batch_args = CEPOGRPOConfig(output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=4,
                                report_to="none", use_cpu=True, scale_rewards="batch")
    with pytest.raises(ValueError, match="scale_rewards='batch' is not supported"):
        CEPOTrainer(model=model, reward_funcs=make_math_reward(), args=batch_args,
                    train_dataset=to_conversational(make_geo3k_like(4)), processing_class=processor)
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cepo_train_from_method_yaml(smoke_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`cepo train --config configs/cepo.yaml` composes the verl YAML and trains on TRL."""
    from cepo.recipes import configs_dir
    from cepo.testing import write_geo3k_parquet

    data = write_geo3k_parquet(tmp_path / "data", n_train=8, n_test=4)
    overrides = [
        f"actor_rollout_ref.model.path={smoke_model}",
        f"data.train_files={data / 'train.parquet'}",
        "data.train_batch_size=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "data.max_response_length=16",
        "trainer.total_training_steps=1",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        f"trainer.default_local_dir={tmp_path / 'run'}",
    ]
    config = configs_dir() / "cepo.yaml"
    assert cli_main(["train", "--config", str(config), *overrides]) == 0
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["cepo/lambda"] == 0.5
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["learning_rate"] == 5e-6 and saved["num_generations"] == 4 and saved["cepo_eps_w"] == 0.5
    assert cli_main(["train", "--config", str(config), *overrides, "+cepo.eps=0.3"]) == 2
    assert "unknown key(s) cepo.eps" in capsys.readouterr().err


def test_trl_loader_reads_prepared_verl_parquet(tmp_path: Path) -> None:
    """The TRL engine reads scripts/prepare_geo3k.py output: same student prompt, answer and figure."""
    import subprocess
    import sys

    from cepo.data import student_prompt
    from cepo.integrations.trl.data import load_train_dataset
    from cepo.testing import write_geo3k_parquet

    src = write_geo3k_parquet(tmp_path / "src", n_train=4, n_test=2)
    script = Path(__file__).resolve().parents[1] / "scripts" / "prepare_geo3k.py"
    done = subprocess.run([sys.executable, str(script), "--dataset", str(src), "--local-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    raw = make_geo3k_like(4)
    for files in (tmp_path / "out" / "train.parquet", src / "train.parquet"):
        loaded = load_train_dataset(str(files), prompt_key="prompt", image_key="images")
        assert set(loaded.column_names) == {"images", "prompt", "answer"}
        for i in range(4):
            assert loaded[i]["prompt"] == [{"role": "user", "content": student_prompt(raw[i]["problem"])}]
            assert loaded[i]["answer"] == raw[i]["answer"]
            assert loaded[i]["images"][0].size == raw[i]["images"][0].size


def test_cepo_train_text_only_model(tmp_path: Path) -> None:
    """`cepo train` loads a text-only causal LM with its tokenizer and trains on a dataset without images
    (the random tiny LM earns no reward, so this covers loading, data and saving; the text teacher path is
    covered by tests/test_teacher.py)."""
    from cepo.recipes import configs_dir
    from cepo.testing import save_tiny_text_lm

    model = save_tiny_text_lm(tmp_path / "lm")
    data = make_geo3k_like(8).remove_columns("images")
    data.to_parquet(str(tmp_path / "train.parquet"))
    overrides = [
        f"actor_rollout_ref.model.path={model}", f"data.train_files={tmp_path / 'train.parquet'}",
        "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.rollout.n=4",
        "data.max_response_length=8", "trainer.total_training_steps=1",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0", "actor_rollout_ref.model.lora_rank=0",
        f"trainer.default_local_dir={tmp_path / 'run'}",
    ]
    assert cli_main(["train", "--config", str(configs_dir() / "rlsd.yaml"), *overrides]) == 0
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 1 and rows[0]["cepo/lambda"] == 0.5
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()  # full fine-tuning: the whole model
