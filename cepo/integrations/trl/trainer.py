"""``CEPOTrainer``: TRL's ``GRPOTrainer`` with token-level credit from ``cepo.algorithms``.

After TRL generates and scores a batch, the trainer
1. recomputes the sequence advantage with Eq. 1 (``cepo.algorithms.group_advantages``, the same
   convention as verl, so both engines train on the same numbers; rollouts that every reward function
   left unscored are excluded from their group's statistics and get advantage 0, as TRL does),
2. picks r+ (the ground-truth answer) and r- (the answer of the lowest-reward rejected rollout of
   the group, ``cepo.algorithms.negative_hints``; the answers are gathered over all processes, since a
   group can span them),
3. scores the sampled completions under the r+ and r- teacher contexts with the training model
   itself (no copy, ``torch.no_grad()``, TRL's own log-prob routine, both contexts in one batched
   call, only for rows whose advantage is non-zero), and
4. hands TRL's loss the (B, T) advantages of ``cepo.algorithms.compute_token_advantages``.
Only the advantage changes; TRL's PPO-clip loss is untouched (paper Sec. 3.4).

Lambda follows the *generation round* (one TRL generation batch = one verl rollout step), not the
optimizer step: with ``steps_per_generation > gradient_accumulation_steps`` or ``num_iterations > 1``
several optimizer steps train on one round, and all of them use that round's lambda. Once lambda is 0
no teacher pass runs (the credit is GRPO).

OPSD / SDPO in ``cepo.distill.mode=topk`` (declared by ``MethodSpec.distill_teacher``, see
``cepo.algorithms.loss_teacher``): the teacher call is a plain forward that also returns the teacher's top-k
log-probs per response token (``cepo.teacher.teacher_topk_logprobs``), carried in the output dict as (B, T, k)
through TRL's shuffle/split, and the loss becomes ``(1 - w) TRL's PG loss + w top-k divergence`` (the divergence
from a plain student forward with full logits at the completion positions; w = 1 skips the PG term). Every
other method and mode keeps TRL's loss unchanged. In ``mode=full`` (OPSD's default) and ``topk`` with
``support=student`` (SDPO's fork) the teacher pass only builds the teacher rows and the teacher forward runs in each
loss micro-batch (``cepo.integrations.trl.distillation``). ``cepo.distill.teacher=fixed`` (LoRA only): the teacher
passes run with the adapter disabled, i.e. the initial policy (OPSD ``--fixed_teacher``).
``cepo.distill.teacher=ema`` (LoRA only): the teacher passes
run with a second adapter, ``teacher``, the EMA of the trained one (``cepo.algorithms.ema_update_`` after every
optimizer step); no second full model.

Multi-process runs: the number of rows needing a teacher pass differs per process (rows with A = 0 are
skipped), but FSDP / ZeRO-3 forwards all-gather parameters, so every process must run the same number
of forward chunks. Each scoring call is padded (with copies of a real row, results discarded) to the
largest row count over the processes.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object, is_peft_model
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from cepo.algorithms import (
    CreditInputs,
    compute_token_advantages,
    ema_update_,
    get_method,
    importance_weight,
    logits_distillation_loss,
    loss_aggregation,
    loss_teacher,
    pg_mean_over_teacher_rows,
    plan_teacher_passes,
    rollout_scores,
    sampled_token_logps,
    sequence_advantages,
    teacher_passes,
    topk_distillation_loss,
)
from cepo.integrations.trl.checkpoints import AtomicCheckpointMixin
from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.distillation import (
    LOSS_TEACHER_KEYS,
    carry_teacher_prompts,
    is_pure_lora,
    teacher_forward_kwargs,
)
from cepo.integrations.trl.rewards import completion_text
from cepo.rewards import extract_answer
from cepo.teacher import TeacherInputs, build_teacher_inputs, teacher_topk_logprobs, tokenizer_of

TRL_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)
"""Model inputs TRL's ``_get_per_token_logps_and_entropies`` slices per chunk and forwards (TRL 1.16); the
teacher rows pass every one of them that the processor returns."""

EMA_ADAPTER = "teacher"
"""Name of the EMA teacher's LoRA adapter (``cepo.distill.teacher=ema``)."""

EMA_FILE = "ema_teacher.safetensors"
"""The EMA adapter's tensors in a checkpoint (and ``final/``), keyed by the trained adapter's parameter names."""

TOPK_KEYS = ("teacher_topk_logps", "teacher_topk_indices", "distill_mask", "distill_num_items", "distill_num_rows")
"""What the teacher pass adds to TRL's output dict in top-k mode: (B, T, k) teacher log-probs and vocabulary ids,
the (B, T) loss mask (response tokens of rows with a teacher) and its token count over the whole generation batch."""

TILE_INDEXED_FAMILIES = ("lfm2_vl", "internvl")
"""Model types whose image tensors are indexed by tile: TRL recovers their tile counts from the image
processor inside its generation step only, so teacher rows of these models cannot be scored."""


class _EMATeacherCallback(TrainerCallback):
    """Updates the EMA teacher adapter after every optimizer step (``on_step_end``)."""

    def __init__(self, trainer: CEPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.update_ema_teacher()


class CEPOTrainer(AtomicCheckpointMixin, GRPOTrainer):
    """GRPO / RLSD / CEPO / OPSD / SDPO / ConSPO on TRL, selected by ``args.cepo_method``; what each method needs
    comes from its ``cepo.algorithms.MethodSpec``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, CEPOGRPOConfig):
            raise TypeError("CEPOTrainer needs args=CEPOGRPOConfig(...) (it carries the cepo_* settings)")
        self.cepo = self.args.cepo_config()
        if self.scale_rewards == "batch":
            raise ValueError(
                "scale_rewards='batch' is not supported by CEPOTrainer: the advantage is Eq. 1, normalised within "
                "each group; use scale_rewards='group' (default) or 'none' (Dr.GRPO)"
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "multi_objective_aggregation must be 'sum_then_normalize' for CEPOTrainer (the weighted reward sum "
                "is normalised per group, Eq. 1)"
            )
        self.method = get_method(self.cepo.method)
        if self.method.hints:
            self._check_teacher_support()
        if self.method.one_update_per_rollout:
            self._check_one_update_per_rollout()
        # topk / full mode: the teacher context whose distribution the loss needs (None: TRL's loss, unchanged);
        # full and student-support top-k run the teacher forward in the loss micro-batch, teacher-support top-k scores
        # the teacher's top-k once in the teacher pass (topk_kind)
        distill = self.cepo.distill
        self.loss_kind = loss_teacher(self.method.name, distill.mode)
        self.teacher_in_loss = self.loss_kind is not None and (distill.mode == "full" or distill.support == "student")
        self.topk_kind = None if self.teacher_in_loss else self.loss_kind
        if self.loss_kind is not None:
            self._check_topk_support()
        if distill.teacher == "fixed" and not is_pure_lora(self.accelerator.unwrap_model(self.model)):
            raise ValueError(
                "cepo.distill.teacher=fixed needs a PEFT LoRA model (the initial policy is the model with the adapter "
                "disabled; no frozen copy of a fully fine-tuned model is kept): train with LoRA (peft_config="
                "LoraConfig(...); cepo train: actor_rollout_ref.model.lora_rank > 0) or set cepo.distill.teacher=live"
            )
        # EMA teacher: (teacher adapter tensor, student adapter tensor) by student parameter name, from the first step
        self.ema_pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._ema_checkpoint: Path | None = None  # EMA_FILE of the checkpoint a run resumes from
        if self.cepo.distill.teacher == "ema":
            self._check_ema_unsharded()
            self._check_ema_support()
            self.add_callback(_EMATeacherCallback(self))
        self._cepo_rollouts: dict[str, Any] = {}
        # the hints of the most recent teacher rows, for inspection and tests (bounded: long runs do not grow it)
        self.teacher_calls: deque[dict[str, Any]] = deque(maxlen=4096)
        # one entry per scoring call: rows scored, rows after cross-process padding, forward chunks run
        self.forward_log: deque[dict[str, Any]] = deque(maxlen=4096)

    def _check_one_update_per_rollout(self) -> None:
        """ConSPO's settings checks live in ``CEPOGRPOConfig`` (TRL's loss options); here what only the trainer
        knows: tools or environments, whose tool-result tokens TRL's loss leaves out (``tool_mask``) while the
        sequence score's 1/|o| counts every completion token."""
        self.args._check_one_update_per_rollout(self.cepo.method)  # again: args may have changed since __post_init__
        if self.tools or self.environment_factories is not None:
            raise ValueError(
                f"method {self.cepo.method!r} does not support tools or environments: TRL's loss leaves the tool "
                "results out (tool_mask) while its sequence score 1/|o| counts every completion token, so its "
                "gradient would not be ConSPO's; use cepo_method='grpo'"
            )

    def _check_topk_support(self) -> None:
        """Top-k / full mode: k within the vocabulary; with w = 1 TRL's loss (and its KL / entropy terms) is not
        computed; a teacher forward in the loss reuses the micro-batch's images, so the teacher must see them."""
        distill = self.cepo.distill
        if self.teacher_in_loss and not self.cepo.teacher_sees_image and getattr(
                self.processing_class, "image_processor", None) is not None:
            raise ValueError(
                f"cepo.distill.mode={distill.mode} (support={distill.support}) runs the teacher forward in the loss "
                "micro-batch with the student's image inputs, so it needs cepo.teacher_sees_image=true; set it, or "
                "use cepo.distill.mode=topk with cepo.distill.support=teacher"
            )
        config = self.accelerator.unwrap_model(self.model).config
        vocab = getattr(config.get_text_config(), "vocab_size", None)
        if distill.mode == "topk" and vocab is not None and distill.topk > vocab:
            raise ValueError(f"cepo.distill.topk={distill.topk} exceeds the model's vocabulary ({vocab} tokens)")
        if distill.weight == 1.0 and (self.beta != 0.0 or getattr(self, "_entropy_bonus_enabled", False)):
            raise ValueError(
                f"cepo.distill.mode={distill.mode} with cepo.distill.weight=1 replaces TRL's loss, so its KL (beta) "
                "and entropy terms would be dropped; set beta=0 and no entropy bonus, or cepo.distill.weight < 1"
            )

    def _check_ema_unsharded(self) -> None:
        """The EMA update lerps the adapter tensors of ``named_parameters()``, which under DeepSpeed ZeRO-3 or FSDP are
        each process's shards or empty placeholders, not the parameters: refuse (one line) rather than average them."""
        zero3 = self.is_deepspeed_enabled and getattr(self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
        if zero3 or self.is_fsdp_enabled:
            raise ValueError(
                f"cepo.distill.teacher=ema is not supported under {'DeepSpeed ZeRO-3' if zero3 else 'FSDP'}: its "
                "update would average parameter shards, not the adapter; train without parameter sharding (DDP or "
                "ZeRO-1/2: the LoRA adapter is small) or set cepo.distill.teacher=live"
            )

    def _check_ema_support(self) -> None:
        """The EMA teacher is a second LoRA adapter: refuse a model that is not pure-LoRA PEFT."""
        if not is_pure_lora(self.accelerator.unwrap_model(self.model)):
            raise ValueError(
                "cepo.distill.teacher=ema needs a PEFT LoRA model (the EMA teacher is a second LoRA adapter, not a "
                "second full model): train with LoRA (peft_config=LoraConfig(...); cepo train: "
                "actor_rollout_ref.model.lora_rank > 0) or set cepo.distill.teacher=live"
            )

    def _check_teacher_support(self) -> None:
        """Refuse, at start-up, set-ups whose teacher context cannot equal the student's plus the hint."""
        method = self.cepo.method
        tokenizer = tokenizer_of(self.processing_class)
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"method {method!r} re-applies the chat template for its teacher contexts, but the "
                "tokenizer has none; use an instruct/chat model or set tokenizer.chat_template"
            )
        if self.tools or self.environment_factories is not None:
            raise ValueError(
                f"method {method!r} does not support tools or environments: the teacher context re-renders the "
                "prompt without the tool schema or multi-turn observations; use cepo_method='grpo'"
            )
        model_type = getattr(getattr(self.accelerator.unwrap_model(self.model), "config", None), "model_type", None)
        if model_type in TILE_INDEXED_FAMILIES:
            raise ValueError(
                f"method {method!r} cannot score teacher contexts for model type {model_type!r} (tile-indexed image "
                f"inputs, {list(TILE_INDEXED_FAMILIES)}); use cepo_method='grpo' or a Qwen-VL / LLaVA-style model"
            )

    # -- 1. keep what TRL computed for the rewards -------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._cepo_rollouts = {"inputs": inputs, "prompts": prompts, "completions": completions}
        self._cepo_rollouts["rewards_per_func"] = rewards_per_func
        return rewards_per_func

    def generation_round(self) -> int:
        """0-based index of the current generation round (the lambda schedule's step).

        TRL generates once every ``steps_per_generation * num_iterations`` micro-steps; a micro-step is one
        ``training_step`` (``gradient_accumulation_steps`` of them make an optimizer step). Counted from the
        optimizer step, so a resumed run continues the schedule where the checkpoint left it.
        """
        accumulation = self.args.gradient_accumulation_steps
        micro_steps = self.state.global_step * accumulation + self._step % accumulation
        return micro_steps // (self.args.steps_per_generation * self.num_iterations)

    def training_progress(self, generation_round: int) -> float:
        """Fraction of the run's generation rounds done before ``generation_round``, in [0, 1] (ConSPO's margin)."""
        per_round = self.args.steps_per_generation * self.num_iterations
        rounds = max(1, math.ceil(self.state.max_steps * self.args.gradient_accumulation_steps / per_round))
        return min(1.0, generation_round / rounds)

    # -- the EMA teacher (cepo.distill.teacher=ema) -----------------------------------------
    def _init_ema_teacher(self) -> None:
        """Add the ``teacher`` LoRA adapter (frozen, not in the optimizer) and copy the trained adapter into it:
        ``theta_T(0) = theta(0)`` (SDPO / OPSD: the first round's teacher is the live model); a resumed run loads
        the EMA adapter of its checkpoint instead."""
        model = self.accelerator.unwrap_model(self.model)
        active = model.active_adapter
        if EMA_ADAPTER not in model.peft_config:
            model.add_adapter(EMA_ADAPTER, copy.deepcopy(model.peft_config[active]))
            model.set_adapter(active)  # keeps the trained adapter active and trainable, the teacher frozen
        params = dict(model.named_parameters())
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, student in params.items():
            parts = name.split(".")
            at = [i for i in range(1, len(parts)) if parts[i] == active and parts[i - 1].startswith("lora_")]
            if at:
                teacher_name = ".".join([*parts[: at[0]], EMA_ADAPTER, *parts[at[0] + 1 :]])
                pairs[name] = (params[teacher_name], student)
        if not pairs:
            raise ValueError(f"no LoRA parameters of adapter {active!r} found for the EMA teacher")
        for teacher, _ in pairs.values():
            teacher.requires_grad_(False)
        source = {n: s for n, (_, s) in pairs.items()}
        if self._ema_checkpoint is not None:
            from safetensors.torch import load_file

            source = load_file(str(self._ema_checkpoint))
            if set(source) != set(pairs):
                raise ValueError(
                    f"{self._ema_checkpoint} does not hold the EMA teacher of this LoRA adapter (differing tensors: "
                    f"{sorted(set(source) ^ set(pairs))[:4]}); resume with the LoRA config of that run"
                )
        ema_update_({n: t for n, (t, _) in pairs.items()}, source, rate=1.0)
        self.ema_pairs = pairs

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoints and ``final/`` hold the trained adapter only, as without an EMA teacher (a ``teacher/``
        adapter subfolder would make transformers' resume load that one and skip the trained one), plus the EMA
        adapter's tensors in :data:`EMA_FILE`."""
        if self.ema_pairs is None:
            super()._save(output_dir, state_dict)
            return
        model = self.accelerator.unwrap_model(self.model)
        config = model.peft_config.pop(EMA_ADAPTER)  # PeftModel.save_pretrained saves every adapter in peft_config
        try:
            super()._save(output_dir, state_dict)
        finally:
            model.peft_config[EMA_ADAPTER] = config
        from safetensors.torch import save_file

        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        save_file({n: t.detach().contiguous().cpu() for n, (t, _) in self.ema_pairs.items()}, str(folder / EMA_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self._check_resume_at_round_start(Path(resume_from_checkpoint))
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        saved = Path(resume_from_checkpoint) / EMA_FILE
        self._ema_checkpoint = saved if self.cepo.distill.teacher == "ema" and saved.is_file() else None

    def _check_resume_at_round_start(self, checkpoint: Path) -> None:
        """Refuse a checkpoint saved inside a generation round: TRL keeps no rollout buffer in a checkpoint, so a run
        resumed there generates a new round at that step and every later round (lambda, the margin) is re-indexed.
        ``cepo train`` saves at round boundaries only; through the Python API ``save_steps`` decides."""
        state = checkpoint / "trainer_state.json"
        if not state.is_file():
            return
        step = int(json.loads(state.read_text()).get("global_step", 0))
        per_round = self.args.steps_per_generation * self.num_iterations  # micro-steps of one generation round
        if step * self.args.gradient_accumulation_steps % per_round:
            every = f"{per_round / self.args.gradient_accumulation_steps:g}"
            raise ValueError(
                f"cannot resume from {checkpoint}: it was saved at optimizer step {step}, inside a generation round "
                f"(one round = {every} optimizer steps: steps_per_generation x num_iterations / "
                f"gradient_accumulation_steps), and a resumed run would re-index its rounds; resume from a checkpoint "
                f"at a multiple of {every} steps, and set save_steps to a multiple of {every}"
            )

    def update_ema_teacher(self) -> None:
        """After an optimizer step: ``theta_T <- (1 - rate) theta_T + rate theta`` on the adapter tensors."""
        if self.ema_pairs is None:
            return
        ema_update_({n: t for n, (t, _) in self.ema_pairs.items()}, {n: s for n, (_, s) in self.ema_pairs.items()},
                    rate=self.cepo.distill.ema_rate)

    @contextmanager
    def _teacher_weights(self) -> Iterator[None]:
        """The teacher passes' weights: the EMA adapter while inside (``cepo.distill.teacher=ema``), the model with
        the LoRA adapter disabled (``fixed``: the initial policy), else the live model. The trained adapter is active
        and trainable again on exit."""
        if self.cepo.distill.teacher == "fixed":
            with self.accelerator.unwrap_model(self.model).disable_adapter():
                yield
            return
        if self.ema_pairs is None:
            yield
            return
        model = self.accelerator.unwrap_model(self.model)
        active = model.active_adapter
        model.set_adapter(EMA_ADAPTER, inference_mode=True)
        try:
            yield
        finally:
            model.set_adapter(active)

    def _active_adapter(self) -> str | None:
        model = self.accelerator.unwrap_model(self.model)
        return str(model.active_adapter) if is_peft_model(model) else None

    # -- 2.-4. teacher passes and token advantages -------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if mode != "train":
            return output
        rollouts = self._cepo_rollouts
        method = self.method
        n_local = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * n_local
        local = slice(start, start + n_local)
        mask = output["completion_mask"]

        rewards_per_func = rollouts["rewards_per_func"]
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan  # unscorable: no reward function scored it
        rewards = rewards.float().cpu()
        group_ids = [i // self.num_generations for i in range(rewards.shape[0])]

        if self.cepo.distill.teacher == "ema" and self.ema_pairs is None:
            self._init_ema_teacher()
        step = self.generation_round()
        lam = self.cepo.schedule(step)
        kinds = teacher_passes(method.name, lam)
        options = self.cepo.credit_options(self.training_progress(step))
        logp_student = output.get("old_per_token_logps")
        scores = None
        if method.sequence_advantage == "conspo":  # the sequence scores of every rollout, gathered
            if logp_student is None:
                logp_student = self._student_logps(output, list(range(n_local)))
            scores = self.accelerator.gather(rollout_scores(logp_student.float(), mask)).float().cpu()
        advantages = sequence_advantages(method.name, rewards, group_ids, norm_by_std=self.scale_rewards != "none",
                                         scores=scores, options=options)
        credit = CreditInputs(
            advantages=advantages[local].to(mask.device), response_mask=mask, lam=lam, eps_w=self.cepo.eps_w,
            num_tokens=int(output["num_items_in_batch"]), options=options, distill_mode=self.cepo.distill.mode,
        )
        teacher_seconds = 0.0
        if kinds:
            tic = time.perf_counter()
            self._teacher_passes(output, rollouts, rewards, group_ids, local, advantages, kinds, lam, credit,
                                 logp_student)
            teacher_seconds = time.perf_counter() - tic
        token_adv, metrics = compute_token_advantages(method.name, credit)
        output["advantages"] = token_adv
        if self._teacher_rows_only():  # SDPO: rows without a teacher leave the token-mean's denominator
            self._drop_rows_without_teacher(output, credit)
        metrics["teacher_seconds"] = teacher_seconds
        metrics["generation_round"] = float(step)
        for key, value in metrics.items():
            self._metrics[mode][f"cepo/{key}"].append(value)
        return output

    def _teacher_passes(
        self,
        output: dict[str, Any],
        rollouts: dict[str, Any],
        rewards: torch.Tensor,
        group_ids: list[int],
        local: slice,
        advantages: torch.Tensor,
        kinds: tuple[str, ...],
        lam: float,
        credit: CreditInputs,
        logp_student: torch.Tensor | None,
    ) -> None:
        """Score the teacher rows :func:`cepo.algorithms.plan_teacher_passes` asks for and fill ``credit`` (P_S and
        the teacher log-probs of Eqs. 2, 4, 5, or the distillation teacher) for the local rows."""
        inputs, prompts = rollouts["inputs"], rollouts["prompts"]
        completion_ids, mask = output["completion_ids"], output["completion_mask"]
        texts = gather_object([completion_text(c) for c in rollouts["completions"]])  # groups can span processes
        plan = plan_teacher_passes(
            self.method.name, lam, range(local.start, local.stop), advantages, rewards, group_ids,
            ground_truths=[str(x["answer"]) for x in inputs], answers=[extract_answer(t) for t in texts],
            texts=texts, neg_threshold=self.cepo.neg_threshold, require_answer=self.cepo.neg_requires_answer,
            negative_reference=self.cepo.negative_reference, success_threshold=self.cepo.distill.success_threshold,
            distill_mode=self.cepo.distill.mode,
        )
        jobs = plan.jobs
        logps = {kind: torch.zeros_like(mask, dtype=torch.float32) for kind in kinds}
        carried: TeacherInputs | None = None
        topk = None
        if self.topk_kind is not None:  # (B, T, k) teacher log-probs and ids; rows without a teacher stay 0
            k = self.cepo.distill.topk
            topk = (torch.zeros(*mask.shape, k, dtype=torch.float32, device=mask.device),
                    torch.zeros(*mask.shape, k, dtype=torch.int32, device=mask.device))
        width = self._synced_row_count(len(jobs))
        if width:
            padded = jobs + [jobs[0] if jobs else (kinds[0], 0, "")] * (width - len(jobs))
            rows = [i for _, i, _ in padded]
            teacher = build_teacher_inputs(
                self.processing_class,
                [prompts[i] for i in rows],
                [hint for _, _, hint in padded],
                completion_ids[rows].cpu(),
                mask[rows].cpu(),
                images=self._row_images(inputs, rows),
                template=self.cepo.template_for(kinds),
                include_image=self.cepo.teacher_sees_image,
                max_prompt_length=self.cepo.teacher_max_prompt_length,
                chat_template_kwargs=self.chat_template_kwargs,
            )
            if self.teacher_in_loss:  # the teacher forward runs in the loss micro-batches: carry the prompts only
                carried = teacher
                scored = [None] * len(jobs)
            else:
                with self._teacher_weights():
                    if topk is None:
                        scored = self._score(teacher, kind="teacher", real_rows=len(jobs))
                    else:
                        top_values, top_indices, scored = self._score_topk(teacher, real_rows=len(jobs))
            for j, ((kind, row, hint), values) in enumerate(zip(jobs, scored, strict=False)):  # padding rows: dropped
                if values is not None:
                    logps[kind][row] = values.float()
                if topk is not None and kind == self.topk_kind:
                    topk[0][row], topk[1][row] = top_values[j], top_indices[j].to(torch.int32)
                self.teacher_calls.append({"step": self.state.global_step, "kind": kind, "row": row, "hint": hint})
        if logp_student is None:  # TRL did not compute old log-probs: score P_S for the rows that read it
            logp_student = self._student_logps(output, plan.student_rows)
        credit.logp_student = logp_student.float()
        credit.logp_pos, credit.logp_neg, credit.logp_demo = (logps.get(k) for k in ("pos", "neg", "demo"))
        if "neg" in kinds:
            credit.has_negative = torch.tensor(plan.has_negative, dtype=torch.bool, device=mask.device)
        credit.has_teacher = torch.tensor(plan.has_teacher, dtype=torch.bool, device=mask.device)
        if self.teacher_in_loss:
            pad = tokenizer_of(self.processing_class).pad_token_id or 0
            output.update(carry_teacher_prompts(output, carried, [row for _, row, _ in jobs], pad))
        if self.loss_kind is not None:
            distill_mask = mask * credit.has_teacher.unsqueeze(-1).to(mask.dtype)
            if topk is not None:
                output["teacher_topk_logps"], output["teacher_topk_indices"] = topk
            output["distill_mask"] = distill_mask
            output["distill_num_items"] = self.accelerator.gather(distill_mask.sum().float().reshape(1)).sum()
            rows = torch.tensor([float(distill_mask.shape[0])], device=distill_mask.device)
            output["distill_num_rows"] = self.accelerator.gather(rows).sum()  # with the rows without a teacher

    def _teacher_rows_only(self) -> bool:
        """Whether the PG loss of a sampled-token distillation is averaged over the rows that have a teacher only:
        pure distillation (``cepo.distill.weight = 1``), where the other rows' advantage is 0 (SDPO's token-mean over
        ``response_mask × self_distillation_mask``; OPSD gives every row a teacher)."""
        return pg_mean_over_teacher_rows(self.method.name, self.cepo.distill.mode, self.cepo.distill.weight)

    def _drop_rows_without_teacher(self, output: dict[str, Any], credit: CreditInputs) -> None:
        """Zero the completion mask of the local rows without a teacher (their advantage is 0, their loss term 0)
        and recount TRL's ``num_items_in_batch`` over the generation batch, so that they leave the denominator of
        every TRL loss type instead of diluting the step (SDPO's ``self_distillation_mask``)."""
        if credit.has_teacher is None:  # no teacher pass ran
            return
        rows = credit.has_teacher.to(output["completion_mask"].device).unsqueeze(-1)
        output["completion_mask"] = output["completion_mask"] * rows.to(output["completion_mask"].dtype)
        count = self.accelerator.gather(output["completion_mask"].sum().reshape(1)).sum()
        output["num_items_in_batch"] = count.to(output["num_items_in_batch"].dtype)

    def _synced_row_count(self, rows: int) -> int:
        """The largest ``rows`` over all processes: every process pads its scoring call to it, so all run the
        same number of forward chunks (FSDP / ZeRO-3 forwards are collective)."""
        if self.accelerator.num_processes == 1:
            return rows
        counts = self.accelerator.gather(torch.tensor([rows], device=self.accelerator.device))
        return int(counts.max())

    @staticmethod
    def _row_images(inputs: list[dict[str, Any]], rows: list[int]) -> list[list[Any]] | None:
        if "images" in inputs[0]:
            return [list(inputs[i].get("images") or []) for i in rows]
        if "image" in inputs[0]:
            return [[inputs[i]["image"]] if inputs[i].get("image") is not None else [] for i in rows]
        return None

    @torch.no_grad()
    def _score(self, batch: TeacherInputs, kind: str, real_rows: int) -> torch.Tensor:
        """Log-probs (N, T) of ``batch``'s response tokens through TRL's own routine (same temperature, chunking
        and model inputs as TRL's old log-probs), zero at masked positions."""
        device = self.accelerator.device
        chunk = self.args.per_device_train_batch_size
        forward = {k: v for k, v in batch.model_kwargs().items() if k in TRL_FORWARD_KEYS}
        forward = {k: v.to(device) for k, v in forward.items()}
        if "pixel_values" in forward or "image_sizes" in forward:
            forward["num_images"] = list(batch.num_images)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                batch.input_ids.to(device),
                batch.attention_mask.to(device),
                batch.response_length,
                batch_size=chunk,
                **forward,
            )
        rows = int(batch.input_ids.shape[0])
        self._log_forward(kind, real_rows, rows, chunk)
        return logps.float() * batch.response_mask.to(device)

    def _log_forward(self, kind: str, real_rows: int, rows: int, chunk: int, **extra: Any) -> None:
        """One :attr:`forward_log` entry; with an EMA teacher it also names the adapter the forward ran with."""
        entry = {"step": self.state.global_step, "kind": kind, "rows": real_rows, "padded_rows": rows,
                 "chunks": math.ceil(rows / chunk), **extra}
        if self.ema_pairs is not None:
            entry["adapter"] = self._active_adapter()
        self.forward_log.append(entry)

    def _score_topk(self, batch: TeacherInputs, real_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher call of top-k mode: a plain forward (TRL's fused routine returns sampled-token log-probs only),
        chunked like :meth:`_score`, at TRL's temperature: ``(values, indices)`` (N, T, k) and the sampled tokens'
        log-probs (N, T) (:func:`cepo.teacher.teacher_topk_logprobs`)."""
        chunk = self.args.per_device_train_batch_size
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), \
                self.accelerator.autocast():
            values, indices, logps = teacher_topk_logprobs(
                self.model, batch, self.cepo.distill.topk, temperature=self.temperature, micro_batch_size=chunk
            )
        rows = int(batch.input_ids.shape[0])
        self._log_forward("teacher", real_rows, rows, chunk, topk=self.cepo.distill.topk)
        return values, indices, logps

    # -- the loss: TRL's, plus the divergence in top-k / full mode ----------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """TRL's loss, unchanged, except for a method in top-k / full mode: ``(1 - w) PG + w distill`` (w = 1: no
        PG)."""
        keys = LOSS_TEACHER_KEYS if self.teacher_in_loss else TOPK_KEYS
        if self.loss_kind is None or any(k not in inputs for k in keys):  # eval batches carry no teacher pass
            return super()._compute_loss(model, inputs)
        weight = self.cepo.distill.weight
        loss = weight * self._distillation_loss(model, inputs)
        if weight < 1.0:
            loss = loss + (1.0 - weight) * super()._compute_loss(model, inputs)
        return loss

    def _response_logits(self, model: Any, inputs: dict[str, Any], **kwargs: Any) -> torch.Tensor:
        """(B, T, V) logits of a plain forward at the completion positions, in the forward's dtype (a view of its
        output, not divided by the temperature: the divergence does that chunk by chunk)."""
        t = inputs["completion_ids"].shape[1]
        with self.accelerator.autocast():
            outputs = model(logits_to_keep=t + 1, use_cache=False, **kwargs)
        return outputs.logits[:, -(t + 1) : -1]

    @torch.no_grad()
    def _micro_batch_teacher_logits(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The teacher's (B, T, V) logits of this micro-batch (``mode=full`` / student-support top-k): one forward of
        ``[teacher prompt | completion]`` under the teacher's weights (:meth:`_teacher_weights`), no gradient."""
        kwargs = teacher_forward_kwargs(inputs, TRL_FORWARD_KEYS)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), \
                self._teacher_weights():
            logits = self._response_logits(model, inputs, **kwargs)
        rows = int(inputs["completion_ids"].shape[0])
        self._log_forward("teacher_in_loss", rows, rows, rows, mode=self.cepo.distill.mode)
        return logits

    def _distillation_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """``Σ mask·D_alpha(P_S, P_T) / N``: P_S from a plain forward of this micro-batch (full logits at the
        completion positions, at TRL's temperature); P_T the teacher's top-k scored in the teacher pass
        (:func:`cepo.algorithms.topk_distillation_loss`) or the teacher's logits from a forward in this micro-batch
        (:func:`cepo.algorithms.logits_distillation_loss`: ``full``, or the student's top-k); both chunked over T.
        Aggregated by ``cepo.distill.loss_agg`` (:func:`cepo.algorithms.loss_aggregation`): ``token-mean``: N = the
        masked tokens of the generation batch scaled to one accumulation window, as TRL's ``dapo`` normaliser (so the
        sum over a window is a token-mean over the rows that have a teacher); ``seq-mean-token-mean``: each token
        weighted by 1/L_r (its row's masked tokens) and N = the generation batch's rows (with those without a teacher)
        scaled the same way, so the window's sum is the mean over its rows of per-row token-means (the authors')."""
        completion_ids = inputs["completion_ids"]
        distill = self.cepo.distill
        teacher_logits = self._micro_batch_teacher_logits(model, inputs) if self.teacher_in_loss else None
        forward = {k: inputs[k] for k in TRL_FORWARD_KEYS if inputs.get(k) is not None}
        logits = self._response_logits(
            model, inputs, input_ids=torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
            attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1), **forward,
        )
        mask = inputs["distill_mask"]
        window = 1.0 / self.accelerator.num_processes
        if self.model.training:  # as TRL's dapo: the generation batch's count, per accumulation window
            window = window * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        token_weight, normalizer = loss_aggregation(
            distill.loss_agg, mask, tokens=inputs["distill_num_items"].clamp(min=1.0) * window,
            rows=inputs["distill_num_rows"].clamp(min=1.0) * window,
        )
        is_weight = None
        old_logps = inputs.get("old_per_token_logps")
        if distill.is_clip is not None and old_logps is not None:  # SDPO's correction for off-policy updates
            sampled = sampled_token_logps(logits, completion_ids, temperature=self.temperature)
            is_weight = importance_weight(sampled, old_logps, distill.is_clip)
        if teacher_logits is None:
            loss, per_token = topk_distillation_loss(
                logits, inputs["teacher_topk_logps"], inputs["teacher_topk_indices"], mask, alpha=distill.alpha,
                tail=distill.tail, normalizer=normalizer, is_weight=is_weight, temperature=self.temperature,
                token_weight=token_weight,
            )
        else:
            loss, per_token = logits_distillation_loss(
                logits, teacher_logits, mask, alpha=distill.alpha, normalizer=normalizer,
                topk=distill.topk if distill.mode == "topk" else None, support=distill.support, tail=distill.tail,
                is_weight=is_weight, temperature=self.temperature, token_weight=token_weight,
            )
        clipped = torch.zeros((), device=mask.device) if is_weight is None else (
            (is_weight >= distill.is_clip) & mask.bool()).sum().float()
        totals = self.accelerator.reduce(torch.stack([per_token.sum().float(), mask.sum().float(), clipped]),
                                         reduction="sum")
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["cepo/distill_loss"].append(float(totals[0] / totals[1].clamp(min=1.0)))
        if is_weight is not None:
            self._metrics[mode]["cepo/distill_is_clip_frac"].append(float(totals[2] / totals[1].clamp(min=1.0)))
        return loss

    def _student_logps(self, output: dict[str, Any], rows: list[int]) -> torch.Tensor:
        """P_S (the old log-probs, no hint) for ``rows`` of the local batch; (B, T), zero on other rows.

        Scores only those rows (CEPO reads P_S only where a group has no r-; RLSD where A != 0), padded to the
        same count on every process, with TRL's own prompt tokens and image inputs.
        """
        mask = output["completion_mask"]
        out = torch.zeros_like(mask, dtype=torch.float32)
        width = self._synced_row_count(len(rows))
        if not width:
            return out
        student = TeacherInputs(
            input_ids=torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1),
            attention_mask=torch.cat([output["prompt_mask"], mask], dim=1),
            prompt_length=int(output["prompt_ids"].shape[1]),
            response_ids=output["completion_ids"],
            response_mask=mask,
            num_images=list(output.get("num_images") or [0] * mask.shape[0]),
            pixel_values=output.get("pixel_values"),
            image_grid_thw=output.get("image_grid_thw"),
            mm_token_type_ids=output.get("mm_token_type_ids"),
            extra={k: output[k] for k in TRL_FORWARD_KEYS if k in output and k not in
                   ("pixel_values", "image_grid_thw", "mm_token_type_ids")},
        )
        padded = rows + [rows[0] if rows else 0] * (width - len(rows))
        try:
            selected = student.select(padded)
        except ValueError:  # image inputs this layout cannot split per row: score the whole local batch
            padded = list(range(mask.shape[0]))
            selected = student
        logps = self._score(selected, kind="student", real_rows=len(rows))
        position = {}
        for k, row in enumerate(padded):
            position.setdefault(row, k)
        for row in rows:
            out[row] = logps[position[row]]
        return out
