"""``CEPOTrainerSync._compute_old_log_prob`` and ``_compute_advantage`` executed on CPU.

What is real here:

* **TransferQueue**: the real ``transfer_queue`` (controller + one SimpleStorage unit) on a local Ray
  instance (``ray.init(num_cpus=2)``), started and shut down by the module fixture (``verl_cpu``, conftest.py).
  The rollouts are written with verl's own ``AgentLoopOutput.as_dict`` + ``_compute_multi_modal_inputs`` +
  ``_compute_position_ids``, one ``kv_batch_put`` per session (the v1 agent loop's per-sample fields and
  ``{uid}_{session}_{index}`` keys); the harness is _harness.py.
* **Trainer**: ``CEPOTrainerSync`` with verl's own ``PPOTrainer._compute_old_log_prob`` (student pass,
  entropy, rollout-vs-actor metrics) and ``_compute_advantage`` (``compute_advantage_for_multi_trajectories``
  with our registered ``cepo`` estimator) running underneath our overrides.
* **Worker call path**: ``actor_rollout_wg.compute_log_prob(meta)`` goes through verl's ``WorkerGroup``
  method binding, ``func_generator`` and the ``make_nd_compute_dataproto_dispatch_fn("actor")``
  dispatch/collect (KVBatchMeta -> per-rank BatchMeta -> KVBatchMeta) over **two** data-parallel ranks, into
  the real ``ActorRolloutRefWorker.compute_log_prob`` (its ``tqbridge`` reads the rows from TransferQueue
  and writes ``log_probs`` back), ``TrainingWorker.infer_batch`` and verl's ``FSDPEngineWithLMHead``
  (constructed by its own ``__init__`` on a 1-process gloo group): ``prepare_micro_batches`` with static
  micro-batches, ``prepare_model_inputs`` / ``forward_step`` / ``prepare_model_outputs`` on the tiny Qwen3-VL
  with its (4, L) position ids and images.

What is doubled, and why:

* The two ranks are in-process objects (``object.__new__``) executed by ``LocalWorkerGroup.execute_all``
  instead of Ray actors: verl's worker ``__init__`` joins an NCCL process group and ``init_model`` wraps the
  model in FSDP on a CUDA device mesh. Both ranks share one engine.
* ``engine.module`` is the plain HF model, not the FSDP-wrapped one (``FSDPEngine.initialize`` needs CUDA);
  ``get_device_name``/``get_device_id`` of the engine modules are patched to ``"cpu"`` (verl has no CPU
  platform and falls back to CUDA), and the worker's memory metrics read 0.
* ``use_remove_padding=false`` here (the paper config packs: flash-attn varlen on GPU); the packed forward runs on
  CPU in test_verl_equal_length.py (verl's monkey patch, sdpa attention).
* The trainer is built with ``object.__new__`` (its ``__init__``/``init`` build the rollout servers);
  only the attributes the two methods read are set.
"""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

import _harness as h  # noqa: E402
from _harness import DP, MICRO, SCORES, N  # noqa: E402

from cepo.algorithms import (  # noqa: E402
    CreditInputs,
    compute_token_advantages,
    demonstration_rows,
    group_advantages,
    negative_hints,
    rollout_scores,
    sequence_advantages,
)
from cepo.integrations.verl.credit import DEMO_KEY, HAS_NEG_KEY, NEG_KEY, POS_KEY  # noqa: E402
from cepo.integrations.verl.trainer import TEACHER_PARTITION  # noqa: E402
from cepo.recipes import cepo_config_from  # noqa: E402
from cepo.rewards import extract_answer  # noqa: E402
from cepo.teacher import build_teacher_inputs, teacher_logprobs  # noqa: E402


def test_teacher_pass_and_token_advantages_through_verl_workers(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    cfg = h.config(tiny_vl_dir)
    wg = h.worker_group(cfg, vl_model)
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, "a")
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    metrics: dict = {}
    meta = trainer._compute_old_log_prob(meta, metrics)
    meta = trainer._compute_advantage(meta, metrics)

    # (ii) one student call, then exactly one teacher call carrying the r+ and the r- rows together
    assert [partition for partition, _ in wg.log_prob_calls] == ["train", TEACHER_PARTITION]
    teacher_keys = wg.log_prob_calls[1][1]
    assert len(teacher_keys) % (DP * MICRO) == 0
    assert sum(k.endswith("::pos") for k in teacher_keys) == 2 * N
    assert sum(k.endswith("::neg") for k in teacher_keys) == N  # only group 0 has a rejected rollout
    assert not tq.kv_list(TEACHER_PARTITION).get(TEACHER_PARTITION)  # teacher rows were cleared

    out = tq.kv_batch_get(keys=meta.keys, partition_id="train",
                          select_fields=["advantages", "returns", "old_log_probs", POS_KEY, NEG_KEY, HAS_NEG_KEY])
    resp = h.padded(r["response_ids"] for r in rows).long()
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows).long()
    pos = [r["answer"] for r in rows]
    neg, has_neg = negative_hints([extract_answer(r["text"]) for r in rows], [r["score"] for r in rows],
                                  [r["uid"] for r in rows])
    assert neg[:N] == ["7"] * N and has_neg == [True] * N + [False] * N  # lowest-reward rejected with an answer
    assert out[HAS_NEG_KEY].tolist() == has_neg

    # (i) the workers' teacher log-probs equal a direct forward over cepo.teacher.build_teacher_inputs
    messages = [r["messages"] for r in rows]
    images = [[r["image"]] for r in rows]
    direct_pos = teacher_logprobs(vl_model,
                                  build_teacher_inputs(vl_processor, messages, pos, resp, mask, images=images))
    torch.testing.assert_close(h.padded(out[POS_KEY].unbind()), direct_pos, rtol=1e-4, atol=1e-4)
    direct_neg = teacher_logprobs(vl_model, build_teacher_inputs(vl_processor, messages[:N], neg[:N], resp[:N],
                                                                 mask[:N], images=images[:N]))
    got_neg = h.padded(out[NEG_KEY].unbind())
    torch.testing.assert_close(got_neg[:N], direct_neg, rtol=1e-4, atol=1e-4)
    assert (got_neg[N:] == 0).all()

    # (iii) final advantages = compute_token_advantages("cepo") on Eq. 1 and the same log-probs
    scores = torch.tensor([r["score"] for r in rows])
    seq_adv = group_advantages(scores, [r["uid"] for r in rows])
    inputs = CreditInputs(advantages=seq_adv, response_mask=mask, lam=0.5, eps_w=trainer.cepo.eps_w,
                          logp_student=h.padded(out["old_log_probs"].unbind()),
                          logp_pos=h.padded(out[POS_KEY].unbind()), logp_neg=got_neg,
                          has_negative=torch.tensor(has_neg))
    expected, _ = compute_token_advantages("cepo", inputs)
    advantages = h.padded(out["advantages"].unbind())
    torch.testing.assert_close(advantages, expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.padded(out["returns"].unbind()), advantages)
    assert seq_adv[N:].abs().sum() > 0 and not torch.allclose(advantages, seq_adv.unsqueeze(-1) * mask)

    # (iv) group 1 has no rejected rollout: its rows get the RLSD token advantages
    rlsd, _ = compute_token_advantages("rlsd", inputs)
    torch.testing.assert_close(advantages[N:], rlsd[N:].float(), rtol=1e-5, atol=1e-6)
    assert metrics["cepo/lambda"] == 0.5 and metrics["cepo/has_negative_frac"] == 0.5
    assert metrics["cepo/teacher_time_s"] > 0 and "actor/entropy" in metrics


def test_lambda_zero_skips_the_teacher_call(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    cfg = h.config(tiny_vl_dir)
    wg = h.worker_group(cfg, vl_model)
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, "b")
    warmup = cepo_config_from(cfg).warmup_steps
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=warmup + 1)  # 0-based step = warmup: lambda = 0
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)

    # (v) only the student pass reached the workers; the advantages are verl's GRPO (Eq. 1) ones
    assert [partition for partition, _ in wg.log_prob_calls] == ["train"]
    assert metrics["cepo/lambda"] == 0.0 and "cepo/teacher_time_s" not in metrics
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages"])
    assert POS_KEY not in tq.kv_batch_get(keys=meta.keys[:1], partition_id="train").keys()  # noqa: SIM118 (TensorDict)
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows)
    seq_adv = group_advantages(torch.tensor([r["score"] for r in rows]), [r["uid"] for r in rows])
    torch.testing.assert_close(h.padded(out["advantages"].unbind()), seq_adv.unsqueeze(-1) * mask,
                               rtol=1e-5, atol=1e-6)


def test_zero_advantage_group_gets_no_teacher_rows(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    """A group whose rewards are all equal has A = 0, so A_t = 0 whatever the teacher says: no teacher rows."""
    cfg = h.config(tiny_vl_dir)
    wg = h.worker_group(cfg, vl_model)
    meta, _ = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, "c", scores=[SCORES[0], [1.0] * N])
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)

    teacher_keys = wg.log_prob_calls[1][1]
    assert {k.split("_")[0] for k in teacher_keys if k.endswith(("::pos", "::neg"))} == {"c0"}
    assert sum(k.endswith("::pos") for k in teacher_keys) == N and sum(k.endswith("::neg") for k in teacher_keys) == N
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages"])
    advantages = h.padded(out["advantages"].unbind())
    assert torch.all(advantages[N:] == 0) and advantages[:N].abs().sum() > 0


@pytest.mark.parametrize("method", ["opsd", "sdpo", "conspo"])
def test_loss_level_methods_through_verl_workers(method, verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    """OPSD / SDPO (in their sampled-token form, with the live teacher) / ConSPO through the same two overrides: the
    teacher rows their declarations ask for (OPSD: r+ on every rollout; SDPO: a successful peer rollout; ConSPO: none)
    are scored by the workers, and the advantages equal an independent computation (cepo.teacher forwards +
    cepo.algorithms) on the same rollouts. Their YAML defaults (top-k / full, fixed / EMA teachers) are
    test_verl_distill_worker.py's."""
    sampled = [] if method == "conspo" else ["cepo.distill.mode=sampled_token", "cepo.distill.teacher=live",
                                             "cepo.distill.loss_agg=token-mean"]
    cfg = h.config(tiny_vl_dir, method=method, overrides=sampled)
    wg = h.worker_group(cfg, vl_model)
    meta, rows = h.put_rollouts(vl_processor, vl_processor.tokenizer, geo, method)
    trainer = h.trainer(cfg, vl_processor, wg, global_steps=1)
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)

    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages", "old_log_probs"])
    advantages, student = h.padded(out["advantages"].unbind()), h.padded(out["old_log_probs"].unbind())
    resp = h.padded(r["response_ids"] for r in rows).long()
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows).long()
    messages, images = [r["messages"] for r in rows], [[r["image"]] for r in rows]
    scores, groups = torch.tensor([r["score"] for r in rows]), [r["uid"] for r in rows]
    options = trainer.cepo.credit_options(0.0)
    if method == "conspo":
        assert [partition for partition, _ in wg.log_prob_calls] == ["train"]  # no teacher pass
        seq = sequence_advantages("conspo", scores, groups, scores=rollout_scores(student, mask),
                                  options={**options, "threshold": 0.5})
        expected, _ = compute_token_advantages("conspo", CreditInputs(seq, mask, 0.0, 0.5, num_tokens=int(mask.sum())))
        torch.testing.assert_close(advantages, expected.float(), rtol=1e-4, atol=1e-4)
        assert advantages.abs().sum() > 0
        return
    if method == "opsd":
        hints, template, has = [r["answer"] for r in rows], trainer.cepo.teacher_template, [True] * len(rows)
    else:
        demos = demonstration_rows(scores, groups)
        hints = [rows[d]["text"] if d is not None else "" for d in demos]
        template, has = trainer.cepo.distill.demo_template, [d is not None for d in demos]
    keys = wg.log_prob_calls[1][1]
    assert sum(not k.split("::")[-1].startswith("pad") for k in keys) == sum(has) > 0
    key = POS_KEY if method == "opsd" else DEMO_KEY
    stored = h.padded(tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=[key])[key].unbind())
    # the advantages are the distillation advantages of the stored teacher and student log-probs ...
    inputs = CreditInputs(group_advantages(scores, groups), mask, 0.5, 0.5, logp_student=student, logp_pos=stored,
                          logp_demo=stored, has_teacher=torch.tensor(has), options=options)
    expected, _ = compute_token_advantages(method, inputs)
    torch.testing.assert_close(advantages, expected.float(), rtol=1e-5, atol=1e-6)
    assert advantages.abs().sum() > 0
    # ... and the stored teacher log-probs are the method's teacher contexts (hints, template, image), scored
    # directly, on every row (group 1's rows are all one length: tests/verl/test_verl_equal_length.py)
    direct = teacher_logprobs(vl_model, build_teacher_inputs(vl_processor, messages, hints, resp, mask, images,
                                                             template=template))
    teacher_rows = torch.tensor(has)
    torch.testing.assert_close(stored[teacher_rows], direct[teacher_rows], rtol=1e-4, atol=1e-4)
    assert (stored[~teacher_rows] == 0).all()
