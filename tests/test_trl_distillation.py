"""OPSD / SDPO's divergence losses (``cepo.distill.mode=topk``) and SDPO's EMA teacher (``cepo.distill.teacher=ema``)
on the TRL engine: the teacher's top-k from the trainer's teacher pass equals a plain forward, the loss equals a
float64 computation with ``cepo.algorithms.divergence_on_teacher_topk`` (and ``(1 - w) PG + w distill``), and the EMA
adapter equals the closed-form EMA of the trained adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trl import GRPOTrainer

from cepo.algorithms import (
    CreditInputs,
    compute_token_advantages,
    demonstration_rows,
    divergence_on_teacher_topk,
    group_advantages,
    importance_weight,
    loss_teacher,
    plan_teacher_passes,
    topk_distillation_loss,
)
from cepo.config import SDPO_TEMPLATE, CEPOConfig
from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward
from cepo.integrations.trl.trainer import EMA_ADAPTER, EMA_FILE
from cepo.recipes import ConfigError, compose_method_config, configs_dir
from cepo.teacher import build_teacher_inputs, teacher_logprobs, teacher_topk_logprobs
from cepo.testing import make_geo3k_like
from cepo.testing.trl_recording import RecordingMixin, clone, lora_tensors
from cepo.testing.trl_runs import first_half_correct, tiny_run_settings

K = 20


class _Recording(RecordingMixin, CEPOTrainer):
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        pg = None
        if self.cepo.distill.weight < 1.0:  # TRL's own loss at the same weights, for the (1 - w) PG + w distill check
            with torch.no_grad():
                pg = GRPOTrainer._compute_loss(self, model, inputs).detach()
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()} if self.keep_weights else None
        loss = super()._compute_loss(model, inputs)
        self.losses.append({"inputs": {k: clone(v) for k, v in inputs.items()}, "loss": loss.detach(), "pg": pg,
                            "weights": weights})
        return loss

    def _teacher_passes(self, *args: Any, **kwargs: Any) -> None:
        before = lora_tensors(self.model, "default")
        super()._teacher_passes(*args, **kwargs)
        after = lora_tensors(self.model, "default")
        assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)

    def _score_topk(self, batch: Any, real_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        result = super()._score_topk(batch, real_rows)
        if self.ema_pairs is not None:
            self.topk_calls.append({"batch": batch, "values": result[0].clone(), "adapter": self._active_adapter(),
                                    "teacher": lora_tensors(self.model, EMA_ADAPTER),
                                    "student": lora_tensors(self.model, "default")})
        return result


def _trainer(smoke_model: Path, tmp_path: Path, method: str, peft: bool = False, **extra: Any) -> _Recording:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cepo.integrations.trl.run import lora_config

    settings = tiny_run_settings(tmp_path, method, bf16=False, **extra)
    trainer = _Recording(
        model=AutoModelForImageTextToText.from_pretrained(smoke_model),
        reward_funcs=[make_math_reward(), first_half_correct], args=CEPOGRPOConfig(**settings),
        train_dataset=to_conversational(make_geo3k_like(32)),
        processing_class=AutoProcessor.from_pretrained(smoke_model),
        peft_config=lora_config() if peft else None,
    )
    trainer.losses, trainer.topk_calls, trainer.keep_weights = [], [], False
    return trainer


def _float64_student(model: torch.nn.Module, batch: dict[str, Any], temperature: float) -> torch.Tensor:
    """(B, T, V) student log-probs of a recorded micro-batch from a float64 forward of ``model`` (Qwen3-VL inputs)."""
    completion = batch["completion_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.cat([batch["prompt_ids"], completion], 1),
                       attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
                       pixel_values=batch["pixel_values"].double(), image_grid_thw=batch["image_grid_thw"],
                       mm_token_type_ids=batch["mm_token_type_ids"]).logits
    t = completion.shape[1]
    return torch.log_softmax(logits[:, -(t + 1) : -1] / temperature, dim=-1)


def _teacher_rows(trainer: _Recording, method: str, gen: dict[str, Any]) -> tuple[list[int], list[str], str]:
    """Independently: the rows with a distillation teacher, their hints and the template."""
    rewards = gen["rewards"]
    if method == "opsd":
        return list(range(len(rewards))), [str(a) for a in gen["answers"]], CEPOConfig().teacher_template
    demos = demonstration_rows(rewards, [i // 4 for i in range(len(rewards))])
    rows = [i for i, d in enumerate(demos) if d is not None]
    return rows, [gen["texts"][demos[i]] for i in rows], SDPO_TEMPLATE


@pytest.mark.parametrize(("method", "tail", "alpha", "weight"), [("opsd", True, 0.5, 1.0), ("sdpo", False, 0.25, 0.5)],
                         ids=["opsd-tail-pure", "sdpo-renormalised-mixed"])
def test_topk_teacher_and_loss(method: str, tail: bool, alpha: float, weight: float, smoke_model: Path,
                               tmp_path: Path) -> None:
    """(a) the teacher pass's top-k equals a plain forward of the initial weights; (b) the loss equals a float64
    computation with divergence_on_teacher_topk (masked token-mean over the batch), mixed with TRL's PG loss."""
    from transformers import AutoModelForImageTextToText

    trainer = _trainer(smoke_model, tmp_path, method, per_device_train_batch_size=8, cepo_distill_mode="topk",
                       cepo_distill_topk=K, cepo_distill_tail=tail, cepo_distill_alpha=alpha,
                       cepo_distill_weight=weight)
    trainer.train()
    model = AutoModelForImageTextToText.from_pretrained(smoke_model).eval()  # round 0's weights
    gen = trainer.generated[0]
    out = gen["output"]
    mask = out["completion_mask"].bool()
    rows, hints, template = _teacher_rows(trainer, method, gen)
    assert rows and [c["hint"] for c in trainer.teacher_calls] == hints
    assert all(e["kind"] != "student" for e in trainer.forward_log)  # top-k mode reads no P_S

    # (a) top-k teacher log-probs and ids: a plain forward over the same teacher contexts
    inputs = build_teacher_inputs(trainer.processing_class, [gen["prompts"][i] for i in rows], hints,
                                  out["completion_ids"][rows], out["completion_mask"][rows],
                                  [gen["images"][i] for i in rows], template=template)
    with torch.no_grad():
        logits = model(**inputs.model_kwargs()).logits
    p, t = inputs.prompt_length, inputs.response_length
    full = torch.log_softmax(logits[:, p - 1 : p + t - 1].float() / trainer.temperature, dim=-1)
    m = mask[rows]
    values, indices = out["teacher_topk_logps"][rows], out["teacher_topk_indices"][rows].long()
    assert values.shape == (len(rows), t, K) and out["teacher_topk_indices"].dtype == torch.int32
    torch.testing.assert_close(values[m], full.topk(K, dim=-1).values[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.gather(-1, indices)[m], values[m], rtol=1e-5, atol=1e-5)  # ids of those values
    mine = teacher_topk_logprobs(model, inputs, K, trainer.temperature, micro_batch_size=3)  # the engine-free scorer
    torch.testing.assert_close(mine[0][m], values[m], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine[2], teacher_logprobs(model, inputs, trainer.temperature), rtol=1e-5, atol=1e-5)
    has_teacher = torch.zeros(mask.shape[0], dtype=torch.bool)
    has_teacher[rows] = True
    assert torch.equal(out["distill_mask"].bool(), mask & has_teacher.unsqueeze(-1))
    assert not out["teacher_topk_logps"][~has_teacher].any()
    # the PG term's advantage is GRPO's (Eq. 1): the distillation is in the loss, not in the advantage
    grpo, _ = compute_token_advantages("grpo", CreditInputs(
        group_advantages(gen["rewards"], [i // 4 for i in range(mask.shape[0])]), out["completion_mask"], 0.0, 0.5))
    torch.testing.assert_close(out["advantages"], grpo, rtol=1e-5, atol=1e-6)

    # (b) the loss: float64 forward of the same micro-batch, divergence on the recorded teacher top-k
    assert len(trainer.losses) == 1  # one micro-step at round 0's weights
    rec = trainer.losses[0]
    batch = rec["inputs"]
    student = _float64_student(model.double(), batch, trainer.temperature)
    per_token = divergence_on_teacher_topk(student, batch["teacher_topk_logps"].double(),
                                           batch["teacher_topk_indices"].long(), alpha=alpha, tail=tail)
    distill_tokens = (out["completion_mask"] * has_teacher.unsqueeze(-1)).sum().double()
    distill = (per_token * batch["distill_mask"].double()).sum() / distill_tokens
    expected = weight * distill + ((1.0 - weight) * rec["pg"].double() if weight < 1.0 else 0.0)
    torch.testing.assert_close(rec["loss"].double(), expected, rtol=1e-4, atol=1e-6)
    assert float(distill) > 0
    assert trainer.state.log_history[0]["cepo/distill_loss"] == pytest.approx(float(distill), rel=1e-4)
    if weight < 1.0:
        assert abs(float(rec["pg"])) > 0 and not torch.isclose(rec["loss"].double(), distill, rtol=1e-3)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_topk_importance_clip_on_the_second_update(loss_agg: str, smoke_model: Path, tmp_path: Path) -> None:
    """SDPO's IS correction (cepo.distill.is_clip): with two optimizer steps per rollout batch, the second step's
    loss is Σ mask·min(π_θ/π_old, clip)·D / N, with π_θ from a float64 forward of the weights it ran at and π_old
    TRL's old log-probs; the first step's ratio is 1. ``token-mean``: N = the batch's masked tokens per update
    (TRL's dapo); ``seq-mean-token-mean``: each row's sum divided by its own tokens, N = the batch's rows per update
    (each window is half the generation batch), the authors' mean of per-row token-means."""
    from transformers import AutoModelForImageTextToText

    clip = 1.02
    trainer = _trainer(smoke_model, tmp_path, "opsd", per_device_train_batch_size=8, steps_per_generation=2,
                       max_steps=2, cepo_distill_mode="topk", cepo_distill_topk=K, cepo_distill_tail=True,
                       cepo_distill_alpha=0.5, cepo_distill_is_clip=clip, cepo_distill_loss_agg=loss_agg)
    trainer.keep_weights = True
    trainer.train()
    assert len(trainer.generated) == 1 and len(trainer.losses) == 2  # one rollout batch, two updates
    out = trainer.generated[0]["output"]
    tokens = out["distill_mask"].sum().double() / 2  # TRL's dapo normaliser: the batch's tokens per update
    window_rows = out["distill_mask"].shape[0] / 2  # 16 rows, 8 per update
    model = AutoModelForImageTextToText.from_pretrained(smoke_model).double().eval()
    ratios = []
    for rec in trainer.losses:
        batch = rec["inputs"]
        assert batch["old_per_token_logps"] is not None
        model.load_state_dict(rec["weights"])
        completion = batch["completion_ids"]
        student = _float64_student(model, batch, trainer.temperature)
        per_token = divergence_on_teacher_topk(student, batch["teacher_topk_logps"].double(),
                                               batch["teacher_topk_indices"].long(), alpha=0.5, tail=True)
        sampled = student.gather(-1, completion.unsqueeze(-1)).squeeze(-1)
        ratio = (sampled - batch["old_per_token_logps"].double()).exp()
        mask = batch["distill_mask"].double()
        terms = per_token * mask * ratio.clamp(max=clip)
        if loss_agg == "token-mean":
            expected = terms.sum() / tokens
        else:
            expected = (terms.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / window_rows
        torch.testing.assert_close(rec["loss"].double(), expected, rtol=1e-4, atol=1e-6)
        ratios.append(ratio[mask.bool()])
    torch.testing.assert_close(ratios[0], torch.ones_like(ratios[0]), rtol=0, atol=1e-4)  # same weights: ratio 1
    assert (ratios[1] > clip).any() and (ratios[1] < clip).any()  # the second update clipped some tokens, not all
    fractions = [row["cepo/distill_is_clip_frac"] for row in trainer.state.log_history
                 if "cepo/distill_is_clip_frac" in row]
    assert fractions and 0.0 < fractions[-1] < 1.0


def test_ema_teacher_lora_topk(smoke_model: Path, tmp_path: Path) -> None:
    """(c) a top-k run moves the LoRA weights; (d) the EMA adapter equals the closed-form EMA of the trained adapter,
    the trained adapter is untouched by the teacher passes and stays the only trainable one, the teacher passes
    score with the EMA adapter (its top-k log-probs, not the live model's), and a resumed run continues the EMA."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from cepo.integrations.trl.run import lora_config

    rate, steps = 0.3, 2
    settings = {"peft": True, "per_device_train_batch_size": 8, "learning_rate": 1e-2, "cepo_distill_mode": "topk",
                "cepo_distill_topk": K, "cepo_distill_teacher": "ema", "cepo_distill_ema_rate": rate,
                "save_strategy": "steps", "save_steps": steps}
    trainer = _trainer(smoke_model, tmp_path / "run", "opsd", max_steps=steps, **settings)
    trainer.train()
    model = trainer.model
    history = trainer.student_history  # theta(0) (the first step), then theta after each optimizer step
    assert len(history) == steps + 1
    # (c) the weights moved (LoRA B starts at 0), through the top-k loss alone (w = 1)
    final = lora_tensors(model, "default")
    assert any(not torch.equal(final[n], history[0][n]) for n in final)
    assert all(torch.isfinite(r["loss"]) for r in trainer.losses)
    # (d) closed form: theta_T = (1 - r)^N theta(0) + sum_n r (1 - r)^(N - n) theta(n)
    teacher = lora_tensors(model, EMA_ADAPTER)
    assert teacher.keys() == final.keys()
    for name, value in teacher.items():
        expected = (1 - rate) ** steps * history[0][name].double()
        for n in range(1, steps + 1):
            expected = expected + rate * (1 - rate) ** (steps - n) * history[n][name].double()
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)
    assert model.active_adapter == "default"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for n, p in model.named_parameters() if f".{EMA_ADAPTER}." in n)
    # the teacher passes used the EMA adapter: an independent forward with its weights gives the recorded top-k
    teachers = [e for e in trainer.forward_log if e["kind"] == "teacher"]
    assert len(teachers) == steps and all(e["adapter"] == EMA_ADAPTER for e in teachers)
    calls = trainer.topk_calls
    assert len(calls) == steps and all(c["adapter"] == EMA_ADAPTER for c in calls)
    fresh = get_peft_model(AutoModelForImageTextToText.from_pretrained(smoke_model), lora_config()).eval()

    def scored(call: dict[str, Any], weights: str) -> torch.Tensor:
        params = dict(fresh.named_parameters())
        with torch.no_grad():
            for name, value in call[weights].items():
                params[name].copy_(value)
        return teacher_topk_logprobs(fresh, call["batch"], K, trainer.temperature)[0]

    assert torch.equal(scored(calls[0], "teacher"), scored(calls[0], "student"))  # round 0: theta_T = theta
    last = calls[-1]
    mask = last["batch"].response_mask.bool()
    assert mask.any()
    torch.testing.assert_close(scored(last, "teacher")[mask], last["values"][mask], rtol=1e-5, atol=1e-5)
    assert (scored(last, "student")[mask] - last["values"][mask]).abs().max() > 1e-4  # the live model differs

    # a checkpoint holds the trained adapter alone (transformers' resume reloads it) plus the EMA adapter's tensors;
    # a resumed run continues the EMA from them
    from safetensors.torch import load_file

    checkpoint = tmp_path / "run" / f"checkpoint-{steps}"
    assert not (checkpoint / EMA_ADAPTER).exists() and (checkpoint / "adapter_model.safetensors").is_file()
    saved = load_file(str(checkpoint / EMA_FILE))
    assert saved.keys() == teacher.keys() and all(torch.equal(saved[n], teacher[n]) for n in saved)
    resumed = _trainer(smoke_model, tmp_path / "resumed", "opsd", max_steps=steps + 1, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    start, after = resumed.student_history
    assert all(torch.equal(start[n], final[n]) for n in final)  # the trained adapter came back from the checkpoint
    for name, value in lora_tensors(resumed.model, EMA_ADAPTER).items():
        expected = (1 - rate) * saved[name].double() + rate * after[name].double()
        torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)


def test_topk_loss_math_and_declarations() -> None:
    """The engine-free pieces: topk_distillation_loss (value and gradient) equals divergence_on_teacher_topk on a
    log-softmax in float64; in top-k mode the credit is GRPO's and no P_S is scored."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 40, dtype=torch.float64, requires_grad=True)
    teacher = torch.log_softmax(torch.randn(3, 5, 40, dtype=torch.float64), -1).topk(7, dim=-1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    for tail in (True, False):
        loss, per_token = topk_distillation_loss(logits, teacher.values, teacher.indices, mask, 0.3, tail, 8.0)
        ref = divergence_on_teacher_topk(torch.log_softmax(logits, -1), teacher.values, teacher.indices, 0.3, tail)
        expected = (ref * mask).sum() / 8.0
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(per_token, (ref * mask).detach())
        torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(expected, logits)[0])
    with pytest.raises(ValueError, match="normalizer must be > 0"):
        topk_distillation_loss(logits, teacher.values, teacher.indices, mask, 0.3, True, 0.0)
    # SDPO's IS correction: a constant per-token weight (no gradient through it), equal to TRL's own function
    from trl.experimental.sdpo.loss_utils import apply_importance_sampling_clipping

    now = torch.randn(3, 5, dtype=torch.float64, requires_grad=True) * 3
    old = torch.randn(3, 5, dtype=torch.float64) * 3
    old[0, 0], old[0, 1] = -60.0, 60.0  # log-ratios beyond the +-20 clamp
    rho = importance_weight(now, old, 2.0)
    assert not rho.requires_grad and float(rho.max()) <= 2.0
    torch.testing.assert_close(rho, apply_importance_sampling_clipping(torch.ones(3, 5, dtype=torch.float64), now,
                                                                        old, 2.0))
    loss, per_token = topk_distillation_loss(logits, teacher.values, teacher.indices, mask, 0.3, True, 8.0,
                                             is_weight=rho)
    ref = divergence_on_teacher_topk(torch.log_softmax(logits, -1), teacher.values, teacher.indices, 0.3, True)
    expected = (ref * mask * rho).sum() / 8.0
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per_token, (ref * mask).detach())
    torch.testing.assert_close(torch.autograd.grad(loss, logits)[0], torch.autograd.grad(expected, logits)[0])
    with pytest.raises(ValueError, match="clip must be > 0"):
        importance_weight(now, old, 0.0)
    with pytest.raises(ValueError, match="is_weight has shape"):
        topk_distillation_loss(logits, teacher.values, teacher.indices, mask, 0.3, True, 8.0, is_weight=rho[:, :4])
    assert loss_teacher("opsd", "topk") == "pos" and loss_teacher("sdpo", "full") == "demo"
    assert loss_teacher("cepo", "topk") is None and loss_teacher("opsd", "sampled_token") is None
    adv = torch.tensor([1.0, -1.0])
    inputs = CreditInputs(adv, torch.ones(2, 3), 0.0, 0.5, logp_student=torch.zeros(2, 3),
                          logp_pos=torch.ones(2, 3), has_teacher=torch.ones(2, dtype=torch.bool), distill_mode="topk")
    torch.testing.assert_close(compute_token_advantages("opsd", inputs)[0], adv.unsqueeze(-1).expand(2, 3))
    plan = [plan_teacher_passes("opsd", 0.0, [0, 1], adv, [1.0, 0.0], [0, 0], ["1", "1"], ["1", "2"], ["a", "b"],
                                distill_mode=mode) for mode in ("sampled_token", "topk")]
    assert plan[0].student_rows == [0, 1] and plan[1].student_rows == [] and plan[1].jobs == plan[0].jobs


def test_bad_configs(smoke_model: Path, tmp_path: Path) -> None:
    """(e) top-k and the EMA teacher (sdpo.yaml's defaults) compose for both engines; without LoRA verl refuses the
    EMA teacher in one line; bad values name their key; an EMA teacher without a PEFT LoRA model is refused at
    start-up."""
    from cepo.integrations.trl.from_config import compose

    for key, value in (("mode", "topk"), ("teacher", "ema")):
        assert compose_method_config("sdpo", []).cepo.distill[key] == value
        assert compose(configs_dir() / "sdpo.yaml", []).cepo.distill[key] == value
    with pytest.raises(ConfigError, match=r"^cepo\.distill\.teacher: ema needs a LoRA actor on verl"):
        compose_method_config("sdpo", ["actor_rollout_ref.model.lora_rank=0"])
    for bad, message in [({"mode": "vocab"}, r"cepo\.distill\.mode must be one of"),
                         ({"topk": 0}, r"cepo\.distill\.topk must be >= 1"),
                         ({"alpha": 1.5}, r"cepo\.distill\.alpha must be in \[0, 1\]"),
                         ({"teacher": "frozen"}, r"cepo\.distill\.teacher must be one of"),
                         ({"ema_rate": 2.0}, r"cepo\.distill\.ema_rate must be in \[0, 1\]")]:
        with pytest.raises(ValueError, match=message):
            CEPOConfig.from_mapping({"method": "sdpo", "distill": bad})
    with pytest.raises(ValueError, match=r"cepo\.distill\.mode=topk applies to the self-distillation methods"):
        CEPOGRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, cepo_method="cepo", cepo_distill_mode="topk")
    with pytest.raises(ValueError, match=r"cepo\.distill\.teacher=ema needs a PEFT LoRA model"):
        _trainer(smoke_model, tmp_path, "sdpo", cepo_distill_teacher="ema")
    with pytest.raises(ValueError, match=r"cepo\.distill\.topk=5000 exceeds the model's vocabulary"):
        _trainer(smoke_model, tmp_path, "opsd", cepo_distill_mode="topk", cepo_distill_topk=5000)
    with pytest.raises(ValueError, match=r"cepo\.distill\.weight=1 replaces TRL's loss, so its KL \(beta\)"):
        _trainer(smoke_model, tmp_path, "opsd", cepo_distill_mode="topk", cepo_distill_topk=K, beta=0.1)
