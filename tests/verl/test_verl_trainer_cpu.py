"""``CEPOTrainerSync._compute_old_log_prob`` and ``_compute_advantage`` executed on CPU.

What is real here:

* **TransferQueue**: the real ``transfer_queue`` (controller + one SimpleStorage unit) on a local Ray
  instance (``ray.init(num_cpus=2)``), started and shut down by the module fixture. The rollout batch is
  written with verl's own ``AgentLoopOutput.as_dict`` + ``_compute_multi_modal_inputs`` +
  ``_compute_position_ids`` (the v1 agent loop's per-sample fields and ``{uid}_{session}_{index}`` keys).
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
* ``use_remove_padding=false``: the packed (remove-padding) forward needs flash-attn varlen kernels (GPU).
* The trainer is built with ``object.__new__`` (its ``__init__``/``init`` build the rollout servers);
  only the attributes the two methods read are set.
"""

from __future__ import annotations

import threading
import types

import pytest
import torch

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

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
from cepo.integrations.verl.trainer import TEACHER_PARTITION, CEPOTrainerSync  # noqa: E402
from cepo.recipes import cepo_config_from, compose_method_config  # noqa: E402
from cepo.rewards import extract_answer  # noqa: E402
from cepo.teacher import build_teacher_inputs, teacher_logprobs  # noqa: E402

N = 4  # rollouts per prompt
MICRO = 4  # rollout.log_prob_micro_batch_size_per_gpu (static micro-batches)
DP = 2  # data-parallel ranks of the worker-group double
# group 0 has rejected rollouts (one without a boxed answer); group 1 has none (graded, all >= 0.5)
RESPONSES = [[r"so \boxed{ANS}", r"\boxed{7}", "no box at all", r"\boxed{9}"],
             [r"\boxed{ANS}", r"\boxed{ANS}", r"\boxed{ANS}.", r"\boxed{ANS}"]]
SCORES = [[1.0, 0.1, 0.0, 0.1], [1.0, 0.9, 1.0, 0.9]]


@pytest.fixture(scope="module")
def verl_cpu(tmp_path_factory):
    """Local Ray + TransferQueue, a 1-process gloo group, verl's engine modules pointed at the CPU."""
    import torch.distributed as dist
    import verl.workers.engine.base as engine_base
    import verl.workers.engine.fsdp.transformer_impl as fsdp_impl
    import verl.workers.engine.fsdp.utils as fsdp_utils
    import verl.workers.engine_workers as engine_workers
    from omegaconf import OmegaConf

    mp = pytest.MonkeyPatch()
    for module in (fsdp_impl, fsdp_utils, engine_base):
        mp.setattr(module, "get_device_name", lambda: "cpu")
    mp.setattr(fsdp_impl, "get_device_id", lambda: "cpu")
    mp.setattr(engine_workers, "get_torch_device",
               lambda: types.SimpleNamespace(max_memory_allocated=lambda: 0, max_memory_reserved=lambda: 0))
    own_pg = not dist.is_initialized()
    if own_pg:
        store = tmp_path_factory.mktemp("pg") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # controller (1 CPU) + one storage unit (1 CPU): fits the 2 logical CPUs; bounded so a stuck start fails
    errors: list[BaseException] = []

    def start():
        try:
            tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(timeout=120)
    try:
        if thread.is_alive() or errors:
            pytest.fail(f"TransferQueue did not start on the local Ray instance: {errors or 'timeout (120 s)'}")
        yield
    finally:
        try:
            tq.close()
        finally:
            ray.shutdown()
            if own_pg:
                dist.destroy_process_group()
            mp.undo()


def _config(tiny_vl_dir, overrides=(), method="cepo"):
    return compose_method_config(method, [
        f"actor_rollout_ref.model.path={tiny_vl_dir}",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.actor.use_torch_compile=false",
        f"actor_rollout_ref.rollout.n={N}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO}",
        *overrides,
    ])


def _worker_group(cfg, model):
    """verl's real actor worker/engine call path on CPU, behind a 2-rank in-process WorkerGroup."""
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.single_controller.ray.base import func_generator
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    model_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    engine_cfg = actor_cfg.engine  # assigned as ActorRolloutRefWorker.init_model does
    rollout = cfg.actor_rollout_ref.rollout
    engine_cfg.use_dynamic_bsz = cfg.actor_rollout_ref.actor.use_dynamic_bsz
    engine_cfg.infer_max_token_len_per_gpu = rollout.log_prob_max_token_len_per_gpu
    engine_cfg.infer_micro_batch_size_per_gpu = rollout.log_prob_micro_batch_size_per_gpu
    engine_cfg.use_remove_padding = model_cfg.get("use_remove_padding", False)
    engine = FSDPEngineWithLMHead(model_cfg, engine_cfg, actor_cfg.optim, actor_cfg.checkpoint)
    engine.module = model  # FSDPEngine.initialize() would FSDP-wrap it on a CUDA mesh
    engine._autocast_dtype = torch.float32

    training = object.__new__(TrainingWorker)
    training.model_config, training.engine_config, training.engine = model_cfg, engine_cfg, engine
    training.device_name, training.flops_counter, training.loss_fn = "cpu", None, None

    def rank(r):
        worker = object.__new__(ActorRolloutRefWorker)
        worker.actor, worker.enable_routing_replay = training, False
        worker._Worker__dispatch_dp_rank = {"actor": r}
        worker._Worker__collect_dp_rank = {"actor": True}
        return worker

    class LocalWorkerGroup(WorkerGroup):
        def __init__(self, workers):
            super().__init__(resource_pool=None)
            self._workers = workers
            self.log_prob_calls: list[tuple[str, list[str]]] = []  # (partition, keys) per compute_log_prob
            self._bind_worker_method(ActorRolloutRefWorker, func_generator)
            bound = self.compute_log_prob

            def compute_log_prob(meta, **kwargs):
                self.log_prob_calls.append((meta.partition_id, list(meta.keys)))
                return bound(meta, **kwargs)

            self.compute_log_prob = compute_log_prob

        def _query_dispatch_info(self, mesh_name):
            return [w._query_dispatch_info(mesh_name) for w in self._workers]

        def _query_collect_info(self, mesh_name):
            return [w.query_collect_info(mesh_name) for w in self._workers]

        def _run(self, worker, method_name, args, kwargs):
            def get(x):
                return ray.get(x) if isinstance(x, ray.ObjectRef) else x

            out = getattr(worker, method_name)(*[get(a) for a in args], **{k: get(v) for k, v in kwargs.items()})
            return ray.put(out)

        def execute_all(self, method_name, *args, **kwargs):  # one call per rank, like RayWorkerGroup
            return [self._run(w, method_name, [a[i] for a in args], {k: v[i] for k, v in kwargs.items()})
                    for i, w in enumerate(self._workers)]

        def execute_rank_zero(self, method_name, *args, **kwargs):
            return self._run(self._workers[0], method_name, args, kwargs)

    return LocalWorkerGroup([rank(r) for r in range(DP)])


def _put_rollouts(processor, tokenizer, geo, prefix):
    """Two prompts x N rollouts into the ``train`` partition, exactly as verl's v1 agent loop stores them."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    agent = types.SimpleNamespace(processor=processor, tokenizer=tokenizer, _get_mm_processor_kwargs=lambda *a: {})
    keys, fields, tags, rows = [], [], [], []
    for p, (problem, image, answer) in enumerate(geo):
        raw_prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": problem}]}]
        text = processor.apply_chat_template(raw_prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        for s in range(N):
            response = RESPONSES[p][s].replace("ANS", answer)
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out = AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids,
                                  response_mask=[1] * len(response_ids), response_logprobs=[-1.0] * len(response_ids),
                                  multi_modal_data={"images": [image]}, reward_score=SCORES[p][s], num_turns=2,
                                  metrics=AgentLoopMetrics())
            input_ids = torch.tensor(prompt_ids + response_ids)
            mm = AgentLoopWorker._compute_multi_modal_inputs(agent, out, input_ids)
            position_ids = AgentLoopWorker._compute_position_ids(
                agent, input_ids.unsqueeze(0), torch.ones_like(input_ids).unsqueeze(0), mm).squeeze(0)
            field = out.as_dict()
            field.pop("multi_modal_data", None)
            uid = f"{prefix}{p}"
            field.update(uid=uid, session_id=s, raw_prompt=raw_prompt, reward_model={"ground_truth": answer},
                         data_source="geo3k", global_steps=1)
            field.update(loss_mask=field["response_mask"], input_ids=input_ids, position_ids=position_ids,
                         multi_modal_inputs=mm)
            keys.append(f"{uid}_{s}_0")
            fields.append(field)
            n_tok = len(prompt_ids) + len(response_ids)
            tags.append({"status": "success", "prompt_len": len(prompt_ids), "response_len": len(response_ids),
                         "seq_len": n_tok, "global_steps": 1})
            rows.append({"uid": uid, "messages": raw_prompt, "image": image, "answer": answer, "text": response,
                         "response_ids": torch.tensor(response_ids), "score": SCORES[p][s]})
    meta = tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields), tags=tags)
    meta.tags = tags
    return meta, rows


def _trainer(cfg, processor, wg, global_steps):
    trainer = object.__new__(CEPOTrainerSync)
    trainer.config, trainer.tokenizer, trainer.processor = cfg, processor.tokenizer, processor
    trainer.global_steps, trainer.actor_rollout_wg = global_steps, wg
    trainer.cepo, trainer._cepo_teacher_seconds = cepo_config_from(cfg), None
    return trainer


def _padded(rows_of_tensors):
    return torch.nested.as_nested_tensor(list(rows_of_tensors), layout=torch.jagged).to_padded_tensor(0.0)


@pytest.fixture(scope="module")
def geo():
    from cepo.testing import make_geo3k_like

    ds = make_geo3k_like(2)
    return [(r["problem"].replace("<image>", ""), r["images"][0], str(r["answer"])) for r in ds]


def test_teacher_pass_and_token_advantages_through_verl_workers(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    cfg = _config(tiny_vl_dir)
    wg = _worker_group(cfg, vl_model)
    meta, rows = _put_rollouts(vl_processor, vl_processor.tokenizer, geo, "a")
    trainer = _trainer(cfg, vl_processor, wg, global_steps=1)
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
    resp = _padded(r["response_ids"] for r in rows).long()
    mask = _padded(torch.ones_like(r["response_ids"]) for r in rows).long()
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
    torch.testing.assert_close(_padded(out[POS_KEY].unbind()), direct_pos, rtol=1e-4, atol=1e-4)
    direct_neg = teacher_logprobs(vl_model, build_teacher_inputs(vl_processor, messages[:N], neg[:N], resp[:N],
                                                                 mask[:N], images=images[:N]))
    got_neg = _padded(out[NEG_KEY].unbind())
    torch.testing.assert_close(got_neg[:N], direct_neg, rtol=1e-4, atol=1e-4)
    assert (got_neg[N:] == 0).all()

    # (iii) final advantages = compute_token_advantages("cepo") on Eq. 1 and the same log-probs
    scores = torch.tensor([r["score"] for r in rows])
    seq_adv = group_advantages(scores, [r["uid"] for r in rows])
    inputs = CreditInputs(advantages=seq_adv, response_mask=mask, lam=0.5, eps_w=trainer.cepo.eps_w,
                          logp_student=_padded(out["old_log_probs"].unbind()), logp_pos=_padded(out[POS_KEY].unbind()),
                          logp_neg=got_neg, has_negative=torch.tensor(has_neg))
    expected, _ = compute_token_advantages("cepo", inputs)
    advantages = _padded(out["advantages"].unbind())
    torch.testing.assert_close(advantages, expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_padded(out["returns"].unbind()), advantages)
    assert seq_adv[N:].abs().sum() > 0 and not torch.allclose(advantages, seq_adv.unsqueeze(-1) * mask)

    # (iv) group 1 has no rejected rollout: its rows get the RLSD token advantages
    rlsd, _ = compute_token_advantages("rlsd", inputs)
    torch.testing.assert_close(advantages[N:], rlsd[N:].float(), rtol=1e-5, atol=1e-6)
    assert metrics["cepo/lambda"] == 0.5 and metrics["cepo/has_negative_frac"] == 0.5
    assert metrics["cepo/teacher_time_s"] > 0 and "actor/entropy" in metrics


def test_lambda_zero_skips_the_teacher_call(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    cfg = _config(tiny_vl_dir)
    wg = _worker_group(cfg, vl_model)
    meta, rows = _put_rollouts(vl_processor, vl_processor.tokenizer, geo, "b")
    warmup = cepo_config_from(cfg).warmup_steps
    trainer = _trainer(cfg, vl_processor, wg, global_steps=warmup + 1)  # 0-based step = warmup: lambda = 0
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)

    # (v) only the student pass reached the workers; the advantages are verl's GRPO (Eq. 1) ones
    assert [partition for partition, _ in wg.log_prob_calls] == ["train"]
    assert metrics["cepo/lambda"] == 0.0 and "cepo/teacher_time_s" not in metrics
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages"])
    assert POS_KEY not in tq.kv_batch_get(keys=meta.keys[:1], partition_id="train").keys()  # noqa: SIM118 (TensorDict)
    mask = _padded(torch.ones_like(r["response_ids"]) for r in rows)
    seq_adv = group_advantages(torch.tensor([r["score"] for r in rows]), [r["uid"] for r in rows])
    torch.testing.assert_close(_padded(out["advantages"].unbind()), seq_adv.unsqueeze(-1) * mask,
                               rtol=1e-5, atol=1e-6)


def test_zero_advantage_group_gets_no_teacher_rows(verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo, monkeypatch):
    """A group whose rewards are all equal has A = 0, so A_t = 0 whatever the teacher says: no teacher rows."""
    import sys

    monkeypatch.setattr(sys.modules[__name__], "SCORES", [SCORES[0], [1.0] * N])
    cfg = _config(tiny_vl_dir)
    wg = _worker_group(cfg, vl_model)
    meta, _ = _put_rollouts(vl_processor, vl_processor.tokenizer, geo, "c")
    trainer = _trainer(cfg, vl_processor, wg, global_steps=1)
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)

    teacher_keys = wg.log_prob_calls[1][1]
    assert {k.split("_")[0] for k in teacher_keys if k.endswith(("::pos", "::neg"))} == {"c0"}
    assert sum(k.endswith("::pos") for k in teacher_keys) == N and sum(k.endswith("::neg") for k in teacher_keys) == N
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages"])
    advantages = _padded(out["advantages"].unbind())
    assert torch.all(advantages[N:] == 0) and advantages[:N].abs().sum() > 0


@pytest.mark.parametrize("method", ["opsd", "sdpo", "conspo"])
def test_loss_level_methods_through_verl_workers(method, verl_cpu, tiny_vl_dir, vl_processor, vl_model, geo):
    """OPSD / SDPO / ConSPO through the same two overrides: the teacher rows their declarations ask for (OPSD: r+ on
    every rollout; SDPO: a successful peer rollout; ConSPO: none) are scored by the workers, and the advantages equal
    an independent computation (cepo.teacher forwards + cepo.algorithms) on the same rollouts."""
    cfg = _config(tiny_vl_dir, method=method)
    wg = _worker_group(cfg, vl_model)
    meta, rows = _put_rollouts(vl_processor, vl_processor.tokenizer, geo, method)
    trainer = _trainer(cfg, vl_processor, wg, global_steps=1)
    metrics: dict = {}
    meta = trainer._compute_advantage(trainer._compute_old_log_prob(meta, metrics), metrics)

    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["advantages", "old_log_probs"])
    advantages, student = _padded(out["advantages"].unbind()), _padded(out["old_log_probs"].unbind())
    resp = _padded(r["response_ids"] for r in rows).long()
    mask = _padded(torch.ones_like(r["response_ids"]) for r in rows).long()
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
    stored = _padded(tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=[key])[key].unbind())
    # the advantages are the distillation advantages of the stored teacher and student log-probs ...
    inputs = CreditInputs(group_advantages(scores, groups), mask, 0.5, 0.5, logp_student=student, logp_pos=stored,
                          logp_demo=stored, has_teacher=torch.tensor(has), options=options)
    expected, _ = compute_token_advantages(method, inputs)
    torch.testing.assert_close(advantages, expected.float(), rtol=1e-5, atol=1e-6)
    assert advantages.abs().sum() > 0
    # ... and the stored teacher log-probs are the method's teacher contexts (hints, template, image), scored
    # directly. Group 0's rows only: the workers' log-probs of group 1, whose 4 rows are all 6 tokens long, are
    # off on this CPU path for the student pass too (tests/verl/test_verl_equal_length.py).
    direct = teacher_logprobs(vl_model, build_teacher_inputs(vl_processor, messages[:N], hints[:N], resp[:N],
                                                             mask[:N], images[:N], template=template))
    teacher_rows = torch.tensor(has[:N])
    torch.testing.assert_close(stored[:N][teacher_rows], direct[teacher_rows], rtol=1e-4, atol=1e-4)
