"""The CPU harness of the verl worker-path tests (test_verl_trainer_cpu.py, test_verl_equal_length.py).

verl's real ``ActorRolloutRefWorker.compute_log_prob`` -> ``TrainingWorker.infer_batch`` -> ``FSDPEngineWithLMHead``
call path on the tiny Qwen3-VL, behind an in-process 2-rank ``WorkerGroup``, reading and writing the real
TransferQueue that the ``verl_cpu`` fixture (conftest.py) starts; rollouts are put as verl's v1 agent loop puts them.
What is doubled, and why: test_verl_trainer_cpu.py's module docstring.
"""

from __future__ import annotations

import functools
import types

import torch

from cepo.integrations.verl.trainer import CEPOTrainerSync
from cepo.recipes import cepo_config_from, compose_method_config

N = 4  # rollouts per prompt
MICRO = 4  # rollout.log_prob_micro_batch_size_per_gpu (static micro-batches)
DP = 2  # data-parallel ranks of the worker-group double
# group 0 has rejected rollouts (one without a boxed answer); group 1 has none (graded, all >= 0.5)
RESPONSES = [[r"so \boxed{ANS}", r"\boxed{7}", "no box at all", r"\boxed{9}"],
             [r"\boxed{ANS}", r"\boxed{ANS}", r"\boxed{ANS}.", r"\boxed{ANS}"]]
SCORES = [[1.0, 0.1, 0.0, 0.1], [1.0, 0.9, 1.0, 0.9]]


def config(tiny_vl_dir, overrides=(), method="cepo", use_remove_padding=False):
    return compose_method_config(method, [
        f"actor_rollout_ref.model.path={tiny_vl_dir}",
        f"actor_rollout_ref.model.use_remove_padding={str(use_remove_padding).lower()}",
        "actor_rollout_ref.actor.use_torch_compile=false",
        f"actor_rollout_ref.rollout.n={N}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO}",
        *overrides,
    ])


def worker_group(cfg, model, worker_cls=None, dp=DP, optimizer=None):
    """verl's real actor worker/engine call path on CPU, behind a ``dp``-rank in-process WorkerGroup of ``worker_cls``
    (verl's ``ActorRolloutRefWorker`` by default). With ``optimizer`` (over ``model``'s trainable parameters) the
    engine can also train: verl's ``update_actor`` -> ``train_mini_batch`` -> ``train_batch`` with ``ppo_loss``."""
    import ray
    from verl.single_controller.base.worker_group import WorkerGroup
    from verl.single_controller.ray.base import func_generator
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker
    from verl.workers.utils.losses import ppo_loss

    worker_cls = worker_cls or ActorRolloutRefWorker

    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    model_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    engine_cfg = actor_cfg.engine  # assigned as ActorRolloutRefWorker.init_model does
    rollout = cfg.actor_rollout_ref.rollout
    engine_cfg.use_dynamic_bsz = cfg.actor_rollout_ref.actor.use_dynamic_bsz
    engine_cfg.infer_max_token_len_per_gpu = rollout.log_prob_max_token_len_per_gpu
    engine_cfg.infer_micro_batch_size_per_gpu = rollout.log_prob_micro_batch_size_per_gpu
    engine_cfg.use_remove_padding = model_cfg.get("use_remove_padding", False)
    engine_cfg.micro_batch_size_per_gpu = cfg.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu
    engine_cfg.max_token_len_per_gpu = cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu
    engine = FSDPEngineWithLMHead(model_cfg, engine_cfg, actor_cfg.optim, actor_cfg.checkpoint)
    engine.module = model  # FSDPEngine.initialize() would FSDP-wrap it on a CUDA mesh
    engine._autocast_dtype = torch.float32

    training = object.__new__(TrainingWorker)
    training.model_config, training.engine_config, training.engine = model_cfg, engine_cfg, engine
    training.device_name = "cpu"
    # verl's FlopsCounter needs a GPU's peak; a zero estimate keeps the metric verl's trainer reads (perf/mfu)
    training.flops_counter = types.SimpleNamespace(estimate_flops=lambda *a, **k: (0.0, 1.0))
    training.loss_fn = functools.partial(ppo_loss, config=actor_cfg)  # as ActorRolloutRefWorker.init_model sets it
    training.profiler = types.SimpleNamespace(rank=0, step=lambda: None, check_enable=lambda: False,  # verl's: off
                                              check_this_step=lambda: False, check_this_rank=lambda: False)
    if optimizer is not None:
        engine.optimizer = optimizer
        engine.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)

    def rank(r):
        worker = object.__new__(worker_cls)
        worker.actor, worker.enable_routing_replay = training, False
        worker._Worker__dispatch_dp_rank = {"actor": r}
        worker._Worker__collect_dp_rank = {"actor": True}
        return worker

    class LocalWorkerGroup(WorkerGroup):
        def __init__(self, workers):
            super().__init__(resource_pool=None)
            self._workers = workers
            self.log_prob_calls: list[tuple[str, list[str]]] = []  # (partition, keys) per compute_log_prob
            self._bind_worker_method(worker_cls, func_generator)
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

    return LocalWorkerGroup([rank(r) for r in range(dp)])


def put_rollouts(processor, tokenizer, geo, prefix, responses=RESPONSES, scores=SCORES, chat_template_kwargs=None):
    """One rollout per (prompt, response) into the ``train`` partition, exactly as verl's v1 agent loop stores them:
    ``AgentLoopWorkerTQ._agent_loop_postprocess`` fields and ``{uid}_{session}_{index}`` keys, one ``kv_batch_put``
    per session. Returns the batch's ``KVBatchMeta`` and the rows for independent checks. A text model: ``processor``
    is ``None`` (verl's, for a tokenizer-only model) and each ``geo`` row's image is ``None``; its prompt is rendered
    with ``chat_template_kwargs`` (verl's ``data.apply_chat_template_kwargs``)."""
    import transfer_queue as tq
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput, AgentLoopWorker
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    agent = types.SimpleNamespace(processor=processor, tokenizer=tokenizer, _get_mm_processor_kwargs=lambda *a: {})
    keys, tags, rows = [], [], []
    for p, (problem, image, answer) in enumerate(geo):
        if image is None:
            raw_prompt = [{"role": "user", "content": problem}]
            prompt_ids = list(tokenizer.apply_chat_template(raw_prompt, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False, **(chat_template_kwargs or {})))
        else:
            raw_prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": problem}]}]
            text = processor.apply_chat_template(raw_prompt, add_generation_prompt=True, tokenize=False)
            prompt_ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        for s, (response, score) in enumerate(zip(responses[p], scores[p], strict=True)):
            response = response.replace("ANS", answer)
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out = AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids,
                                  response_mask=[1] * len(response_ids), response_logprobs=[-1.0] * len(response_ids),
                                  multi_modal_data={"images": [image]} if image is not None else {},
                                  reward_score=score, num_turns=2,
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
            n_tok = len(prompt_ids) + len(response_ids)
            tag = {"status": "success", "prompt_len": len(prompt_ids), "response_len": len(response_ids),
                   "seq_len": n_tok, "global_steps": 1}
            key = f"{uid}_{s}_0"
            tq.kv_batch_put(keys=[key], partition_id="train", fields=list_of_dict_to_tensordict([field]), tags=[tag])
            keys.append(key)
            tags.append(tag)
            rows.append({"uid": uid, "messages": raw_prompt, "image": image, "answer": answer, "text": response,
                         "response_ids": torch.tensor(response_ids), "score": score, "seq_len": n_tok})
    return tq.KVBatchMeta(keys=keys, tags=tags, partition_id="train"), rows


def trainer(cfg, processor, wg, global_steps):
    trainer = object.__new__(CEPOTrainerSync)
    trainer.config, trainer.tokenizer, trainer.processor = cfg, processor.tokenizer, processor
    trainer.global_steps, trainer.actor_rollout_wg = global_steps, wg
    trainer.cepo, trainer._cepo_teacher_seconds = cepo_config_from(cfg), None
    return trainer


def padded(rows_of_tensors):
    return torch.nested.as_nested_tensor(list(rows_of_tensors), layout=torch.jagged).to_padded_tensor(0.0)
