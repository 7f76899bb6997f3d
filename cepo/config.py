"""The engine-independent ``cepo:`` config block shared by the verl and TRL engines.

Both engines read these keys with the same names, defaults and checks, so a method YAML
means the same thing on either engine. Defaults are the paper's (Sec. 4): lam0 0.5 decayed
linearly to 0 over 25 steps, eps_w 0.5 (the authors' scripts use 0.2; the paper reports 0.5),
r+ = ground-truth answer, r- = answer of the lowest-reward rejected rollout (score < 0.5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cepo.algorithms import CREDIT_REGISTRY, LambdaSchedule
from cepo.algorithms.schedules import SCHEDULES
from cepo.teacher import DEFAULT_TEACHER_TEMPLATE, compile_template


@dataclass
class RewardConfig:
    """Weights of the math verifier (EasyR1's geo3k default: 0.9 accuracy + 0.1 format)."""

    accuracy_weight: float = 0.9
    format_weight: float = 0.1


@dataclass
class CEPOConfig:
    """Credit-assignment settings (the ``cepo:`` block of every method YAML)."""

    method: str = "cepo"
    """``grpo`` | ``rlsd`` | ``cepo``."""
    lam0: float = 0.5
    """Initial modulation strength lambda_0 (Eq. 7)."""
    lambda_schedule: str = "linear"
    """``linear`` (decay to 0 over ``warmup_steps``) or ``constant``."""
    warmup_steps: int = 25
    """T_warm: steps over which lambda decays to 0."""
    eps_w: float = 0.5
    """Weight clip half-width epsilon_w (Eq. 7), in (0, 1)."""
    teacher_template: str = DEFAULT_TEACHER_TEMPLATE
    """Jinja template for the teacher's user turn, with ``{{ prompt }}`` and ``{{ hint }}`` (Appendix B)."""
    teacher_sees_image: bool = True
    """Keep the image in the teacher context (False = the authors' text-only teacher)."""
    neg_threshold: float = 0.5
    """A rollout with reward below this is rejected (a candidate for r-)."""
    neg_requires_answer: bool = True
    """Skip rejected rollouts without a boxed answer when choosing r- (else their hint is empty)."""
    teacher_max_prompt_length: int | None = None
    """Fail when a teacher prompt (hint included) is longer than this many tokens."""
    reward: RewardConfig = field(default_factory=RewardConfig)

    def __post_init__(self) -> None:
        if isinstance(self.reward, Mapping):
            self.reward = RewardConfig(**self.reward)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the ``cepo.<key>`` that is out of range."""
        if self.method not in CREDIT_REGISTRY:
            raise ValueError(f"cepo.method must be one of {sorted(CREDIT_REGISTRY)}, got {self.method!r}")
        if not 0.0 <= self.lam0 <= 1.0:
            raise ValueError(f"cepo.lam0 must be in [0, 1] (Theorem 1), got {self.lam0}")
        if self.lambda_schedule not in SCHEDULES:
            raise ValueError(f"cepo.lambda_schedule must be one of {SCHEDULES}, got {self.lambda_schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"cepo.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.eps_w < 1.0:
            raise ValueError(f"cepo.eps_w must be in (0, 1) (Theorem 1), got {self.eps_w}")
        if self.teacher_max_prompt_length is not None and self.teacher_max_prompt_length <= 0:
            raise ValueError(
                f"cepo.teacher_max_prompt_length must be > 0 or null, got {self.teacher_max_prompt_length}"
            )
        try:
            compile_template(self.teacher_template)
        except ValueError as err:
            raise ValueError(f"cepo.teacher_template: {err}") from err
        for name in ("accuracy_weight", "format_weight"):
            value = getattr(self.reward, name)
            if value < 0:
                raise ValueError(f"cepo.reward.{name} must be >= 0, got {value}")

    @property
    def schedule(self) -> LambdaSchedule:
        return LambdaSchedule(self.lambda_schedule, self.lam0, self.warmup_steps)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> CEPOConfig:
        """Build from a plain mapping (e.g. ``OmegaConf.to_container(cfg.cepo)``); unknown keys
        raise with the list of known ones, so a misspelt key never passes silently."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown key(s) cepo.{', cepo.'.join(unknown)}; known keys: {sorted(known)}")
        reward = values.pop("reward", None) or {}
        reward_known = {f.name for f in dataclasses.fields(RewardConfig)}
        bad = sorted(set(reward) - reward_known)
        if bad:
            raise ValueError(f"unknown key(s) cepo.reward.{', cepo.reward.'.join(bad)}; known: {sorted(reward_known)}")
        return cls(**values, reward=RewardConfig(**reward))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
