"""OPSD / SDPO as their authors run them (issue 16, TRL half): ``cepo.distill.mode`` ``full`` and ``topk`` with the
student's support, ``cepo.distill.teacher`` ``fixed`` / ``ema``, SDPO's denominator and demonstrations.

The engine-free losses are checked against TRL's own ``trl.experimental.sdpo.loss_utils`` functions (or a float64
formula written here); the trainer tests rebuild every teacher row independently, score it with a float64 forward of
the weights the teacher should have, and compare the recorded loss."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from trl.experimental.sdpo.loss_utils import (
    compute_full_logit_self_distillation_loss,
    compute_topk_self_distillation_loss,
)

from cepo.algorithms import (
    demonstration_rows,
    logits_distillation_loss,
    loss_aggregation,
    packed_logits_distillation_loss,
    plan_teacher_passes,
    row_token_mean_weights,
    sampled_token_logps,
    strip_thinking,
    topk_distillation_loss,
)
from cepo.config import SDPO_TEMPLATE, CEPOConfig
from cepo.recipes import ConfigError, compose_method_config, configs_dir

K = 20


def _masked_mean(per_token: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, n: float) -> torch.Tensor:
    weighted = per_token * mask if weight is None else per_token * mask * weight
    return weighted.sum() / n


# -- engine-free ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_full_vocabulary_loss_equals_trl(alpha: float, chunk: int | None) -> None:
    """mode=full: value and gradient equal TRL's full-logit divergence (masked sum / N, IS-weighted), in float64,
    for any chunking over T and with the temperature applied inside."""
    torch.manual_seed(0)
    student = (torch.randn(3, 7, 50, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(3, 7, 50, dtype=torch.float64) * 2
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7])
    rho = torch.rand(3, 7, dtype=torch.float64) + 0.5
    tau = 1.1
    loss, per_token = logits_distillation_loss(student, teacher, mask, alpha, 9.0, is_weight=rho, temperature=tau,
                                               chunk_size=chunk)
    reference = compute_full_logit_self_distillation_loss(student / tau, teacher / tau, distillation_alpha=alpha)
    expected = _masked_mean(reference, mask, rho, 9.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per_token, (reference * mask).detach())
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], torch.autograd.grad(expected, student)[0])


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("chunk", [None, 2])
def test_student_topk_loss_equals_trl(tail: bool, chunk: int | None) -> None:
    """mode=topk, support=student (SDPO's fork): equals TRL's student-support top-k loss, tail bucket or renormalised,
    value and gradient."""
    torch.manual_seed(1)
    student = torch.randn(2, 5, 40, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(2, 5, 40, dtype=torch.float64) * 1.5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss, _ = logits_distillation_loss(student, teacher, mask, 0.5, 8.0, topk=7, support="student", tail=tail,
                                       chunk_size=chunk)
    reference = compute_topk_self_distillation_loss(student, teacher, distillation_topk=7, distillation_alpha=0.5,
                                                    distillation_add_tail=tail)
    expected = _masked_mean(reference, mask, None, 8.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], torch.autograd.grad(expected, student)[0])


def _jsd_float64(p_s: torch.Tensor, p_t: torch.Tensor, beta: float) -> torch.Tensor:
    """OPSD's generalized JSD written out over probabilities: beta KL(T||M) + (1 - beta) KL(S||M)."""
    m = (1 - beta) * p_s + beta * p_t
    return beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)


def test_teacher_topk_from_logits_and_precomputed_agree_with_formula() -> None:
    """OPSD's --top_k_loss: the teacher's top-k, both renormalised: from the two logit sets, and from the teacher's
    precomputed top-k (the teacher-pass path, chunked, temperature inside), equal the written-out float64 JSD."""
    torch.manual_seed(2)
    student = torch.randn(2, 6, 30, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(2, 6, 30, dtype=torch.float64)
    mask = torch.ones(2, 6)
    tau, k = 0.7, 5
    p_s, p_t = torch.softmax(student / tau, -1), torch.softmax(teacher / tau, -1)
    ids = p_t.topk(k, -1).indices
    q_s, q_t = p_s.gather(-1, ids), p_t.gather(-1, ids)
    expected = _jsd_float64(q_s / q_s.sum(-1, keepdim=True), q_t / q_t.sum(-1, keepdim=True), 0.5).sum() / 12.0
    from_logits, _ = logits_distillation_loss(student, teacher, mask, 0.5, 12.0, topk=k, support="teacher",
                                              temperature=tau, chunk_size=4)
    top = torch.log_softmax(teacher / tau, -1).topk(k, -1)
    precomputed, _ = topk_distillation_loss(student, top.values, top.indices, mask, 0.5, False, 12.0,
                                            temperature=tau, chunk_size=1)
    expected_grad = torch.autograd.grad(expected, student)[0]
    for loss in (from_logits, precomputed):
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(torch.autograd.grad(loss, student)[0], expected_grad)


def test_chunked_loss_keeps_no_full_float32_copy() -> None:
    """Half-precision logits: the chunked full loss saves for the backward nothing of size (B, T, V) in float32
    (checkpointed chunks), and its value matches a float64 computation on the same half-precision logits."""
    torch.manual_seed(3)
    b, t, v = 2, 16, 64
    student = torch.randn(b, t, v).to(torch.bfloat16).requires_grad_()
    teacher = torch.randn(b, t, v).to(torch.bfloat16)
    saved: list[torch.Size] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            saved.append(x.shape)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss, _ = logits_distillation_loss(student, teacher, torch.ones(b, t), 0.5, float(b * t), chunk_size=4)
    assert all(s.numel() < b * t * v for s in saved)
    reference = compute_full_logit_self_distillation_loss(student.double(), teacher.double(), distillation_alpha=0.5)
    torch.testing.assert_close(loss.double(), reference.mean(), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert student.grad is not None and student.grad.dtype == torch.bfloat16


def test_seq_mean_token_mean_is_the_authors_mean_of_row_token_means() -> None:
    """``loss_agg=seq-mean-token-mean``: value and gradient equal ``(1/R) Σ_r (Σ_t ρ·D_{r,t}) / L_r`` written out from
    TRL's per-token divergence, over R rows of which one has no teacher (all-zero mask: it adds 0 but counts), for the
    padded (TRL) and the packed (verl) layout; the same weights reduce to the token-mean's value with ``token-mean``."""
    torch.manual_seed(5)
    student = torch.randn(4, 6, 30, dtype=torch.float64).requires_grad_()
    teacher = torch.randn(4, 6, 30, dtype=torch.float64) * 1.5
    mask = torch.tensor([[1] * 6, [1, 1, 0, 0, 0, 0], [0] * 6, [1, 1, 1, 0, 0, 0]])
    rho = torch.rand(4, 6, dtype=torch.float64) + 0.5
    reference = compute_full_logit_self_distillation_loss(student, teacher, distillation_alpha=0.5)
    lengths = [6, 2, 0, 3]
    expected = sum((reference[r] * mask[r] * rho[r]).sum() / lengths[r] for r in (0, 1, 3)) / 4.0
    weight, normalizer = loss_aggregation("seq-mean-token-mean", mask, tokens=11.0, rows=4.0)
    assert normalizer == 4.0
    torch.testing.assert_close(weight, mask / torch.tensor(lengths).clamp(min=1).unsqueeze(-1).double())
    loss, per_token = logits_distillation_loss(student, teacher, mask, 0.5, normalizer, is_weight=rho,
                                               chunk_size=4, token_weight=weight)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(per_token, (reference * mask).detach())  # unweighted
    grad = torch.autograd.grad(expected, student)[0]
    torch.testing.assert_close(torch.autograd.grad(loss, student)[0], grad)
    # packed: the rows one after the other with padding between, each position naming its row
    flat_student = student.detach().reshape(1, 24, 30).clone().requires_grad_()
    row_index = torch.arange(4).repeat_interleave(6)
    packed_weight, packed_norm = loss_aggregation("seq-mean-token-mean", mask.reshape(24), tokens=11.0, rows=4.0,
                                                  row_index=row_index)
    torch.testing.assert_close(packed_weight, weight.reshape(24))
    packed, _ = packed_logits_distillation_loss(flat_student, teacher.reshape(24, 30), torch.arange(24),
                                                mask.reshape(24), 0.5, packed_norm, is_weight=rho.reshape(24),
                                                chunk_size=5, token_weight=packed_weight)
    torch.testing.assert_close(packed, expected)
    torch.testing.assert_close(torch.autograd.grad(packed, flat_student)[0].reshape(4, 6, 30), grad)
    none, tokens = loss_aggregation("token-mean", mask, tokens=11.0, rows=4.0)
    assert none is None and tokens == 11.0
    with pytest.raises(ValueError, match=r"loss_agg must be one of \['token-mean', 'seq-mean-token-mean'\]"):
        loss_aggregation("seq-mean", mask, tokens=11.0, rows=4.0)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 4), length=st.integers(1, 5), pad=st.integers(0, 3), seed=st.integers(0, 10_000),
       packed=st.booleans())
def test_seq_mean_equals_token_mean_with_equal_rows_all_with_a_teacher(rows: int, length: int, pad: int, seed: int,
                                                                       packed: bool) -> None:
    """Every row has a teacher and the same number L of masked tokens (at random positions): ``(1/R) Σ_r Σ_t D / L``
    equals ``Σ D / (R·L)``, so both aggregations give the same loss and gradient (padded and packed layouts)."""
    generator = torch.Generator().manual_seed(seed)
    width = length + pad
    mask = torch.zeros(rows, width, dtype=torch.bool)
    for r in range(rows):
        mask[r, torch.randperm(width, generator=generator)[:length]] = True
    student = torch.randn(rows, width, 12, dtype=torch.float64, generator=generator)
    teacher = torch.randn(rows, width, 12, dtype=torch.float64, generator=generator)
    results = []
    for agg in ("token-mean", "seq-mean-token-mean"):
        leaf = student.clone().requires_grad_()
        if packed:
            index = torch.arange(rows).repeat_interleave(width)
            weight, norm = loss_aggregation(agg, mask.reshape(-1), tokens=float(rows * length), rows=float(rows),
                                            row_index=index)
            loss, _ = packed_logits_distillation_loss(leaf.reshape(1, -1, 12), teacher.reshape(-1, 12),
                                                      torch.arange(rows * width), mask.reshape(-1), 0.3, norm,
                                                      topk=4, token_weight=weight)
        else:
            weight, norm = loss_aggregation(agg, mask, tokens=float(rows * length), rows=float(rows))
            loss, _ = logits_distillation_loss(leaf, teacher, mask, 0.3, norm, topk=4, tail=True,
                                               token_weight=weight)
        results.append((loss, torch.autograd.grad(loss, leaf)[0]))
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_row_token_mean_weights_shapes() -> None:
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1])
    index = torch.tensor([0, 0, 7, 2, 9, 2, 2, 5])  # unmasked positions' rows are ignored
    torch.testing.assert_close(row_token_mean_weights(mask, index),
                               torch.tensor([0.5, 0.5, 0.0, 1 / 3, 0.0, 1 / 3, 1 / 3, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"a packed loss_mask and row_index must both be \(N,\)"):
        row_token_mean_weights(mask, index[:-1])
    with pytest.raises(ValueError, match="token_weight has shape"):
        logits_distillation_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), torch.ones(1, 2), 0.5, 1.0,
                                 token_weight=torch.ones(1, 3))


def test_sampled_token_logps() -> None:
    torch.manual_seed(4)
    logits = torch.randn(2, 9, 11, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 9))
    expected = torch.log_softmax(logits / 1.3, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(sampled_token_logps(logits, ids, 1.3, chunk_size=4), expected)


def test_bad_loss_inputs() -> None:
    logits = torch.zeros(1, 2, 5)
    with pytest.raises(ValueError, match="teacher_logits has shape"):
        logits_distillation_loss(logits, torch.zeros(1, 2, 4), torch.ones(1, 2), 0.5, 1.0)
    with pytest.raises(ValueError, match="support must be one of"):
        logits_distillation_loss(logits, logits, torch.ones(1, 2), 0.5, 1.0, topk=2, support="both")
    with pytest.raises(ValueError, match=r"topk must be an int in \[1, 5\]"):
        logits_distillation_loss(logits, logits, torch.ones(1, 2), 0.5, 1.0, topk=6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        logits_distillation_loss(logits, logits, torch.ones(1, 2), 0.5, 1.0, temperature=0.0)


def test_sdpo_demonstrations_drop_thinking_and_self() -> None:
    """SDPO's demonstration: the group's first other success, shown without its <think> blocks; a group's only
    success gets none (no reprompt on self-success)."""
    assert strip_thinking("<think>a\nb</think>\n\nThe answer is 3. <think>x</think>") == "The answer is 3."
    assert strip_thinking(" no block \n") == " no block \n"
    texts = ["<think>long</think>\\boxed{1}", "wrong", "\\boxed{1}", "only <think>t</think>ok", "no", "no"]
    rewards, groups = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0], [0, 0, 0, 1, 1, 1]
    plan = plan_teacher_passes("sdpo", 0.0, range(6), [0.0] * 6, rewards, groups, ["1"] * 6, [None] * 6, texts)
    assert plan.jobs == [("demo", 0, "\\boxed{1}"), ("demo", 1, "\\boxed{1}"), ("demo", 2, "\\boxed{1}"),
                         ("demo", 4, "only ok"), ("demo", 5, "only ok")]
    assert plan.has_teacher == [True, True, True, False, True, True]


def test_config_values_and_verl_refusals() -> None:
    """The YAMLs' defaults are the authors' recipes and compose, unchanged, for both engines; what verl's actor cannot
    do with them is refused in one line naming the key and the fix; bad values name theirs."""
    from cepo.integrations.trl.from_config import compose

    opsd, sdpo = compose_method_config("opsd", []), compose_method_config("sdpo", [])  # verl, validated
    assert {k: opsd.cepo.distill[k] for k in ("mode", "teacher", "alpha", "is_clip", "weight", "loss_agg")} == {
        "mode": "full", "teacher": "fixed", "alpha": 0.5, "is_clip": None, "weight": 1.0,
        "loss_agg": "seq-mean-token-mean"}
    assert {k: sdpo.cepo.distill[k] for k in ("mode", "support", "topk", "tail", "teacher", "ema_rate", "is_clip",
                                             "loss_agg")} == {
        "mode": "topk", "support": "student", "topk": 100, "tail": True, "teacher": "ema", "ema_rate": 0.05,
        "is_clip": 2.0, "loss_agg": "seq-mean-token-mean"}
    assert CEPOConfig().distill.loss_agg == "token-mean"
    assert sdpo.actor_rollout_ref.actor.ppo_mini_batch_size == sdpo.data.train_batch_size
    assert sdpo.algorithm.norm_adv_by_std_in_grpo is False
    for name, cfg in (("opsd", opsd), ("sdpo", sdpo)):
        assert dict(compose(configs_dir() / f"{name}.yaml", []).cepo.distill) == dict(cfg.cepo.distill)
    for method, override, message in [
        ("opsd", "actor_rollout_ref.model.lora_rank=0", r"^cepo\.distill\.teacher: fixed needs a LoRA actor on verl"),
        ("sdpo", "actor_rollout_ref.model.lora_rank=0", r"^cepo\.distill\.teacher: ema needs a LoRA actor on verl"),
        ("sdpo", "cepo.teacher_sees_image=false", r"^cepo\.teacher_sees_image: must be true with cepo\.distill\.mode"),
        ("opsd", "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
         r"^actor_rollout_ref\.actor\.ulysses_sequence_parallel_size: must be 1 with cepo\.distill\.mode=full"),
        ("opsd", "actor_rollout_ref.model.use_fused_kernels=true",
         r"^actor_rollout_ref\.model\.use_fused_kernels: must be false"),
        ("sdpo", "actor_rollout_ref.actor.entropy_coeff=0.01",
         r"^actor_rollout_ref\.actor\.entropy_coeff: must be 0 with cepo\.distill\.mode=topk and cepo\.distill"),
        ("opsd", "actor_rollout_ref.actor.use_kl_loss=true",
         r"^actor_rollout_ref\.actor\.use_kl_loss: must be false with cepo\.distill\.mode=full"),
    ]:
        with pytest.raises(ConfigError, match=message):
            compose_method_config(method, [override])
    live = compose_method_config("opsd", ["actor_rollout_ref.model.lora_rank=0", "cepo.distill.teacher=live"])
    assert live.cepo.distill.teacher == "live"  # full fine-tuning with the live teacher runs
    from cepo.integrations.trl.from_config import trl_args

    sdpo = ["cepo.distill.mode=topk", "cepo.distill.support=student", "cepo.distill.teacher=ema"]
    args = trl_args(compose(configs_dir() / "sdpo.yaml", sdpo), num_processes=1)  # cepo train's path
    assert (args.cepo_distill_mode, args.cepo_distill_support, args.cepo_distill_teacher) == ("topk", "student", "ema")
    assert args.cepo_config().distill.support == "student"
    with pytest.raises(ValueError, match=r"cepo\.distill\.support must be one of \['teacher', 'student'\]"):
        CEPOConfig.from_mapping({"method": "sdpo", "distill": {"support": "both"}})
    # loss_agg: the divergence loss's aggregation; meaningless for the sampled-token PG loss, refused there
    with pytest.raises(ConfigError, match=r"^cepo\.distill\.loss_agg=seq-mean-token-mean applies to "
                                          r"cepo\.distill\.mode=topk\|full .* set cepo\.distill\.loss_agg=token-mean$"):
        compose_method_config("sdpo", ["cepo.distill.mode=sampled_token", "cepo.distill.teacher=live"])
    switched = compose_method_config("sdpo", ["cepo.distill.mode=sampled_token", "cepo.distill.teacher=live",
                                              "cepo.distill.loss_agg=token-mean"])
    assert switched.cepo.distill.loss_agg == "token-mean"
    with pytest.raises(ValueError, match=r"^cepo\.distill\.loss_agg must be one of \['token-mean', "
                                         r"'seq-mean-token-mean'\], got 'seq-mean'$"):
        CEPOConfig.from_mapping({"method": "opsd", "distill": {"mode": "full", "loss_agg": "seq-mean"}})
    with pytest.raises(ValueError, match=r"^cepo\.distill\.loss_agg=seq-mean-token-mean applies to the "
                                         r"self-distillation methods"):
        CEPOConfig.from_mapping({"method": "grpo", "distill": {"loss_agg": "seq-mean-token-mean"}})
    with pytest.raises(ValueError, match=r"^cepo\.distill\.loss_agg=seq-mean-token-mean applies to "):
        trl_args(compose(configs_dir() / "sdpo.yaml", ["cepo.distill.mode=sampled_token"]), num_processes=1)


# -- the TRL trainer --------------------------------------------------------------------------------------------------
def _recording_trainer(smoke_model: Path, tmp_path: Path, method: str, rewards: Any, peft: bool,
                       **extra: Any) -> Any:
    """A ``CEPOTrainer`` on the tiny Qwen3-VL that records its generation outputs, its loss micro-batches (with the
    weights they ran at) and the teacher logits of the loss micro-batches."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cepo.data import to_conversational
    from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer
    from cepo.integrations.trl.run import lora_config
    from cepo.testing import make_geo3k_like
    from cepo.testing.trl_recording import RecordingMixin, lora_tensors
    from cepo.testing.trl_runs import tiny_run_settings

    class Recording(RecordingMixin, CEPOTrainer):
        def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            loss = super()._compute_loss(model, inputs)
            self.losses.append({"inputs": {k: v.clone() if isinstance(v, torch.Tensor) else v
                                           for k, v in inputs.items()}, "loss": loss.detach(), "weights": weights})
            return loss

        def _micro_batch_teacher_logits(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
            logits = super()._micro_batch_teacher_logits(model, inputs)
            ema = lora_tensors(self.model, "teacher") if self.ema_pairs is not None else None
            self.teacher_logits.append({"logits": logits.detach().clone(), "ema": ema})
            return logits

    settings = tiny_run_settings(tmp_path, method, bf16=False, **extra)
    trainer = Recording(
        model=AutoModelForImageTextToText.from_pretrained(smoke_model), reward_funcs=rewards,
        args=CEPOGRPOConfig(**settings), train_dataset=to_conversational(make_geo3k_like(32)),
        processing_class=AutoProcessor.from_pretrained(smoke_model), peft_config=lora_config() if peft else None,
    )
    trainer.losses, trainer.teacher_logits = [], []
    return trainer


def _row_pixels(batch: dict[str, Any], row: int) -> torch.Tensor:
    """The Qwen-VL patches of ``row``'s images (``pixel_values`` is patch-indexed, split by ``image_grid_thw``)."""
    sizes = batch["image_grid_thw"].prod(-1).tolist()
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    first = sum(batch["num_images"][:row])
    return batch["pixel_values"][starts[first] : starts[first + batch["num_images"][row]]]


def _same_row(batch: dict[str, Any], out: dict[str, Any], taken: set[int], r: int) -> int:
    """The row of the generation output that micro-batch row ``r`` is (TRL shuffles before splitting): same prompt,
    completion, image (several dataset rows share a prompt text) and advantage (a group's success and failure can
    have the same completion text under different rewards, and then different SDPO demonstrations)."""
    keys = ("completion_ids", "prompt_ids", "advantages")
    for g in range(out["completion_ids"].shape[0]):
        if g not in taken and all(torch.equal(out[k][g], batch[k][r]) for k in keys) \
                and torch.equal(_row_pixels(out, g), _row_pixels(batch, r)):
            taken.add(g)
            return g
    raise AssertionError(f"micro-batch row {r} is not a generated row")


def _every_other_group_succeeds(completions: list[Any], **_: Any) -> list[float]:
    """1.0 for the first two rollouts of even groups (of 4), 0.0 elsewhere: odd groups have no success."""
    return [1.0 if (i // 4) % 2 == 0 and i % 4 < 2 else 0.0 for i in range(len(completions))]


def _yaml_loss_agg(method: str) -> str:
    """``cepo.distill.loss_agg`` of configs/<method>.yaml as ``cepo train`` composes it."""
    from cepo.integrations.trl.from_config import compose

    return str(compose(configs_dir() / f"{method}.yaml", []).cepo.distill.loss_agg)


@pytest.mark.parametrize(("method", "mode", "teacher", "loss_agg"),
                         [("opsd", "full", "fixed", "yaml"), ("sdpo", "topk", "ema", "yaml"),
                          ("sdpo", "topk", "ema", "token-mean")],
                         ids=["opsd-full-fixed", "sdpo-student-topk-ema", "sdpo-student-topk-ema-token-mean"])
def test_micro_batch_teacher_loss(method: str, mode: str, teacher: str, loss_agg: str, smoke_model: Path,
                                  tmp_path: Path) -> None:
    """OPSD (full-vocabulary JSD, fixed teacher) and SDPO (student-support top-k with tail, EMA teacher): each loss
    micro-batch's loss equals TRL's divergence of float64 forwards (the student at the weights the step ran at, the
    teacher rebuilt independently: the base model for ``fixed``, the EMA adapter for ``ema``), aggregated as
    ``loss_agg``: ``yaml`` = the YAML's ``seq-mean-token-mean``, the authors' objective (one sequence per micro-batch,
    averaged over accumulation): the mean over all rows of each row's token-mean, rows without a teacher adding 0;
    ``token-mean``: the sum over the rows with a teacher divided by their tokens. The fixed teacher's logits are the
    initial model's at every step although the adapter moved; the EMA adapter moves by the rate after one optimizer
    step."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from cepo.integrations.trl.run import lora_config
    from cepo.teacher import build_teacher_inputs

    rate, alpha, tail = 0.3, 0.5, True
    if loss_agg == "yaml":
        loss_agg = _yaml_loss_agg(method)
        assert loss_agg == "seq-mean-token-mean"
    trainer = _recording_trainer(
        smoke_model, tmp_path, method, [_every_other_group_succeeds], peft=True, per_device_train_batch_size=8,
        max_steps=2, learning_rate=1e-2, cepo_distill_mode=mode, cepo_distill_support="student",
        cepo_distill_topk=K, cepo_distill_tail=tail, cepo_distill_alpha=alpha, cepo_distill_teacher=teacher,
        cepo_distill_ema_rate=rate, cepo_distill_loss_agg=loss_agg,
    )
    trainer.train()
    assert len(trainer.losses) == 2 and len(trainer.teacher_logits) == 2 and len(trainer.generated) == 2
    assert all(e["kind"] not in ("teacher", "student") for e in trainer.forward_log)  # nothing scored at generation
    base = AutoModelForImageTextToText.from_pretrained(smoke_model).double().eval()
    peft = get_peft_model(copy.deepcopy(base), lora_config()).double().eval()
    tau = trainer.temperature
    for step, (gen, rec, scored) in enumerate(zip(trainer.generated, trainer.losses, trainer.teacher_logits,
                                                  strict=True)):
        out, batch = gen["output"], rec["inputs"]
        groups = [i // 4 for i in range(len(gen["rewards"]))]
        if method == "opsd":  # every row distils towards prompt + r+ (the Appendix B template)
            hints = {g: str(a) for g, a in enumerate(gen["answers"])}
            template = CEPOConfig().teacher_template
        else:  # SDPO: the group's first other success
            demos = demonstration_rows(gen["rewards"], groups)
            hints = {g: strip_thinking(gen["texts"][d]) for g, d in enumerate(demos) if d is not None}
            template = SDPO_TEMPLATE
        assert method == "opsd" or len(hints) < len(groups)  # some SDPO rows have no teacher
        taken: set[int] = set()
        rows = [_same_row(batch, out, taken, r) for r in range(batch["completion_ids"].shape[0])]
        with_teacher = [r for r, g in enumerate(rows) if g in hints]
        # the student: float64 forward of the weights this step ran at
        missing, _ = peft.load_state_dict({k: v.double() if v.is_floating_point() else v
                                           for k, v in rec["weights"].items()}, strict=False)  # (+ the EMA adapter)
        assert not missing
        completion = batch["completion_ids"]
        t = completion.shape[1]
        with torch.no_grad():
            student = peft(input_ids=torch.cat([batch["prompt_ids"], completion], 1),
                           attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
                           pixel_values=batch["pixel_values"].double(), image_grid_thw=batch["image_grid_thw"],
                           mm_token_type_ids=batch["mm_token_type_ids"]).logits[:, -(t + 1) : -1]
        # the teacher: rows rebuilt from the prompts and hints, scored by the teacher's weights
        teacher_rows = build_teacher_inputs(
            trainer.processing_class, [gen["prompts"][rows[r]] for r in with_teacher],
            [hints[rows[r]] for r in with_teacher], completion[with_teacher], batch["completion_mask"][with_teacher],
            [gen["images"][rows[r]] for r in with_teacher], template=template)
        if teacher == "ema":
            params = dict(peft.named_parameters())
            with torch.no_grad():
                for name, value in scored["ema"].items():
                    params[name].copy_(value.double())
            model = peft
        else:
            model = base
        p = teacher_rows.prompt_length
        with torch.no_grad():
            kwargs = teacher_rows.model_kwargs()
            kwargs["pixel_values"] = kwargs["pixel_values"].double()
            teacher_logits = model(**kwargs).logits[:, p - 1 : p + t - 1]
        mask = batch["completion_mask"][with_teacher].double()
        torch.testing.assert_close(scored["logits"][with_teacher].double()[mask.bool()],
                                   teacher_logits[mask.bool()], rtol=1e-4, atol=1e-4)
        if mode == "full":
            per_token = compute_full_logit_self_distillation_loss(student[with_teacher] / tau, teacher_logits / tau,
                                                                  distillation_alpha=alpha)
        else:
            per_token = compute_topk_self_distillation_loss(student[with_teacher] / tau, teacher_logits / tau,
                                                            distillation_topk=K, distillation_alpha=alpha,
                                                            distillation_add_tail=tail)
        if loss_agg == "token-mean":
            tokens = sum(float(out["completion_mask"][g].sum()) for g in range(len(groups)) if g in hints)
            expected = (per_token * mask).sum() / tokens
        else:  # (1/R) Σ_{rows with a teacher} Σ_t D / L_r, R = every row of the window (one micro-batch here)
            row_means = (per_token * mask).sum(-1) / mask.sum(-1)
            expected = row_means.sum() / len(rows)
        torch.testing.assert_close(rec["loss"].double(), expected, rtol=1e-4, atol=1e-6)
        assert float(expected) > 0
        if teacher == "fixed":  # the initial model's logits on the very inputs the trainer's teacher saw
            from cepo.integrations.trl.distillation import teacher_forward_kwargs
            from cepo.integrations.trl.trainer import TRL_FORWARD_KEYS

            kwargs = teacher_forward_kwargs(batch, TRL_FORWARD_KEYS)
            kwargs["pixel_values"] = kwargs["pixel_values"].double()
            with torch.no_grad():
                initial = base(**kwargs).logits[:, -(t + 1) : -1]
            full_mask = batch["completion_mask"].bool()
            torch.testing.assert_close(scored["logits"].double()[full_mask], initial[full_mask], rtol=1e-4, atol=1e-4)
            if step == 1:  # the adapter moved, the teacher did not
                assert any((rec["weights"][n] - trainer.losses[0]["weights"][n]).abs().max() > 1e-6
                           for n in rec["weights"] if "lora_B" in n)
    if teacher == "ema":  # after the first optimizer step: theta_T = (1 - r) theta(0) + r theta(1)
        start, after = trainer.student_history[0], trainer.student_history[1]
        for name, value in trainer.ema_history[0].items():
            torch.testing.assert_close(value.double(), (1 - rate) * start[name].double() + rate * after[name].double(),
                                       rtol=0, atol=1e-6)
        assert any(not torch.equal(trainer.ema_history[0][n], start[n]) for n in start)


def test_sdpo_rows_without_teacher_leave_the_denominator(smoke_model: Path, tmp_path: Path) -> None:
    """SDPO sampled-token, pure distillation: rows whose group has no success carry no tokens in TRL's loss, and the
    token-mean divides by the tokens of the rows with a teacher (SDPO's response_mask x self_distillation_mask), so
    the on-policy loss is -Σ_{teacher rows} A_t / N_teacher."""
    trainer = _recording_trainer(smoke_model, tmp_path, "sdpo", [_every_other_group_succeeds], peft=False,
                                 per_device_train_batch_size=8)
    trainer.train()
    gen, rec = trainer.generated[0], trainer.losses[0]
    out, batch = gen["output"], rec["inputs"]
    demos = demonstration_rows(gen["rewards"], [i // 4 for i in range(len(gen["rewards"]))])
    has_teacher = torch.tensor([d is not None for d in demos])
    assert has_teacher.any() and not has_teacher.all()
    full_mask = trainer.generated[0]["output"]["completion_mask"]
    assert not full_mask[~has_teacher].any()  # rows without a teacher: no loss tokens
    tokens = float(full_mask[has_teacher].sum())
    assert float(out["num_items_in_batch"]) == tokens
    expected = -(batch["advantages"] * batch["completion_mask"]).sum() / tokens  # ratio 1 on the first update
    torch.testing.assert_close(rec["loss"].double(), expected.double(), rtol=1e-4, atol=1e-6)


def test_fixed_teacher_needs_lora(smoke_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^cepo\.distill\.teacher=fixed needs a PEFT LoRA model"):
        _recording_trainer(smoke_model, tmp_path, "opsd", [_every_other_group_succeeds], peft=False,
                           cepo_distill_teacher="fixed")


@pytest.mark.parametrize("method", ["opsd", "sdpo"])
def test_cepo_train_runs_the_authors_recipe_from_the_yaml(method: str, smoke_model: Path, tmp_path: Path) -> None:
    """``cepo train --config configs/<method>.yaml`` (TRL), the YAML unchanged but for the tiny model, data and run
    size: the trainer runs OPSD's full-vocabulary JSD against the initial policy / SDPO's student top-k against an EMA
    adapter, and logs a distillation loss each step."""
    import json

    from cepo.cli import main as cli_main
    from cepo.testing import make_geo3k_like

    data = tmp_path / "train.parquet"
    make_geo3k_like(4).to_parquet(str(data))
    run = tmp_path / "run"
    overrides = [f"actor_rollout_ref.model.path={smoke_model}", f"data.train_files={data}", "data.train_batch_size=2",
                 "actor_rollout_ref.rollout.n=4", "data.max_response_length=8", "trainer.total_training_steps=2",
                 "actor_rollout_ref.actor.optim.lr_warmup_steps=0", f"trainer.default_local_dir={run}",
                 "cepo.distill.success_threshold=0.0"]  # SDPO: every tiny rollout counts as a success (a teacher)
    if method == "opsd":
        overrides.append("actor_rollout_ref.actor.ppo_mini_batch_size=2")
    assert cli_main(["train", "--config", str(configs_dir() / f"{method}.yaml"), *overrides]) == 0
    states = sorted(run.glob("checkpoint-*/trainer_state.json"))
    assert states, list(run.iterdir())
    history = json.loads(states[-1].read_text())["log_history"]
    losses = [entry["cepo/distill_loss"] for entry in history if "cepo/distill_loss" in entry]
    assert len(losses) == 2 and all(loss > 0 for loss in losses), history
    args = json.loads((run / "config.json").read_text())  # the run's TrainingArguments
    expected = ({"mode": "full", "teacher": "fixed", "alpha": 0.5, "is_clip": None} if method == "opsd" else
                {"mode": "topk", "support": "student", "topk": 100, "tail": True, "teacher": "ema", "ema_rate": 0.05,
                 "is_clip": 2.0})
    expected["loss_agg"] = "seq-mean-token-mean"
    assert {k: args[f"cepo_distill_{k}"] for k in expected} == expected
    assert (run / "final" / "ema_teacher.safetensors").is_file() == (method == "sdpo")
