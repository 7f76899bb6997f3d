"""``CEPOGRPOConfig``: TRL's ``GRPOConfig`` plus the CEPO/RLSD fields (see ``cepo.config.CEPOConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from cepo.config import CEPOConfig, RewardConfig
from cepo.teacher import DEFAULT_TEACHER_TEMPLATE


@dataclass
class CEPOGRPOConfig(GRPOConfig):
    """GRPOConfig with the credit-assignment settings, prefixed ``cepo_`` to stay clear of TRL's own
    fields (``warmup_steps`` is the learning-rate warm-up there)."""

    cepo_method: str = field(default="cepo", metadata={"help": "grpo | rlsd | cepo"})
    cepo_lam0: float = field(default=0.5, metadata={"help": "initial lambda (Eq. 7)"})
    cepo_lambda_schedule: str = field(default="linear", metadata={"help": "linear | constant"})
    cepo_warmup_steps: int = field(default=25, metadata={"help": "T_warm: steps for lambda to decay to 0"})
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

    def __post_init__(self) -> None:
        super().__post_init__()
        self.cepo_config()  # validate early, naming the key

    def cepo_config(self) -> CEPOConfig:
        """The engine-independent config these fields describe (validated)."""
        return CEPOConfig(
            method=self.cepo_method,
            lam0=self.cepo_lam0,
            lambda_schedule=self.cepo_lambda_schedule,
            warmup_steps=self.cepo_warmup_steps,
            eps_w=self.cepo_eps_w,
            teacher_template=self.cepo_teacher_template,
            teacher_sees_image=self.cepo_teacher_sees_image,
            neg_threshold=self.cepo_neg_threshold,
            neg_requires_answer=self.cepo_neg_requires_answer,
            negative_reference=self.cepo_negative_reference,
            teacher_max_prompt_length=self.cepo_teacher_max_prompt_length,
            reward=RewardConfig(self.cepo_accuracy_weight, self.cepo_format_weight),
        )

    @staticmethod
    def fields_from_cepo(cfg: CEPOConfig) -> dict[str, object]:
        """``CEPOGRPOConfig`` keyword arguments for a ``CEPOConfig``."""
        return {
            "cepo_method": cfg.method,
            "cepo_lam0": cfg.lam0,
            "cepo_lambda_schedule": cfg.lambda_schedule,
            "cepo_warmup_steps": cfg.warmup_steps,
            "cepo_eps_w": cfg.eps_w,
            "cepo_teacher_template": cfg.teacher_template,
            "cepo_teacher_sees_image": cfg.teacher_sees_image,
            "cepo_neg_threshold": cfg.neg_threshold,
            "cepo_neg_requires_answer": cfg.neg_requires_answer,
            "cepo_negative_reference": cfg.negative_reference,
            "cepo_teacher_max_prompt_length": cfg.teacher_max_prompt_length,
            "cepo_accuracy_weight": cfg.reward.accuracy_weight,
            "cepo_format_weight": cfg.reward.format_weight,
        }
