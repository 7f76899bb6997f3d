"""OPSD and SDPO as their authors run them, on verl's real worker path (cepo/integrations/verl/distill_worker.py).

The harness (``_harness.py``) runs verl's ``ActorRolloutRefWorker`` subclass ``CEPOActorRolloutRefWorker`` behind an
in-process worker group on the tiny Qwen3-VL with a LoRA adapter, reading and writing real TransferQueue: the trainer's
``_compute_old_log_prob`` / ``_compute_advantage`` write the teacher sequences, verl's own ``_update_actor`` ->
``update_actor`` -> ``train_mini_batch`` -> ``train_batch`` -> ``forward_step`` runs the update with SGD. Every
expected number is an independent float64 computation from plain Hugging Face forwards of the same rows.
"""

from __future__ import annotations

import copy

import _harness as h
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LR = 0.5  # SGD: the update is -LR * gradient (no clipping: clip_grad is huge)
TRAIN = [
    "actor_rollout_ref.model.lora_rank=4", "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", "actor_rollout_ref.actor.optim.clip_grad=1.0e9",
    "actor_rollout_ref.actor.shuffle=false",
]


def lora_actor(vl_model, seed: int = 0):
    """The tiny Qwen3-VL with a LoRA adapter whose B matrices are non-zero (a trained-looking adapter, so the initial
    policy, the adapter disabled, differs from the actor)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(vl_model), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                               target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


def _student_inputs(processor, row):
    text = processor.apply_chat_template(row["messages"], add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[row["image"]], return_tensors="pt")
    ids = torch.cat([enc["input_ids"][0], row["response_ids"]])
    kwargs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in kwargs:
        kwargs["mm_token_type_ids"] = torch.cat([kwargs["mm_token_type_ids"][0],
                                                 torch.zeros_like(row["response_ids"])]).unsqueeze(0)
    return ids.unsqueeze(0), int(enc["input_ids"].shape[1]), kwargs


def _response_logits(model, ids, prompt_len, kwargs, response_len):
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs).logits
    return out[0, prompt_len - 1 : prompt_len - 1 + response_len]


def _jsd64(student_logits, teacher_logits, alpha):
    """Generalized JSD per position in float64, written out: (1-a) KL(S||M) + a KL(T||M), M = (1-a) S + a T."""
    s = torch.softmax(student_logits.double(), -1)
    t = torch.softmax(teacher_logits.double(), -1)
    m = (1 - alpha) * s + alpha * t
    kl_sm = (s * (s.log() - m.log())).sum(-1)
    kl_tm = (t * (t.log() - m.log())).sum(-1)
    return (1 - alpha) * kl_sm + alpha * kl_tm


def _topk_student_jsd64(student_logits, teacher_logits, k, alpha):
    """SDPO's top-k on the student's support with a tail bucket, in float64: both distributions restricted to the
    student's top-k ids plus one category for the rest, then the generalized JSD."""
    ls, lt = torch.log_softmax(student_logits.double(), -1), torch.log_softmax(teacher_logits.double(), -1)
    ids = ls.topk(k, dim=-1).indices
    s_k, t_k = ls.gather(-1, ids).exp(), lt.gather(-1, ids).exp()
    s = torch.cat([s_k, (1 - s_k.sum(-1, keepdim=True)).clamp(min=1e-300)], -1)
    t = torch.cat([t_k, (1 - t_k.sum(-1, keepdim=True)).clamp(min=1e-300)], -1)
    m = (1 - alpha) * s + alpha * t
    return (1 - alpha) * (s * (s.log() - m.log())).sum(-1) + alpha * (t * (t.log() - m.log())).sum(-1)


def _setup(method, tiny_vl_dir, vl_processor, vl_model, geo, overrides=()):
    from cepo.integrations.verl.distill_worker import CEPOActorRolloutRefWorker, WorkerDistill

    cfg = h.config(tiny_vl_dir, method=method, overrides=[*TRAIN, *overrides])
    model = lora_actor(vl_model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    wg = h.worker_group(cfg, model, worker_cls=CEPOActorRolloutRefWorker, dp=1, optimizer=optimizer)
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    wg.cepo_setup(WorkerDistill.from_cepo(trainer.cepo))
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, method)
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)
    return cfg, model, wg, trainer, meta, rows


def _reference_loss(model, vl_processor, rows, hints, has, template, divergence, teacher_ctx, loss_agg):
    """The float64 loss from plain forwards, with the gradient of the trainable parameters (float32 forward, float64
    divergence). ``token-mean``: ``Σ_{rows with a teacher} Σ_t D_t / (their response tokens)``;
    ``seq-mean-token-mean`` (the authors': one row per micro-batch, averaged over the mini-batch):
    ``(1/R) Σ_{rows with a teacher} (Σ_t D_t) / L_r`` over all R rows, rows without a teacher counted as 0."""
    from cepo.teacher import build_teacher_inputs

    assert loss_agg in ("token-mean", "seq-mean-token-mean")
    total, count, row_means = torch.zeros((), dtype=torch.float64), 0, torch.zeros((), dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    for row, hint, flag in zip(rows, hints, has, strict=True):
        if not flag:
            continue
        resp = row["response_ids"]
        teacher = build_teacher_inputs(vl_processor, [row["messages"]], [hint], resp.unsqueeze(0),
                                       torch.ones_like(resp).unsqueeze(0), [[row["image"]]], template=template)
        with torch.no_grad(), teacher_ctx():
            p = teacher.prompt_length
            t_logits = model(**teacher.model_kwargs()).logits[0, p - 1 : p - 1 + resp.numel()]
        ids, prompt_len, kwargs = _student_inputs(vl_processor, row)
        s_logits = _response_logits(model, ids, prompt_len, kwargs, resp.numel())
        row = divergence(s_logits, t_logits).sum()
        total = total + row
        row_means = row_means + row / resp.numel()
        count += resp.numel()
    loss = total / count if loss_agg == "token-mean" else row_means / len(rows)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return float(loss), grads


def _check_update(model, before, grads):
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.detach() - before[name], -LR * grads[name], rtol=2e-3, atol=2e-7)


def test_opsd_default_full_jsd_against_the_fixed_teacher(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    """configs/opsd.yaml unchanged (full-vocabulary JSD beta 0.5, fixed teacher = the LoRA adapter disabled, pure
    distillation): the loss verl's update reports and the LoRA update equal a float64 computation from plain forwards,
    and the fixed teacher's log-probs are the initial policy's, unchanged by the update. The reference is OPSD's
    objective (run_opsd.sh: one sequence per device, averaged over accumulation): the mean over rows of each row's
    token-mean, the YAML's ``cepo.distill.loss_agg``; the rows' response lengths differ, so a token-mean would not
    match."""
    _, model, wg, trainer, meta, rows = _setup("opsd", tiny_vl_dir, vl_processor, vl_model, geo)
    distill = trainer.cepo.distill
    assert (distill.mode, distill.teacher, distill.is_clip, distill.alpha) == ("full", "fixed", None, 0.5)
    assert len({r["response_ids"].numel() for r in rows}) > 1
    assert [partition for partition, _ in wg.log_prob_calls] == ["train"]  # no teacher scoring pass: it is in the loss
    hints = [r["answer"] for r in rows]
    expected, grads = _reference_loss(model, vl_processor, rows, hints, [True] * len(rows),
                                      trainer.cepo.teacher_template, lambda s, t: _jsd64(s, t, 0.5),
                                      model.disable_adapter, "seq-mean-token-mean")
    with torch.no_grad(), model.disable_adapter():
        initial = _response_logits(model, *_student_inputs(vl_processor, rows[0])[:3], rows[0]["response_ids"].numel())
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics: dict = {}
    trainer._update_actor(meta, metrics)
    assert metrics["actor/cepo_distill_loss"] == pytest.approx(expected, rel=1e-4)
    assert "actor/pg_loss" not in metrics  # pure distillation: verl's PG loss is not computed
    _check_update(model, before, grads)
    # the fixed teacher: the adapter-disabled model, which the LoRA update leaves as it was
    with torch.no_grad(), model.disable_adapter():
        after = _response_logits(model, *_student_inputs(vl_processor, rows[0])[:3], rows[0]["response_ids"].numel())
    torch.testing.assert_close(after, initial)
    with torch.no_grad():
        live = _response_logits(model, *_student_inputs(vl_processor, rows[0])[:3], rows[0]["response_ids"].numel())
    assert (live - initial).abs().max() > 1e-4


@pytest.mark.parametrize("loss_agg", ["yaml", "token-mean"])
def test_sdpo_default_topk_student_support_ema_and_denominator(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo,
                                                               tmp_path, loss_agg):
    """configs/sdpo.yaml (top-100 on the student's support with a tail bucket, alpha 0.5, EMA teacher rate 0.05, one
    update per rollout batch): the loss and the LoRA update equal a float64 computation, and after the optimizer step
    the EMA teacher is ``(1 - 0.05) theta_0 + 0.05 theta_1`` of the adapter. ``yaml``: the YAML's
    ``seq-mean-token-mean``, SDPO's objective (one row per micro-batch): the mean over all rows of each row's
    token-mean, rows without a successful peer adding 0 but counted; ``token-mean``: those rows leave the
    token-mean's denominator."""
    from cepo.algorithms import demonstration_rows

    extra = [] if loss_agg == "yaml" else [f"cepo.distill.loss_agg={loss_agg}"]
    cfg, model, wg, trainer, meta, rows = _setup("sdpo", tiny_vl_dir, vl_processor, vl_model, geo,
                                                 overrides=["cepo.distill.topk=20", *extra])
    distill = trainer.cepo.distill
    assert distill.loss_agg == ("seq-mean-token-mean" if loss_agg == "yaml" else loss_agg)
    assert (distill.mode, distill.support, distill.teacher, distill.tail) == ("topk", "student", "ema", True)
    assert cfg.actor_rollout_ref.actor.ppo_mini_batch_size == cfg.data.train_batch_size
    scores, groups = torch.tensor([r["score"] for r in rows]), [r["uid"] for r in rows]
    demos = demonstration_rows(scores, groups)
    hints = [rows[d]["text"] if d is not None else "" for d in demos]
    has = [d is not None for d in demos]
    assert 0 < sum(has) < len(has)
    # theta_T(0) = theta(0): the EMA teacher starts as the actor, so the reference teacher is the live model
    expected, grads = _reference_loss(model, vl_processor, rows, hints, has, distill.demo_template,
                                      lambda s, t: _topk_student_jsd64(s, t, 20, 0.5), torch.no_grad,
                                      distill.loss_agg)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    metrics: dict = {}
    trainer._update_actor(meta, metrics)
    # the teacher differs from the student only by the demonstration: divergences ~1e-5, whose float32 value (a sum of
    # terms of order 0.1 that nearly cancel) carries ~1e-8 of rounding
    assert metrics["actor/cepo_distill_loss"] == pytest.approx(expected, rel=1e-4, abs=3e-8)
    _check_update(model, before, grads)
    worker = wg._workers[0]
    params = [p for p in model.parameters() if p.requires_grad]
    theta0 = [before[n] for n, p in model.named_parameters() if p.requires_grad]
    for ema, p, p0 in zip(worker.cepo_teacher.ema, params, theta0, strict=True):
        torch.testing.assert_close(ema, 0.95 * p0 + 0.05 * p.detach(), rtol=1e-6, atol=1e-7)
    assert any((p.detach() - p0).abs().max() > 0 for p, p0 in zip(params, theta0, strict=True))
    # saved beside verl's actor checkpoint and loaded back on resume; a checkpoint without it is refused
    folder = tmp_path / "global_step_1" / "actor"
    saved = [t.clone() for t in worker.cepo_teacher.ema]
    worker.cepo_teacher.save(str(folder), rank=0)
    assert sorted(f.name for f in folder.iterdir()) == ["cepo_ema_teacher_rank0.pt"]
    for t in worker.cepo_teacher.ema:
        t.zero_()
    worker.cepo_teacher.load(str(folder), rank=0)
    for t, s in zip(worker.cepo_teacher.ema, saved, strict=True):
        torch.testing.assert_close(t, s, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"cepo_ema_teacher_rank1\.pt is missing: this checkpoint was not saved"):
        worker.cepo_teacher.load(str(folder), rank=1)


def test_sampled_token_sdpo_rows_without_teacher_leave_the_denominator(verl_cpu, tiny_vl_dir, vl_processor, vl_model,
                                                                       geo):
    """Sampled-token SDPO with weight 1 through verl's PG loss: verl's token-mean divides by the loss_mask count, so
    the rows without a successful peer (advantage 0) are taken out of loss_mask, as SDPO's self_distillation_mask."""
    import transfer_queue as tq

    from cepo.algorithms import demonstration_rows

    cfg = h.config(tiny_vl_dir, method="sdpo", overrides=["cepo.distill.mode=sampled_token",
                                                          "cepo.distill.teacher=live",
                                                          "cepo.distill.loss_agg=token-mean"])
    wg = h.worker_group(cfg, vl_model)
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, "st")
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["loss_mask", "response_mask"])
    demos = demonstration_rows(torch.tensor([r["score"] for r in rows]), [r["uid"] for r in rows])
    for i, demo in enumerate(demos):
        assert out["response_mask"][i].sum() > 0
        assert int(out["loss_mask"][i].sum()) == (int(out["response_mask"][i].sum()) if demo is not None else 0)


def test_sampled_token_teacher_pass_runs_under_the_fixed_teachers_weights(verl_cpu, tiny_vl_dir, vl_processor,
                                                                          vl_model, geo):
    """Sampled-token OPSD with the fixed teacher: the workers' teacher pass (``cepo_teacher_log_prob``) scores r+
    under the initial policy (the adapter disabled), not the live actor."""
    import transfer_queue as tq

    from cepo.integrations.verl.credit import POS_KEY
    from cepo.teacher import build_teacher_inputs, teacher_logprobs

    _, model, wg, trainer, meta, rows = _setup("opsd", tiny_vl_dir, vl_processor, vl_model, geo,
                                               overrides=["cepo.distill.mode=sampled_token",
                                                          "cepo.distill.loss_agg=token-mean"])
    assert (trainer.cepo.distill.mode, trainer.cepo.distill.teacher) == ("sampled_token", "fixed")
    assert [partition for partition, _ in wg.log_prob_calls] == ["train"]  # the teacher rows: cepo_teacher_log_prob
    stored = h.padded(tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=[POS_KEY])[POS_KEY].unbind())
    resp = h.padded(r["response_ids"] for r in rows).long()
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows).long()
    inputs = build_teacher_inputs(vl_processor, [r["messages"] for r in rows], [r["answer"] for r in rows], resp, mask,
                                  [[r["image"]] for r in rows], template=trainer.cepo.teacher_template)
    with torch.no_grad(), model.disable_adapter():
        initial = teacher_logprobs(model, inputs)
    with torch.no_grad():
        live = teacher_logprobs(model, inputs)
    torch.testing.assert_close(stored, initial, rtol=1e-4, atol=1e-4)
    assert (stored - live).abs().max() > 1e-3
