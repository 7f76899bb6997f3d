"""OPSD / SDPO as their authors run them, on verl's actor workers: fixed and EMA teachers, top-k and full divergences.

verl 0.9.1's own distillation (``verl/trainer/distillation/``) scores a *separate* teacher model once per batch and
hands the actor its top-k log-probs; OPSD and SDPO distil the policy into itself under a privileged context, with the
teacher's distribution taken in the same step as the loss. This module plugs that into verl's worker through verl's
own extension points, copying nothing of verl:

* :class:`CEPOActorRolloutRefWorker`, a subclass of verl's ``ActorRolloutRefWorker`` that ``CEPOTrainerSync`` puts in
  verl's role-worker mapping (as verl's own ``trainer_separate_async`` does with its ``DetachActorWorker``), adds two
  worker methods: :meth:`~CEPOActorRolloutRefWorker.cepo_setup` (once, after ``init_model``) and
  :meth:`~CEPOActorRolloutRefWorker.cepo_teacher_log_prob` (the sampled-token teacher pass under the teacher's
  weights), and saves/loads the EMA teacher with verl's checkpoints.
* The teacher's weights (:class:`TeacherWeights`): ``live`` = the actor now; ``fixed`` = the initial policy, i.e. the
  actor with its LoRA adapter disabled (verl's ``engine.disable_adapter()``, what verl itself uses for the reference
  policy under LoRA; OPSD ``--fixed_teacher``); ``ema`` = an exponential moving average of the trainable (LoRA)
  parameters, ``theta_T <- (1 - rate) theta_T + rate theta`` after every optimizer step (SDPO), kept as a copy of each
  rank's local shard (the update is elementwise, so it is the same on shards as on whole tensors) and swapped into the
  parameters for the teacher's forward only.
* ``cepo.distill.mode=topk|full`` (:class:`MicroBatchDistillLoss`): verl's logits-processor hook. For a micro-batch
  whose rows carry a teacher sequence (``cepo_teacher_input_ids``, written by ``CEPOTrainerSync``), the worker runs
  one teacher forward of ``[teacher prompt | response]`` under ``no_grad`` and the teacher's weights *before* the
  student's forward (so no parameter the student's graph saved is touched), then sets verl's
  ``distillation_use_topk`` flag: the engine calls the loss with the student's (temperature-scaled) logits, and the
  divergence of every response token is computed chunk by chunk
  (:func:`cepo.algorithms.packed_logits_distillation_loss`). The final loss is
  ``w * distillation + (1 - w) * verl's ppo_loss`` (``w = cepo.distill.weight``).

Aggregation (``cepo.distill.loss_agg``, :func:`cepo.algorithms.loss_aggregation`), counted over the mini-batch on
every data-parallel rank and divided by the dp size (verl's ``agg_loss`` convention: FSDP averages gradients over
ranks): ``token-mean`` divides by the response tokens of rows that have a teacher, so rows without a teacher (SDPO: no
successful peer) leave the token-mean; ``seq-mean-token-mean`` (the authors') weights each token by 1/L_r (its row's
response tokens) and divides by the mini-batch's rows, those without a teacher included (they add 0, as in SDPO's
one-row micro-batches).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.engine_workers import ActorRolloutRefWorker
from verl.workers.utils.losses import ppo_loss

from cepo.algorithms import importance_weight, loss_aggregation, packed_logits_distillation_loss, sampled_token_logps


def _device_id() -> Any:
    """The device verl's FSDP engine moves micro-batches to (its module's own ``get_device_id``)."""
    from verl.workers.engine.fsdp import transformer_impl

    return transformer_impl.get_device_id()


def _device_name() -> str:
    from verl.workers.engine.fsdp import transformer_impl

    return transformer_impl.get_device_name()

TEACHER_IDS_KEY = "cepo_teacher_input_ids"
"""Per rollout: the teacher sequence ``[teacher prompt | response]`` (1-D, jagged); the row's own ``input_ids`` when
it has no teacher (its divergence is then masked out)."""
TEACHER_POSITIONS_KEY = "cepo_teacher_position_ids"
"""Per rollout: the teacher sequence's position ids ((4, L) with M-RoPE, else (L,))."""
HAS_TEACHER_KEY = "cepo_has_teacher"
"""(B,) bool: the row has a teacher (``cepo.integrations.verl.credit.HAS_TEACHER_KEY``)."""
DISTILL_TOKENS_KEY = "cepo_distill_tokens"
"""Non-tensor entry of a mini-batch: its response tokens of rows with a teacher, summed over the dp ranks."""
DISTILL_ROWS_KEY = "cepo_distill_rows"
"""Non-tensor entry of a mini-batch: its rows (with and without a teacher), summed over the dp ranks."""
EMA_FILE = "cepo_ema_teacher_rank{rank}.pt"
"""The EMA teacher's local shards of one rank, saved beside verl's actor checkpoint."""
TEACHERS = ("live", "fixed", "ema")


@dataclass(frozen=True)
class WorkerDistill:
    """What the actor workers need of ``cepo.distill`` (sent once by ``CEPOTrainerSync`` through ``cepo_setup``)."""

    teacher: str = "live"
    ema_rate: float = 0.05
    in_loss: bool = False  # topk / full: the divergence is a loss term and the teacher runs in each micro-batch
    topk: int | None = None  # None: the full vocabulary
    support: str = "student"
    tail: bool = False
    alpha: float = 0.5
    is_clip: float | None = None
    weight: float = 1.0
    loss_agg: str = "token-mean"

    @classmethod
    def from_cepo(cls, cepo: Any) -> WorkerDistill:
        """From a ``cepo.config.CEPOConfig`` (its ``distill`` block)."""
        from cepo.algorithms import loss_teacher

        distill = cepo.distill
        in_loss = loss_teacher(cepo.method, distill.mode) is not None
        return cls(teacher=distill.teacher, ema_rate=float(distill.ema_rate), in_loss=in_loss,
                   topk=int(distill.topk) if distill.mode == "topk" else None, support=distill.support,
                   tail=bool(distill.tail), alpha=float(distill.alpha),
                   is_clip=None if distill.is_clip is None else float(distill.is_clip), weight=float(distill.weight),
                   loss_agg=str(distill.loss_agg))


def _local(param: torch.Tensor) -> torch.Tensor:
    """The rank's own storage of a parameter: a DTensor's local shard (FSDP2), else the tensor's data (FSDP1's
    sharded flat parameters, or an unsharded module)."""
    return param.to_local() if hasattr(param, "to_local") else param.data


class TeacherWeights:
    """The teacher's weights on one actor rank (see the module docstring): ``live``, ``fixed`` or ``ema``."""

    def __init__(self, engine: Any, teacher: str, ema_rate: float) -> None:
        if teacher not in TEACHERS:
            raise ValueError(f"cepo.distill.teacher must be one of {TEACHERS}, got {teacher!r}")
        self.engine, self.teacher, self.rate = engine, teacher, float(ema_rate)
        self.ema: list[torch.Tensor] | None = None
        if teacher in ("fixed", "ema") and not self.is_lora():
            raise RuntimeError(
                f"cepo.distill.teacher={teacher} needs a LoRA actor (actor_rollout_ref.model.lora_rank > 0): the "
                "teacher is the model with the adapter disabled (fixed) or an EMA of the adapter (ema), not a second "
                "full model; set a LoRA rank or cepo.distill.teacher=live"
            )
        if teacher == "ema":
            with torch.no_grad():
                self.ema = [_local(p).detach().clone() for p in self.params()]

    def is_lora(self) -> bool:
        module = self.engine.module
        inner = getattr(module, "_fsdp_wrapped_module", module)
        return hasattr(inner, "peft_config") or hasattr(module, "peft_config")

    def params(self) -> list[torch.Tensor]:
        """The trainable parameters (the LoRA tensors under LoRA), in a fixed order."""
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    @contextmanager
    def active(self) -> Iterator[None]:
        """Inside: the module computes with the teacher's weights. ``ema`` swaps the EMA into the trainable
        parameters' local storage and restores them on exit (call it outside any forward whose graph is alive)."""
        if self.teacher == "fixed":
            with self.engine.disable_adapter():
                yield
            return
        if self.teacher == "live":
            yield
            return
        assert self.ema is not None
        params = self.params()
        with torch.no_grad():
            saved = [_local(p).detach().clone() for p in params]
            for p, t in zip(params, self.ema, strict=True):
                _local(p).copy_(t.to(_local(p).device))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved, strict=True):
                    _local(p).copy_(s)

    def update(self) -> None:
        """``theta_T <- (1 - rate) theta_T + rate theta`` (after an optimizer step; no-op unless ``ema``)."""
        if self.ema is None:
            return
        with torch.no_grad():
            for t, p in zip(self.ema, self.params(), strict=True):
                t.lerp_(_local(p).detach().to(t.device, t.dtype), self.rate)

    def save(self, folder: str, rank: int) -> None:
        """Write this rank's EMA shards into ``folder`` atomically (no-op unless ``ema``)."""
        if self.ema is None:
            return
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, EMA_FILE.format(rank=rank))
        # torch.save's zip writer names the archive after the file's stem: a dot-file has none ("invalid file name")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="cepo_ema_partial_", suffix=".pt")
        os.close(fd)
        try:
            torch.save([t.detach().cpu() for t in self.ema], tmp)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self, folder: str, rank: int) -> None:
        """Read this rank's EMA shards from a checkpoint ``folder`` (no-op unless ``ema``); a checkpoint without them
        (saved by a run with another teacher) is refused."""
        if self.ema is None:
            return
        source = os.path.join(folder, EMA_FILE.format(rank=rank))
        if not os.path.isfile(source):
            raise RuntimeError(
                f"{source} is missing: this checkpoint was not saved with cepo.distill.teacher=ema, so it has no EMA "
                "teacher to resume; resume it with the teacher it was trained with, or start a new run"
            )
        saved = torch.load(source, map_location="cpu")
        if len(saved) != len(self.ema) or any(a.shape != b.shape for a, b in zip(saved, self.ema, strict=False)):
            raise RuntimeError(f"{source} does not match this actor's LoRA adapter or sharding (resume with the same "
                               "LoRA settings and the same number of GPUs)")
        with torch.no_grad():
            for t, s in zip(self.ema, saved, strict=True):
                t.copy_(s.to(t.device, t.dtype))


def _response_layout(micro_batch: Any) -> tuple[list[int], list[int], list[int]]:
    """Per row: sequence length, prompt length and response length (verl's nested ``input_ids``, ``prompts``,
    ``responses``)."""
    seq = micro_batch["input_ids"].offsets().diff().tolist()
    prompt = micro_batch["prompts"].offsets().diff().tolist()
    response = micro_batch["responses"].offsets().diff().tolist()
    return [int(x) for x in seq], [int(x) for x in prompt], [int(x) for x in response]


class MicroBatchDistillLoss:
    """verl loss function of OPSD / SDPO in ``topk`` / ``full`` mode (see the module docstring).

    Called by verl's FSDP engine three ways: as the logits processor (``student_logits=``), as the final loss
    (``model_output=``) and, for forward-only passes that ask for a loss, as verl's ``ppo_loss``.
    """

    def __init__(self, settings: WorkerDistill, actor_config: Any, teacher: TeacherWeights) -> None:
        self.settings, self.config, self.teacher = settings, actor_config, teacher
        self._teacher_logits: torch.Tensor | None = None  # (M, V) of the current micro-batch
        self._teacher_rows: torch.Tensor | None = None  # (N,) teacher row per student position
        self._pending: tuple[torch.Tensor, dict[str, Any]] | None = None

    # -- before the student's forward ----------------------------------------------------------
    @torch.no_grad()
    def teacher_forward(self, engine: Any, micro_batch: Any) -> None:
        """One forward of the micro-batch's teacher sequences under the teacher's weights; keeps the logits of the
        positions that predict response tokens' rows (as the packed (M, V) rows of the forward's output) and, for each
        student position, which teacher row predicts the same token."""
        teacher_batch = micro_batch.copy()
        teacher_batch["input_ids"] = micro_batch[TEACHER_IDS_KEY]
        teacher_batch["position_ids"] = micro_batch[TEACHER_POSITIONS_KEY]
        inputs, _ = engine.prepare_model_inputs(teacher_batch)
        autocast_dtype = getattr(engine, "_autocast_dtype", torch.bfloat16)
        autocast = (nullcontext() if autocast_dtype == torch.float32
                    else torch.autocast(device_type=_device_name(), dtype=autocast_dtype))
        with autocast, self.teacher.active():
            logits = engine.module(**inputs, use_cache=False).logits
        temperature = micro_batch["temperature"]
        seq, _, response = _response_layout(micro_batch)
        teacher_seq = micro_batch[TEACHER_IDS_KEY].offsets().diff().tolist()
        if logits.dim() == 3 and logits.shape[0] == 1 and logits.shape[1] >= sum(teacher_seq):
            flat = logits[0]  # remove-padding: the sequences packed one after the other
            starts = [0]
            for length in teacher_seq[:-1]:
                starts.append(starts[-1] + int(length))
        else:  # padded (B, L_max, V)
            flat = logits.reshape(-1, logits.shape[-1])
            starts = [i * int(logits.shape[1]) for i in range(len(teacher_seq))]
        rows = torch.zeros(sum(seq), dtype=torch.long, device=flat.device)
        offset = 0
        for i, (length, resp) in enumerate(zip(seq, response, strict=True)):
            end_student = offset + length
            end_teacher = starts[i] + int(teacher_seq[i])
            rows[end_student - resp - 1 : end_student - 1] = torch.arange(
                end_teacher - resp - 1, end_teacher - 1, device=flat.device)
            offset = end_student
        if isinstance(temperature, torch.Tensor):
            temperature = float(temperature.flatten()[0])
        if float(temperature) != 1.0:
            flat = flat / float(temperature)  # the student's logits reach the loss already divided (verl)
        self._teacher_logits, self._teacher_rows = flat, rows

    # -- verl's calls ----------------------------------------------------------------------------
    def __call__(self, model_output: dict | None = None, data: Any = None, dp_group: Any = None,
                 student_logits: torch.Tensor | None = None, data_format: str = "thd") -> Any:
        if student_logits is not None:
            return self._logits_processor(student_logits, data)
        if self._pending is None:  # a forward-only pass, or a batch without teacher rows: verl's own loss
            return ppo_loss(self.config, model_output, data, dp_group)
        distill, metrics = self._pending
        self._pending = None
        weight = self.settings.weight
        loss = weight * distill
        if weight < 1.0:
            pg, pg_metrics = ppo_loss(self.config, model_output, data, dp_group)
            loss = loss + (1.0 - weight) * pg
            metrics.update(pg_metrics)
        return loss, metrics

    def _logits_processor(self, student_logits: torch.Tensor, data: Any) -> dict[str, torch.Tensor]:
        """The divergence of every response token of rows with a teacher, from the student's (1, N, V) logits; the
        scalar loss is kept for the final call, the per-position divergences go back to verl (detached)."""
        if self._teacher_logits is None or self._teacher_rows is None:
            raise RuntimeError("cepo's distillation loss was called without its teacher forward (a micro-batch "
                               "without cepo_teacher_input_ids); this is a bug in cepo's verl worker")
        settings = self.settings
        seq, _, response = _response_layout(data)
        total = sum(seq)
        n = int(student_logits.shape[1])
        device = student_logits.device
        has_teacher = data[HAS_TEACHER_KEY].to(device).bool().flatten().tolist()
        response_mask = data["response_mask"]
        mask = torch.zeros(n, dtype=torch.bool, device=device)
        row_index = torch.zeros(n, dtype=torch.long, device=device)
        offset = 0
        old = torch.zeros(n, dtype=torch.float32, device=device)
        old_log_probs = data["old_log_probs"] if "old_log_probs" in data.keys() else None  # noqa: SIM118
        for i, (length, resp) in enumerate(zip(seq, response, strict=True)):
            end = offset + length
            if has_teacher[i] and resp:
                mask[end - resp - 1 : end - 1] = response_mask[i].to(device).bool()
                row_index[end - resp - 1 : end - 1] = i
            if old_log_probs is not None and resp:
                old[end - resp - 1 : end - 1] = old_log_probs[i].to(device).float()
            offset = end
        rows = torch.zeros(n, dtype=torch.long, device=device)
        rows[:total] = self._teacher_rows.to(device)
        count = float(tu.get_non_tensor_data(data=data, key=DISTILL_TOKENS_KEY, default=0.0) or 0.0)
        batch_rows = float(tu.get_non_tensor_data(data=data, key=DISTILL_ROWS_KEY, default=0.0) or 0.0)
        dp_size = max(int(data["dp_size"]) if "dp_size" in data.keys() else 1, 1)  # noqa: SIM118
        token_weight, normalizer = loss_aggregation(settings.loss_agg, mask, tokens=max(count, 1.0) / dp_size,
                                                    rows=max(batch_rows, 1.0) / dp_size, row_index=row_index)
        is_weight = None
        if settings.is_clip is not None and old_log_probs is not None:
            labels = torch.roll(data["input_ids"].values().to(device), shifts=-1, dims=0)
            labels = torch.nn.functional.pad(labels, (0, n - total)) if n > total else labels[:n]
            current = sampled_token_logps(student_logits, labels.unsqueeze(0))[0]
            is_weight = torch.where(mask, importance_weight(current.unsqueeze(0), old.unsqueeze(0),
                                                            settings.is_clip)[0], torch.ones_like(old))
        loss, per_token = packed_logits_distillation_loss(
            student_logits[0], self._teacher_logits, rows, mask, alpha=settings.alpha, normalizer=normalizer,
            topk=settings.topk, support=settings.support, tail=settings.tail, is_weight=is_weight,
            token_weight=token_weight,
        )
        self._teacher_logits = self._teacher_rows = None
        tokens = mask.sum().clamp(min=1)
        metrics: dict[str, Any] = {
            "actor/cepo_distill_loss": Metric(AggregationType.SUM, loss.detach()),
            "actor/cepo_distill_divergence": float(per_token.sum() / tokens),
        }
        if is_weight is not None:
            metrics["actor/cepo_distill_is_clip_frac"] = float(((is_weight >= settings.is_clip) & mask).sum() / tokens)
        self._pending = (loss, metrics)
        return {"cepo_distill_divergence": per_token.detach().unsqueeze(0).to(student_logits.dtype)}


class CEPOActorRolloutRefWorker(ActorRolloutRefWorker):
    """verl's actor/rollout worker with OPSD's and SDPO's teachers (see the module docstring)."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def cepo_setup(self, settings: WorkerDistill) -> None:
        """Install the teacher's weights (fixed / EMA), the EMA update after each optimizer step and, in top-k / full
        mode, the micro-batch teacher and the divergence loss. Runs once, after ``init_model``."""
        training = self.actor
        engine = training.engine
        self.cepo_settings = settings
        self.cepo_teacher = TeacherWeights(engine, settings.teacher, settings.ema_rate)
        if settings.teacher == "ema":
            step = engine.optimizer_step

            def optimizer_step(*args: Any, **kwargs: Any) -> Any:
                out = step(*args, **kwargs)
                self.cepo_teacher.update()
                return out

            engine.optimizer_step = optimizer_step
        if not settings.in_loss:
            return
        actor_config = training.loss_fn.keywords["config"] if hasattr(training.loss_fn, "keywords") else None
        if actor_config is None:
            raise RuntimeError("cepo's verl worker could not find the actor config in verl's loss function")
        loss = MicroBatchDistillLoss(settings, actor_config, self.cepo_teacher)
        self.cepo_loss = loss
        training.set_loss_fn(loss)
        forward_step, forward_backward = engine.forward_step, engine.forward_backward_batch

        def forward_backward_batch(data: Any, loss_function: Any, forward_only: bool = False) -> Any:
            if loss_function is loss and not forward_only and TEACHER_IDS_KEY in data.keys():  # noqa: SIM118 (TensorDict)
                mask = data["response_mask"]
                flags = data[HAS_TEACHER_KEY].bool().flatten()
                per_row = torch.stack([mask[i].sum() for i in range(mask.shape[0])]).float()
                count = (per_row * flags.to(per_row.device).float()).sum()
                counts = torch.stack([count, torch.tensor(float(mask.shape[0]), device=count.device)]).to(_device_id())
                group = engine.get_data_parallel_group()
                if torch.distributed.is_initialized():
                    torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM, group=group)
                tokens, rows = counts.tolist()
                tu.assign_non_tensor(data, **{DISTILL_TOKENS_KEY: float(tokens), DISTILL_ROWS_KEY: float(rows)})
            return forward_backward(data, loss_function=loss_function, forward_only=forward_only)

        def forward_step_with_teacher(micro_batch: Any, loss_function: Any, forward_only: bool) -> Any:
            if loss_function is loss and not forward_only and TEACHER_IDS_KEY in micro_batch.keys():  # noqa: SIM118
                micro_batch = micro_batch.to(_device_id())
                loss.teacher_forward(engine, micro_batch)
                tu.assign_non_tensor(micro_batch, distillation_use_topk=True)
            return forward_step(micro_batch, loss_function=loss_function, forward_only=forward_only)

        engine.forward_backward_batch = forward_backward_batch
        engine.forward_step = forward_step_with_teacher

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def cepo_teacher_log_prob(self, data: Any) -> Any:
        """``compute_log_prob`` under the teacher's weights (the sampled-token teacher pass with a fixed or EMA
        teacher)."""
        teacher = getattr(self, "cepo_teacher", None)
        with teacher.active() if teacher is not None else nullcontext():
            output = self.actor.infer_batch(data)
        return output.cpu() if output is not None else None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def save_checkpoint(self, local_path, hdfs_path=None, global_step=0, max_ckpt_to_keep=None):
        super().save_checkpoint(local_path, hdfs_path, global_step, max_ckpt_to_keep)
        teacher = getattr(self, "cepo_teacher", None)
        if teacher is not None:
            teacher.save(local_path, torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def load_checkpoint(self, local_path, hdfs_path=None, del_local_after_load=False):
        super().load_checkpoint(local_path, hdfs_path, del_local_after_load)
        teacher = getattr(self, "cepo_teacher", None)
        if teacher is not None:
            teacher.load(local_path, torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)


__all__ = [
    "DISTILL_ROWS_KEY",
    "DISTILL_TOKENS_KEY",
    "HAS_TEACHER_KEY",
    "TEACHER_IDS_KEY",
    "TEACHER_POSITIONS_KEY",
    "CEPOActorRolloutRefWorker",
    "MicroBatchDistillLoss",
    "TeacherWeights",
    "WorkerDistill",
]
