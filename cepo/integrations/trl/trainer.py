"""``CEPOTrainer``: TRL's ``GRPOTrainer`` with token-level credit from ``cepo.algorithms``.

After TRL generates and scores a batch, the trainer
1. recomputes the sequence advantage with Eq. 1 (``cepo.algorithms.group_advantages``, the same
   convention as verl, so both engines train on the same numbers),
2. picks r+ (the ground-truth answer) and r- (the answer of the lowest-reward rejected rollout of
   the group, ``cepo.algorithms.negative_hints``),
3. scores the sampled completions under the r+ and r- teacher contexts with the training model
   itself (no copy, ``torch.no_grad()``, TRL's own log-prob routine, both contexts in one batched
   call, only for rows whose advantage is non-zero), and
4. hands TRL's loss the (B, T) advantages of ``cepo.algorithms.compute_token_advantages``.
Only the advantage changes; TRL's PPO-clip loss is untouched (paper Sec. 3.4).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from cepo.algorithms import TEACHER_PASSES, CreditInputs, compute_token_advantages, group_advantages, negative_hints
from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.rewards import completion_text
from cepo.rewards import extract_answer
from cepo.teacher import build_teacher_inputs, tokenizer_of

_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")


class CEPOTrainer(GRPOTrainer):
    """GRPO / RLSD / CEPO on TRL, selected by ``args.cepo_method``."""

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
        tokenizer = tokenizer_of(self.processing_class)
        if self.cepo.method != "grpo" and getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"method {self.cepo.method!r} re-applies the chat template for its teacher contexts, but the "
                "tokenizer has none; use an instruct/chat model or set tokenizer.chat_template"
            )
        self._cepo_rollouts: dict[str, Any] = {}
        # the hints of the most recent teacher rows, for inspection and tests (bounded: long runs do not grow it)
        self.teacher_calls: deque[dict[str, Any]] = deque(maxlen=4096)

    # -- 1. keep what TRL computed for the rewards -------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._cepo_rollouts = {"inputs": inputs, "prompts": prompts, "completions": completions}
        self._cepo_rollouts["rewards_per_func"] = rewards_per_func
        return rewards_per_func

    # -- 2.-4. teacher passes and token advantages -------------------------------------------
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if mode != "train":
            return output
        rollouts = self._cepo_rollouts
        device = output["completion_ids"].device
        n_local = output["completion_ids"].shape[0]
        start = self.accelerator.process_index * n_local
        local = slice(start, start + n_local)

        rewards_per_func = rollouts["rewards_per_func"]
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        group_ids = [i // self.num_generations for i in range(rewards.shape[0])]
        advantages = group_advantages(rewards.float().cpu(), group_ids, norm_by_std=self.scale_rewards != "none")
        local_adv = advantages[local].to(device)

        lam = self.cepo.schedule(self.state.global_step)
        passes = TEACHER_PASSES[self.cepo.method]
        mask = output["completion_mask"]
        credit = CreditInputs(advantages=local_adv, response_mask=mask, lam=lam, eps_w=self.cepo.eps_w)
        teacher_seconds = 0.0
        if passes and lam > 0:
            tic = time.perf_counter()
            self._teacher_passes(output, rollouts, rewards, group_ids, local, local_adv, passes, credit)
            teacher_seconds = time.perf_counter() - tic
        token_adv, metrics = compute_token_advantages(self.cepo.method, credit)
        output["advantages"] = token_adv
        metrics["teacher_seconds"] = teacher_seconds
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
        local_adv: torch.Tensor,
        passes: tuple[str, ...],
        credit: CreditInputs,
    ) -> None:
        """Fill ``credit`` with P_S, P_T+ and P_T- for the local rows (Eqs. 2, 4, 5)."""
        inputs, prompts = rollouts["inputs"], rollouts["prompts"]
        completion_ids, mask = output["completion_ids"], output["completion_mask"]
        n_local = completion_ids.shape[0]
        answers_local = [extract_answer(completion_text(c)) for c in rollouts["completions"]]
        answers = gather_object(answers_local)
        pos_hints = [str(x["answer"]) for x in inputs]
        neg_all, has_neg_all = negative_hints(
            answers, rewards.cpu(), group_ids, self.cepo.neg_threshold, self.cepo.neg_requires_answer
        )
        neg_hints, has_neg = neg_all[local], has_neg_all[local]
        active = [i for i in range(n_local) if float(local_adv[i]) != 0.0]

        jobs: list[tuple[str, int, str]] = [("pos", i, pos_hints[i]) for i in active]
        if "neg" in passes:
            jobs += [("neg", i, neg_hints[i]) for i in active if has_neg[i]]
        student_rows = [i for i in active if "neg" not in passes or not has_neg[i]]

        logp_pos = torch.zeros_like(mask, dtype=torch.float32)
        logp_neg = torch.zeros_like(mask, dtype=torch.float32)
        if jobs:
            rows = [i for _, i, _ in jobs]
            images = self._row_images(inputs, rows)
            teacher = build_teacher_inputs(
                self.processing_class,
                [prompts[i] for i in rows],
                [hint for _, _, hint in jobs],
                completion_ids[rows].cpu(),
                mask[rows].cpu(),
                images=images,
                template=self.cepo.teacher_template,
                include_image=self.cepo.teacher_sees_image,
                max_prompt_length=self.cepo.teacher_max_prompt_length,
            )
            logps = self._score(teacher)
            for (kind, row, hint), values in zip(jobs, logps, strict=True):
                (logp_pos if kind == "pos" else logp_neg)[row] = values.float()
                self.teacher_calls.append({"step": self.state.global_step, "kind": kind, "row": row, "hint": hint})

        logp_student = output.get("old_per_token_logps")
        if logp_student is None and student_rows:
            logp_student = self._student_logps(output)
        credit.logp_pos = logp_pos
        credit.logp_neg = logp_neg if "neg" in passes else None
        credit.logp_student = logp_student if logp_student is not None else torch.zeros_like(logp_pos)
        credit.has_negative = torch.tensor(has_neg, dtype=torch.bool, device=mask.device)

    @staticmethod
    def _row_images(inputs: list[dict[str, Any]], rows: list[int]) -> list[list[Any]] | None:
        if "images" in inputs[0]:
            return [list(inputs[i].get("images") or []) for i in rows]
        if "image" in inputs[0]:
            return [[inputs[i]["image"]] if inputs[i].get("image") is not None else [] for i in rows]
        return None

    @torch.no_grad()
    def _sampled_logps(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor, **forward: Any
    ) -> torch.Tensor:
        """Log-probs of the last ``response_mask.shape[1]`` tokens through TRL's own routine (same temperature
        and chunking as TRL's old log-probs), zero at masked positions."""
        device = self.accelerator.device
        forward = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in forward.items() if v is not None}
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.model,
            input_ids.to(device),
            attention_mask.to(device),
            response_mask.shape[1],
            batch_size=self.args.per_device_train_batch_size,
            **forward,
        )
        return logps.float() * response_mask.to(device)

    def _score(self, teacher: Any) -> torch.Tensor:
        """P_T for a batch of teacher rows (``cepo.teacher.TeacherInputs``)."""
        images = teacher.pixel_values is not None
        return self._sampled_logps(
            teacher.input_ids,
            teacher.attention_mask,
            teacher.response_mask,
            pixel_values=teacher.pixel_values,
            image_grid_thw=teacher.image_grid_thw,
            num_images=teacher.num_images if images else None,
            mm_token_type_ids=teacher.mm_token_type_ids,
        )

    def _student_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """P_S: log-probs of the completions in the student context (the old log-probs)."""
        ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        forward = {k: output[k] for k in (*_FORWARD_KEYS, "num_images") if k in output}
        return self._sampled_logps(ids, attention, output["completion_mask"], **forward)
