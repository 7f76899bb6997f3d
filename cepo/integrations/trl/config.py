"""``CEPOGRPOConfig``: TRL's ``GRPOConfig`` plus the method fields (see ``cepo.config.CEPOConfig``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from cepo.algorithms import get_method
from cepo.config import SDPO_TEMPLATE, CEPOConfig
from cepo.teacher import DEFAULT_TEACHER_TEMPLATE

FIELD_KEYS: dict[str, str] = {
    "cepo_method": "method",
    "cepo_lam0": "lam0",
    "cepo_lambda_schedule": "lambda_schedule",
    "cepo_warmup_steps": "warmup_steps",
    "cepo_eps_w": "eps_w",
    "cepo_teacher_template": "teacher_template",
    "cepo_teacher_sees_image": "teacher_sees_image",
    "cepo_neg_threshold": "neg_threshold",
    "cepo_neg_requires_answer": "neg_requires_answer",
    "cepo_negative_reference": "negative_reference",
    "cepo_teacher_max_prompt_length": "teacher_max_prompt_length",
    "cepo_accuracy_weight": "reward.accuracy_weight",
    "cepo_format_weight": "reward.format_weight",
    "cepo_distill_weight": "distill.weight",
    "cepo_success_threshold": "distill.success_threshold",
    "cepo_demo_template": "distill.demo_template",
    "cepo_distill_mode": "distill.mode",
    "cepo_distill_topk": "distill.topk",
    "cepo_distill_support": "distill.support",
    "cepo_distill_alpha": "distill.alpha",
    "cepo_distill_tail": "distill.tail",
    "cepo_distill_is_clip": "distill.is_clip",
    "cepo_distill_teacher": "distill.teacher",
    "cepo_distill_ema_rate": "distill.ema_rate",
    "cepo_distill_loss_agg": "distill.loss_agg",
    "cepo_conspo_tau": "conspo.tau",
    "cepo_conspo_margin": "conspo.margin",
    "cepo_conspo_margin_warmup_ratio": "conspo.margin_warmup_ratio",
}
"""Each ``cepo_*`` field of :class:`CEPOGRPOConfig` and the ``cepo:`` key it stands for (``block.key`` for nested
blocks)."""


@dataclass
class CEPOGRPOConfig(GRPOConfig):
    """GRPOConfig with the credit-assignment settings, prefixed ``cepo_`` to stay clear of TRL's own
    fields (``warmup_steps`` is the learning-rate warm-up there)."""

    cepo_method: str = field(default="cepo", metadata={"help": "grpo | rlsd | cepo | opsd | sdpo | conspo"})
    cepo_lam0: float = field(default=0.5, metadata={"help": "initial lambda (Eq. 7)"})
    cepo_lambda_schedule: str = field(default="linear", metadata={"help": "linear | constant"})
    cepo_warmup_steps: int = field(default=25, metadata={"help": "T_warm: generation rounds for lambda to reach 0"})
    cepo_eps_w: float = field(default=0.5, metadata={"help": "weight clip half-width epsilon_w, in (0, 1)"})
    cepo_teacher_template: str = field(default=DEFAULT_TEACHER_TEMPLATE, metadata={"help": "Jinja teacher prompt"})
    cepo_teacher_sees_image: bool = field(default=True, metadata={"help": "keep the image in teacher contexts"})
    cepo_neg_threshold: float = field(default=0.5, metadata={"help": "reward below this = rejected rollout"})
    cepo_neg_requires_answer: bool = field(default=True, metadata={"help": "r- only from rollouts with an answer"})
    cepo_negative_reference: str = field(
        default="paper", metadata={"help": "which wrong answer r- carries: paper | own_answer | most_frequent"}
    )
    cepo_teacher_max_prompt_length: int | None = field(default=None, metadata={"help": "limit on teacher prompts"})
    cepo_accuracy_weight: float = field(default=0.9, metadata={"help": "reward weight of answer accuracy"})
    cepo_format_weight: float = field(default=0.1, metadata={"help": "reward weight of the boxed format"})
    cepo_distill_weight: float = field(
        default=1.0, metadata={"help": "OPSD/SDPO: w in (1 - w) GRPO + w distillation; 1 = pure distillation"}
    )
    cepo_success_threshold: float = field(
        default=0.5, metadata={"help": "SDPO: reward at which a rollout is a success (a demonstration)"}
    )
    cepo_demo_template: str = field(default=SDPO_TEMPLATE, metadata={"help": "SDPO: Jinja teacher prompt"})
    cepo_distill_mode: str = field(
        default="sampled_token",
        metadata={"help": "OPSD/SDPO: sampled_token (advantage in the PG loss) | topk (divergence on a top-k "
                          "support) | full (whole-vocabulary divergence); mixed as (1 - w) PG + w distill"},
    )
    cepo_distill_topk: int = field(default=100, metadata={"help": "OPSD/SDPO topk mode: k (SDPO 100, OPSD 50)"})
    cepo_distill_support: str = field(
        default="teacher", metadata={"help": "OPSD/SDPO topk mode: teacher (OPSD's top-k) | student (SDPO's top-k)"}
    )
    cepo_distill_alpha: float = field(
        default=0.5, metadata={"help": "OPSD/SDPO topk mode: 0 forward KL, 1 reverse KL, between = generalized JSD"}
    )
    cepo_distill_tail: bool = field(
        default=True, metadata={"help": "OPSD/SDPO topk mode: tail bucket for the mass outside the top-k; false = "
                                        "renormalise on the top-k"}
    )
    cepo_distill_is_clip: float | None = field(
        default=2.0, metadata={"help": "OPSD/SDPO topk mode: weight the divergence by min(pi/pi_old, is_clip) on "
                                       "updates after a rollout batch's first (SDPO); None = no correction"}
    )
    cepo_distill_teacher: str = field(
        default="live", metadata={"help": "OPSD/SDPO: live (the actor) | fixed (the initial policy: the LoRA adapter "
                                  "disabled) | ema (an EMA LoRA adapter); fixed and ema need PEFT LoRA"}
    )
    cepo_distill_ema_rate: float = field(
        default=0.05, metadata={"help": "OPSD/SDPO ema teacher: theta_T <- (1 - rate) theta_T + rate theta"}
    )
    cepo_distill_loss_agg: str = field(
        default="token-mean",
        metadata={"help": "OPSD/SDPO topk / full mode: the divergence loss over an accumulation window: token-mean "
                          "(sum / tokens of rows with a teacher) | seq-mean-token-mean (mean over all rows of each "
                          "row's token-mean, rows without a teacher adding 0: the authors'); sampled_token: "
                          "token-mean"},
    )
    cepo_conspo_tau: float = field(default=10.0, metadata={"help": "ConSPO: contrastive temperature"})
    cepo_conspo_margin: float = field(default=0.01, metadata={"help": "ConSPO: target margin M"})
    cepo_conspo_margin_warmup_ratio: float = field(
        default=0.3, metadata={"help": "ConSPO: fraction of training over which the margin ramps to M"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        cfg = self.cepo_config()  # validate early, naming the key
        if get_method(cfg.method).one_update_per_rollout:
            self._check_one_update_per_rollout(cfg.method)
        self._warn_checkpoints_inside_rounds()

    def _warn_checkpoints_inside_rounds(self) -> None:
        """A checkpoint saved inside a generation round cannot be resumed (``CEPOTrainer`` refuses it: TRL would
        re-index the rounds); warn, in one line, when ``save_steps`` would save there."""
        per_round = self.steps_per_generation * self.num_iterations  # micro-steps of one generation round
        if self.save_strategy != "steps" or self.save_steps < 1 or per_round <= self.gradient_accumulation_steps:
            return
        if int(self.save_steps) * self.gradient_accumulation_steps % per_round:
            every = f"{per_round / self.gradient_accumulation_steps:g}"
            warnings.warn(
                f"save_steps={self.save_steps:g} saves checkpoints inside generation rounds (one round = {every} "
                f"optimizer steps), which cannot be resumed; set save_steps to a multiple of {every}", stacklevel=3,
            )

    def _check_one_update_per_rollout(self, method: str) -> None:
        """ConSPO's objective has no importance ratio: its advantages are its exact gradient at the rollout policy
        (ratio 1), so each rollout batch makes exactly one optimizer step, token-mean over the batch, and nothing in
        TRL's loss may reweight, clip or drop its tokens or add another gradient. One line per setting that would.

        ``mask_truncated_completions=True`` is allowed: a truncated rollout's completion mask is all zero, so it has no
        token in the loss and its score cannot carry a gradient; it is *absent* from its group (not a negative), and
        the others get the exact gradient of the objective over the untruncated rollouts
        (``cepo.algorithms.rollout_scores`` gives it a NaN score; a group left without a positive or a negative is
        skipped)."""
        if self.steps_per_generation != self.gradient_accumulation_steps or self.num_iterations != 1:
            raise ValueError(
                f"method {method!r} needs one optimizer step per generation round: set steps_per_generation = "
                f"gradient_accumulation_steps (got {self.steps_per_generation} and "
                f"{self.gradient_accumulation_steps}) and num_iterations=1 (got {self.num_iterations}); on "
                "cepo train: actor_rollout_ref.actor.ppo_mini_batch_size = data.train_batch_size, ppo_epochs=1"
            )
        exact = f"with cepo_method={method!r} (its advantages are the objective's exact gradient at ratio 1)"
        refusals = {
            "loss_type": (self.loss_type not in ("dapo", "vespo"),
                          f"must be 'dapo' (TRL's token-mean loss over the batch) {exact}, got {self.loss_type!r}"
                          + ("; cispo clamps the ratio at epsilon_high, scaling the gradient" if self.loss_type ==
                             "cispo" else "") + "; set loss_type='dapo'"),
            "beta": (self.beta != 0.0, f"must be 0 {exact}: the KL term adds a gradient that is not ConSPO's, "
                                       f"got {self.beta}; set beta=0"),
            "vllm_importance_sampling_correction": (
                self.use_vllm and self.vllm_importance_sampling_correction,
                f"must be False with use_vllm=True {exact}: it multiplies each token's gradient by the "
                "trainer/vLLM probability ratio; set vllm_importance_sampling_correction=False"),
            "top_entropy_quantile": (
                self.top_entropy_quantile < 1.0,
                f"must be 1.0 {exact}: {self.top_entropy_quantile} drops the low-entropy tokens from the loss, "
                "but the sequence score averages all of them; set top_entropy_quantile=1.0"),
            "off_policy_mask_threshold": (
                self.off_policy_mask_threshold is not None,
                f"must be None {exact}: it masks sequences of negative advantage by their drift from the rollout "
                f"policy; set off_policy_mask_threshold=None"),
            "entropy_coef": (
                self.entropy_coef != 0.0 or self.use_adaptive_entropy,
                f"must be 0 with use_adaptive_entropy=False {exact}: the entropy bonus adds a gradient that is not "
                "ConSPO's; set entropy_coef=0, use_adaptive_entropy=False"),
        }
        for key, (refused, message) in refusals.items():
            if refused:
                raise ValueError(f"{key} {message}")

    def cepo_config(self) -> CEPOConfig:
        """The engine-independent config these fields describe (validated)."""
        values: dict[str, Any] = {}
        for name, key in FIELD_KEYS.items():
            block, _, leaf = key.rpartition(".")
            (values.setdefault(block, {}) if block else values)[leaf] = getattr(self, name)
        return CEPOConfig.from_mapping(values)

    @staticmethod
    def fields_from_cepo(cfg: CEPOConfig) -> dict[str, object]:
        """``CEPOGRPOConfig`` keyword arguments for a ``CEPOConfig``."""
        out: dict[str, object] = {}
        for name, key in FIELD_KEYS.items():
            value: Any = cfg
            for part in key.split("."):
                value = getattr(value, part)
            out[name] = value
        return out
