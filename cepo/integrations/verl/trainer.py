"""verl v1 trainer with the teacher passes of RLSD, CEPO, OPSD and SDPO (``trainer.v1.trainer_mode=cepo_sync``).

Target: verl 0.9.x's recommended v1 trainer (``trainer.use_v1=True``, the default; the legacy
``RayPPOTrainer`` is deprecated). :class:`CEPOTrainerSync` is verl's ``PPOTrainerSync`` with two
overrides around its ``_step_once`` pipeline (reward -> balance -> old log-probs -> advantage -> update):

* ``_compute_old_log_prob``: after the student pass (P_S = ``old_log_probs``), the method's declaration
  (``cepo.algorithms.plan_teacher_passes``) says which teacher contexts each rollout needs (r+, r-, a successful
  peer rollout); the rows are built by ``teacher_batch`` and scored **in one ``actor_rollout_wg.compute_log_prob``
  call** on the actor's own FSDP workers (same sharding, micro-batching, dynamic batch and remove-padding as the
  old log-probs; the teacher weights are the actor's, with the LoRA adapter on). Results go back to the student
  rows as ``teacher_{pos,neg,demo}_log_probs``, ``cepo_has_negative`` and ``cepo_has_teacher``. Skipped when the
  method needs no teacher this step (GRPO, ConSPO; RLSD/CEPO once lambda = 0).
* ``_compute_advantage``: verl's own advantage (our registered estimators = Eq. 1), then the method's token
  advantages (``credit.apply_token_credit``: Eq. 4/7, the sampled-token distillation advantage, or ConSPO's
  score gradient), written back as ``advantages``.

Teacher rows live in their own TransferQueue partition (:data:`TEACHER_PARTITION`) with the same
per-sample fields as rollout samples, padded with 2-token no-op rows to a multiple of dp x
``rollout.log_prob_micro_batch_size_per_gpu`` (dp alone with dynamic batching), and are cleared after the
call. ``tests/verl/test_verl_trainer_cpu.py`` runs both overrides on CPU against real TransferQueue and
verl's worker/engine call path (see docs/verl.md for what stays GPU-only).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_from_nested, response_to_nested

from cepo.algorithms import (
    get_method,
    group_advantages,
    loss_teacher,
    pg_mean_over_teacher_rows,
    plan_teacher_passes,
    teacher_passes,
)
from cepo.algorithms.metrics import logged_metrics
from cepo.config import CEPOConfig
from cepo.integrations.verl.credit import (
    HAS_NEG_KEY,
    HAS_TEACHER_KEY,
    KIND_KEYS,
    apply_token_credit,
    ground_truths_of,
)
from cepo.integrations.verl.distill_worker import (
    TEACHER_IDS_KEY,
    TEACHER_POSITIONS_KEY,
    CEPOActorRolloutRefWorker,
    WorkerDistill,
)
from cepo.integrations.verl.estimators import cepo_trainer_advantage  # also registers our estimators
from cepo.integrations.verl.plugin import require_workers_fix
from cepo.integrations.verl.teacher_batch import build_teacher_rows, nested_row_fields
from cepo.recipes import TRAINER_MODE, cepo_config_from
from cepo.rewards import extract_answer

TEACHER_PARTITION = "cepo_teacher"


def _as_list(values: Any) -> list[Any]:
    if hasattr(values, "tolist") and not isinstance(values, list):
        return values.tolist()
    return list(values)


def _padding_row(template: dict[str, Any], pad_token_id: int) -> dict[str, Any]:
    """A 2-token no-op teacher row (no image, response masked out) with the template's field layout.

    Fills the teacher batch up to the multiple the workers need, like verl's own
    ``upsample_batch_to_divisible_size`` does for rollout batches, without paying a full teacher forward.
    """
    ids = torch.full((2,), pad_token_id, dtype=torch.long)
    positions = torch.arange(2, dtype=torch.long)
    if template["position_ids"].dim() == 2:
        positions = positions.unsqueeze(0).expand(template["position_ids"].shape[0], -1).clone()
    mask = torch.zeros(1, dtype=torch.long)
    return {
        "prompts": ids[:1].clone(),
        "responses": ids[1:].clone(),
        "response_mask": mask,
        "loss_mask": mask.clone(),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "position_ids": positions,
        "multi_modal_inputs": {},
    }


@register_trainer(TRAINER_MODE)
class CEPOTrainerSync(PPOTrainerSync):
    """verl's synchronous v1 trainer plus the CEPO/RLSD teacher passes (see the module docstring)."""

    def __init__(self, config: Any) -> None:
        model = config.actor_rollout_ref.model
        require_workers_fix(str(model.path), model.get("external_lib", None))  # before any worker starts
        super().__init__(config)
        self.cepo: CEPOConfig = cepo_config_from(config)
        self._cepo_teacher_seconds: float | None = None

    # -- OPSD / SDPO on the actor workers (cepo.integrations.verl.distill_worker) ---------------------
    def _init_resource_pool_mgr(self) -> None:
        """verl's mapping, with cepo's actor worker (fixed / EMA teachers, the micro-batch teacher of top-k / full
        mode) in place of verl's ``ActorRolloutRefWorker``, as verl's ``trainer_separate_async`` swaps in its own."""
        import ray
        from verl.trainer.ppo.utils import Role

        super()._init_resource_pool_mgr()
        for role in (Role.ActorRolloutRef, Role.ActorRollout, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(CEPOActorRolloutRefWorker)

    def _load_checkpoint(self) -> Any:
        """Before verl loads a checkpoint (the last step of its set-up, once the workers exist): send the workers
        OPSD's / SDPO's teacher settings (``cepo_setup``), so that a resumed EMA teacher is loaded into them."""
        cepo = cepo_config_from(self.config)
        if get_method(cepo.method).distill_teacher is not None:
            self.actor_rollout_wg.cepo_setup(WorkerDistill.from_cepo(cepo))
        return super()._load_checkpoint()

    def _teacher_in_loss(self) -> bool:
        """OPSD / SDPO in ``topk`` / ``full`` mode: the divergence is a loss term and the teacher's forward runs in each
        loss micro-batch on the workers (the trainer only writes the teacher sequences)."""
        return loss_teacher(self.cepo.method, self.cepo.distill.mode) is not None

    # ----------------------------------------------------------------------------------------------
    def _cepo_step(self) -> int:
        """0-based training step for the lambda schedule (verl's ``global_steps`` starts at 1)."""
        return max(0, int(self.global_steps) - 1)

    def _cepo_passes(self) -> tuple[str, ...]:
        return teacher_passes(self.cepo.method, self.cepo.schedule(self._cepo_step()))

    def _chat_template_kwargs(self) -> dict[str, Any]:
        """verl's ``data.apply_chat_template_kwargs``: what the agent loop rendered the student prompt with."""
        from omegaconf import OmegaConf

        kwargs = self.config.data.get("apply_chat_template_kwargs", None)
        return dict(OmegaConf.to_container(kwargs, resolve=True)) if kwargs else {}

    def _rope_index_fn(self) -> Any:
        return getattr(self.processor, "get_rope_index", None) if self.processor is not None else None

    def _dp_size(self) -> int:
        info = self.actor_rollout_wg._dispatch_info.get("actor")
        if info is None:
            info = self.actor_rollout_wg._query_dispatch_info("actor")
            self.actor_rollout_wg._dispatch_info["actor"] = info
        return max(info) + 1

    def _teacher_batch_multiple(self) -> int:
        """Row count the teacher batch must be a multiple of for the actor's ``compute_log_prob``.

        The dispatcher splits the batch evenly over the data-parallel ranks, and without dynamic batching
        each rank's share must also split into whole micro-batches of
        ``rollout.log_prob_micro_batch_size_per_gpu`` (verl's ``prepare_micro_batches`` asserts it).
        """
        dp = self._dp_size()
        rollout = self.config.actor_rollout_ref.rollout
        if rollout.get("log_prob_use_dynamic_bsz", False):
            return dp
        micro = rollout.get("log_prob_micro_batch_size_per_gpu", None) or 1
        return dp * int(micro)

    # ----------------------------------------------------------------------------------------------
    def _compute_old_log_prob(self, batch: Any, metrics: dict) -> Any:
        batch = super()._compute_old_log_prob(batch, metrics)
        kinds = self._cepo_passes()
        self._cepo_teacher_seconds = None
        if not kinds:
            return batch
        start = time.perf_counter()
        fields = ["uid", "responses", "response_mask", "rm_scores", "raw_prompt", "reward_model", "multi_modal_inputs"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        n = len(batch)
        is_pad = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        real = [i for i in range(n) if not is_pad[i]]
        responses = [data["responses"][i] for i in range(n)]
        scores = [float(data["rm_scores"][real[j]].sum()) for j in range(len(real))]
        uids = [str(u) for u in _as_list(data["uid"])]
        uids = [uids[i] for i in real]
        raw_prompts = list(data["raw_prompt"])
        reward_model = list(data["reward_model"])
        mm_inputs = list(data["multi_modal_inputs"]) if "multi_modal_inputs" in data.keys() else [None] * n  # noqa: SIM118
        texts = self.tokenizer.batch_decode([responses[i].tolist() for i in real], skip_special_tokens=True)
        gts = ground_truths_of([reward_model[i] for i in real], labels=[f"rollout {batch.keys[i]}" for i in real])
        norm = bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True))
        plan = plan_teacher_passes(
            self.cepo.method, self.cepo.schedule(self._cepo_step()), range(len(real)),
            group_advantages(torch.tensor(scores), uids, norm_by_std=norm), scores, uids, gts,
            answers=[extract_answer(t) for t in texts], texts=texts, neg_threshold=self.cepo.neg_threshold,
            require_answer=self.cepo.neg_requires_answer, negative_reference=self.cepo.negative_reference,
            success_threshold=self.cepo.distill.success_threshold,
        )
        # every teacher context in one batch: a single call to the actor workers
        jobs = [(real[j], kind, hint) for kind, j, hint in plan.jobs]  # (batch row, kind, hint)
        if self._teacher_in_loss():
            self._write_teacher_sequences(batch, jobs, responses, raw_prompts, mm_inputs, kinds, plan, real)
            frac = sum(bool(flag) for flag in plan.has_teacher) / max(1, len(real))
            metrics.update(logged_metrics(self.cepo.method, {"cepo/has_teacher_frac": frac}))
            return batch
        logps = self._teacher_log_probs(batch, jobs, responses, raw_prompts, mm_inputs, kinds) if jobs else []

        rows = {kind: [torch.zeros(responses[i].numel(), dtype=torch.float32) for i in range(n)] for kind in kinds}
        for (i, kind, _), lp in zip(jobs, logps, strict=True):
            if lp.numel() != responses[i].numel():
                raise RuntimeError(f"teacher log-probs of rollout {batch.keys[i]} have {lp.numel()} tokens, "
                                   f"the response has {responses[i].numel()}")
            rows[kind][i] = lp.float().flatten()
        write: dict[str, torch.Tensor] = {
            KIND_KEYS[kind]: torch.nested.as_nested_tensor(values, layout=torch.jagged) for kind, values in rows.items()
        }
        for key, values in ((HAS_NEG_KEY, plan.has_negative), (HAS_TEACHER_KEY, plan.has_teacher)):
            flags = torch.zeros(n, dtype=torch.bool)
            for j, i in enumerate(real):
                flags[i] = bool(values[j])
            write[key] = flags
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(write, batch_size=n))
        self._cepo_teacher_seconds = time.perf_counter() - start
        return batch

    def _teacher_rows(
        self, jobs: list[tuple[int, str, str]], responses: list[Any], raw_prompts: list[Any], mm_inputs: list[Any],
        kinds: tuple[str, ...],
    ) -> list[Any]:
        """The teacher rows ``[student prompt + hint] + response`` of every (row, kind, hint) job
        (:func:`~cepo.integrations.verl.teacher_batch.build_teacher_rows`)."""
        if not jobs:
            return []
        return build_teacher_rows(
            self.processor if self.processor is not None else self.tokenizer,
            [raw_prompts[i] for i, _, _ in jobs], [hint for _, _, hint in jobs], [responses[i] for i, _, _ in jobs],
            [mm_inputs[i] for i, _, _ in jobs], self.cepo.template_for(kinds), self.cepo.teacher_sees_image,
            self._rope_index_fn(), self.cepo.teacher_max_prompt_length, row_ids=[i for i, _, _ in jobs],
            chat_template_kwargs=self._chat_template_kwargs(),
        )

    def _write_teacher_sequences(
        self, batch: Any, jobs: list[tuple[int, str, str]], responses: list[Any], raw_prompts: list[Any],
        mm_inputs: list[Any], kinds: tuple[str, ...], plan: Any, real: list[int],
    ) -> None:
        """Top-k / full mode: put each rollout's teacher sequence ``[teacher prompt | response]`` and its positions
        beside it in TransferQueue (the workers run the teacher's forward in each loss micro-batch); a row without a
        teacher carries its own sequence (masked out of the loss) and ``cepo_has_teacher = False``."""
        n = len(batch)
        own = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                              select_fields=["input_ids", "position_ids"])
        ids = [own["input_ids"][i] for i in range(n)]
        positions = [own["position_ids"][i] for i in range(n)]
        built = self._teacher_rows(jobs, responses, raw_prompts, mm_inputs, kinds)
        for (i, _, _), row in zip(jobs, built, strict=True):
            ids[i], positions[i] = row.input_ids, row.position_ids
        flags = torch.zeros(n, dtype=torch.bool)
        for j, i in enumerate(real):
            flags[i] = bool(plan.has_teacher[j])
        write = {
            TEACHER_IDS_KEY: torch.nested.as_nested_tensor(ids, layout=torch.jagged),
            TEACHER_POSITIONS_KEY: torch.nested.as_nested_tensor(positions, layout=torch.jagged),
            HAS_TEACHER_KEY: flags,
        }
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(write, batch_size=n))
        self._cepo_teacher_seconds = None

    def _teacher_log_probs(
        self, batch: Any, jobs: list[tuple[int, str, str]], responses: list[Any], raw_prompts: list[Any],
        mm_inputs: list[Any], kinds: tuple[str, ...],
    ) -> list[torch.Tensor]:
        """Score every (row, kind, hint) job on the actor workers in one ``compute_log_prob`` call (under a fixed or EMA
        teacher's weights: the worker's ``cepo_teacher_log_prob``)."""
        rows = [nested_row_fields(row) for row in self._teacher_rows(jobs, responses, raw_prompts, mm_inputs, kinds)]
        keys = [f"{batch.keys[i]}::{kind}" for i, kind, _ in jobs]
        multiple = self._teacher_batch_multiple()
        pad_token = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        while len(rows) % multiple:
            rows.append(_padding_row(rows[0], pad_token))
            keys.append(f"{keys[0]}::pad{len(keys)}")
        tags = [{"status": "success", "seq_len": int(r["input_ids"].numel())} for r in rows]
        meta = tq.kv_batch_put(keys=keys, partition_id=TEACHER_PARTITION, fields=list_of_dict_to_tensordict(rows),
                               tags=tags)
        meta.extra_info.update({
            "calculate_entropy": False,
            "compute_loss": False,
            "temperature": self.config.actor_rollout_ref.rollout.temperature,
        })
        if self.cepo.distill.teacher != "live" and get_method(self.cepo.method).distill_teacher is not None:
            self.actor_rollout_wg.cepo_teacher_log_prob(meta)
        else:
            self.actor_rollout_wg.compute_log_prob(meta)
        out = tq.kv_batch_get(keys=keys, partition_id=TEACHER_PARTITION, select_fields=["log_probs", "response_mask"])
        # the worker's log_probs cover the whole sequence (shifted by one); keep the response part
        response_logps = response_from_nested(out["log_probs"], out["response_mask"])
        logps = [response_logps[k] for k in range(len(jobs))]
        tq.kv_clear(keys=keys, partition_id=TEACHER_PARTITION)
        return logps

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        with cepo_trainer_advantage():  # our estimators give Eq. 1; the method's token credit is applied below
            batch = super()._compute_advantage(batch, metrics)
        kinds = self._cepo_passes()
        step = self._cepo_step()
        spec = get_method(self.cepo.method)
        if not kinds and spec.sequence_advantage == "grpo":
            metrics.update(logged_metrics(self.cepo.method, {"cepo/lambda": float(self.cepo.schedule(step))}))
            return batch
        in_loss = self._teacher_in_loss()
        scored = () if in_loss else kinds  # top-k / full mode scores no teacher log-probs (the workers' loss does)
        fields = ["advantages", "returns", "response_mask", "old_log_probs", *(KIND_KEYS[k] for k in scored)]
        flags = [HAS_NEG_KEY, HAS_TEACHER_KEY] if scored else ([HAS_TEACHER_KEY] if kinds else [])
        if spec.sequence_advantage == "conspo":
            fields += ["rm_scores", "uid"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields + flags)
        response_mask = data["response_mask"]
        non_tensor = {key: np.asarray(data.pop(key).tolist(), dtype=bool) for key in flags}
        if "uid" in fields:
            non_tensor["uid"] = np.asarray([str(u) for u in _as_list(data.pop("uid"))], dtype=object)
        proto = DataProto(batch=data.to_padded_tensor(), non_tensor_batch=non_tensor)
        total = int(self.config.trainer.get("total_training_steps") or 1)
        metrics.update(apply_token_credit(proto, self.cepo, step, teacher_seconds=self._cepo_teacher_seconds,
                                          progress=step / max(1, total)))
        output = {k: response_to_nested(proto.batch[k], response_mask) for k in ("advantages", "returns")}
        if kinds and pg_mean_over_teacher_rows(self.cepo.method, self.cepo.distill.mode, self.cepo.distill.weight):
            # pure sampled-token distillation: rows without a teacher (advantage 0) leave the token-mean's denominator
            # (verl counts loss_mask), as SDPO's self_distillation_mask; the workers' loss does the same in top-k/full
            has_teacher = torch.as_tensor(non_tensor[HAS_TEACHER_KEY], dtype=torch.bool)
            loss_mask = proto.batch["response_mask"] * has_teacher.unsqueeze(-1).to(proto.batch["response_mask"].dtype)
            output["loss_mask"] = response_to_nested(loss_mask, response_mask)
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                        fields=TensorDict(output, batch_size=len(batch)))
        return batch


__all__ = ["TEACHER_PARTITION", "CEPOTrainerSync"]
