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

Multi-process runs: the number of rows needing a teacher pass differs per process (rows with A = 0 are
skipped), but FSDP / ZeRO-3 forwards all-gather parameters, so every process must run the same number
of forward chunks. Each scoring call is padded (with copies of a real row, results discarded) to the
largest row count over the processes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from cepo.algorithms import (
    CreditInputs,
    compute_token_advantages,
    get_method,
    plan_teacher_passes,
    rollout_scores,
    sequence_advantages,
    teacher_passes,
)
from cepo.integrations.trl.checkpoints import AtomicCheckpointMixin
from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.rewards import completion_text
from cepo.rewards import extract_answer
from cepo.teacher import TeacherInputs, build_teacher_inputs, tokenizer_of

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

TILE_INDEXED_FAMILIES = ("lfm2_vl", "internvl")
"""Model types whose image tensors are indexed by tile: TRL recovers their tile counts from the image
processor inside its generation step only, so teacher rows of these models cannot be scored."""


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
        self._cepo_rollouts: dict[str, Any] = {}
        # the hints of the most recent teacher rows, for inspection and tests (bounded: long runs do not grow it)
        self.teacher_calls: deque[dict[str, Any]] = deque(maxlen=4096)
        # one entry per scoring call: rows scored, rows after cross-process padding, forward chunks run
        self.forward_log: deque[dict[str, Any]] = deque(maxlen=4096)

    def _check_one_update_per_rollout(self) -> None:
        """ConSPO's objective has no importance ratio: its advantages are its exact gradient at the rollout policy,
        so each rollout batch must make exactly one optimizer step, token-mean over the batch."""
        name = self.cepo.method
        if self.args.steps_per_generation != self.args.gradient_accumulation_steps or self.num_iterations != 1:
            raise ValueError(
                f"method {name!r} needs one optimizer step per generation round: set steps_per_generation = "
                f"gradient_accumulation_steps (got {self.args.steps_per_generation} and "
                f"{self.args.gradient_accumulation_steps}) and num_iterations=1 (got {self.num_iterations}); on "
                "cepo train: actor_rollout_ref.actor.ppo_mini_batch_size = data.train_batch_size, ppo_epochs=1"
            )
        if self.loss_type not in ("dapo", "cispo", "vespo") or self.beta != 0.0:
            raise ValueError(
                f"method {name!r} needs TRL's token-mean loss over the batch (loss_type='dapo', the default) and "
                f"beta=0, got loss_type={self.loss_type!r}, beta={self.beta}"
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
            num_tokens=int(output["num_items_in_batch"]), options=options,
        )
        teacher_seconds = 0.0
        if kinds:
            tic = time.perf_counter()
            self._teacher_passes(output, rollouts, rewards, group_ids, local, advantages, kinds, lam, credit,
                                 logp_student)
            teacher_seconds = time.perf_counter() - tic
        token_adv, metrics = compute_token_advantages(method.name, credit)
        output["advantages"] = token_adv
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
        )
        jobs = plan.jobs
        logps = {kind: torch.zeros_like(mask, dtype=torch.float32) for kind in kinds}
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
            scored = self._score(teacher, kind="teacher", real_rows=len(jobs))
            for (kind, row, hint), values in zip(jobs, scored, strict=False):  # padding rows come last: dropped
                logps[kind][row] = values.float()
                self.teacher_calls.append({"step": self.state.global_step, "kind": kind, "row": row, "hint": hint})
        if logp_student is None:  # TRL did not compute old log-probs: score P_S for the rows that read it
            logp_student = self._student_logps(output, plan.student_rows)
        credit.logp_student = logp_student.float()
        credit.logp_pos, credit.logp_neg, credit.logp_demo = (logps.get(k) for k in ("pos", "neg", "demo"))
        if "neg" in kinds:
            credit.has_negative = torch.tensor(plan.has_negative, dtype=torch.bool, device=mask.device)
        credit.has_teacher = torch.tensor(plan.has_teacher, dtype=torch.bool, device=mask.device)

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
        self.forward_log.append({"step": self.state.global_step, "kind": kind, "rows": real_rows,
                                 "padded_rows": rows, "chunks": math.ceil(rows / chunk)})
        return logps.float() * batch.response_mask.to(device)

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
