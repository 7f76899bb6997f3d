"""The engine-independent ``cepo:`` config block shared by the verl and TRL engines.

Both engines read these keys with the same names, defaults and checks, so a method YAML
means the same thing on either engine. Defaults are the paper's (Sec. 4): lam0 0.5 decayed
linearly to 0 over 25 steps, eps_w 0.5 (the authors' scripts use 0.2; the paper reports 0.5),
r+ = ground-truth answer, r- = answer of the lowest-reward rejected rollout (score < 0.5).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cepo.algorithms import CREDIT_REGISTRY, DISTILL_MODES, METHODS, NEGATIVE_REFERENCES, LambdaSchedule, get_method
from cepo.algorithms.divergence import LOSS_AGGS, SUPPORTS
from cepo.algorithms.schedules import SCHEDULES
from cepo.teacher import DEFAULT_TEACHER_TEMPLATE, compile_template

_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "float": (int, float),
    "int": (int,),
    "bool": (bool,),
    "int | None": (int, type(None)),
    "float | None": (int, float, type(None)),
}
"""Accepted Python types per annotation of a ``CEPOConfig`` field (``from __future__ import annotations``
makes ``Field.type`` the annotation string)."""

_TYPE_WORDS: dict[tuple[type, ...], str] = {
    (str,): "a string",
    (int, float): "a number",
    (int,): "an integer",
    (bool,): "true or false",
    (int, type(None)): "an integer or null",
    (int, float, type(None)): "a number or null",
}


@dataclass
class RewardConfig:
    """Weights of the math verifier (EasyR1's geo3k default: 0.9 accuracy + 0.1 format)."""

    accuracy_weight: float = 0.9
    format_weight: float = 0.1


SDPO_TEMPLATE = "{{ prompt }}\nCorrect solution:\n\n{{ hint }}\n\nCorrectly solve the original question."
"""SDPO's reprompt (baselines.md §4a): the student prompt, a successful peer rollout, the instruction to solve."""


DISTILL_TEACHERS = ("live", "fixed", "ema")
"""``cepo.distill.teacher``: the live actor, the initial policy (LoRA with the adapter disabled), or an EMA of the
LoRA adapter (``fixed`` and ``ema``: LoRA only, both engines)."""


@dataclass
class DistillConfig:
    """OPSD / SDPO settings (``cepo.distill``; ``../shared/paper/baselines.md`` §3, §4)."""

    weight: float = 1.0
    """w in ``(1 - w) GRPO + w distillation``; 1 = pure distillation (OPSD's paper, SDPO's default)."""
    success_threshold: float = 0.5
    """SDPO: a rollout with reward at least this is a success, shown to the teacher of its group's other rollouts
    (SDPO's yaml uses 0.5, its dataclass 1.0)."""
    demo_template: str = SDPO_TEMPLATE
    """Jinja template of SDPO's teacher turn, with ``{{ prompt }}`` and ``{{ hint }}`` (the demonstration)."""
    mode: str = "sampled_token"
    """``sampled_token`` (both engines): the per-token advantage ``sg(log P_T - log P_S)`` in the unchanged PG loss
    (SDPO's TRL default, OPSD's tinker loss). ``topk``: the divergence on a top-k support (``support``),
    mixed as ``(1 - weight) PG + weight distill`` (OPSD ``--top_k_loss``: the teacher's top-k; SDPO's fork: the
    student's). ``full``: the whole-vocabulary divergence (OPSD's default), from the teacher's logits
    of a forward in the same micro-batch, chunked over T (no (B, T, V) tensor is carried across the batch)."""
    topk: int = 100
    """``topk`` mode: k, the most likely tokens per response token (SDPO 100; OPSD's top-k script 50)."""
    support: str = "teacher"
    """``topk`` mode: whose top-k tokens form the support: ``teacher`` (OPSD ``--top_k_loss``; scored once in the
    teacher pass) or ``student`` (SDPO's fork: the student's current top-k, so the teacher forward runs in the same
    micro-batch as the loss, as in ``full`` mode)."""
    alpha: float = 0.5
    """``topk`` mode: generalized JSD alpha (OPSD's beta): 0 forward KL(T||S), 1 reverse KL(S||T); 0.5 as the OPSD
    scripts and SDPO yaml."""
    tail: bool = True
    """``topk`` mode: add one tail category with the mass outside the top-k (SDPO ``distillation_add_tail``);
    false = renormalise both distributions on the top-k (OPSD)."""
    is_clip: float | None = 2.0
    """``topk`` mode: weight each token's divergence by SDPO's clipped importance ratio ``min(π_θ/π_old, is_clip)``
    where the engine has the rollout policy's log-probs (an update after the first on a rollout batch); ``None``
    = no correction (SDPO ``distillation_is_clip`` 2.0). ``sampled_token`` goes through the PPO-clip loss, whose
    ratio already corrects for it."""
    teacher: str = "live"
    """``live``: the teacher is the current actor. ``fixed`` (TRL with LoRA only): the initial policy, i.e. the
    model with the LoRA adapter disabled (OPSD ``--fixed_teacher``). ``ema`` (TRL with LoRA only): a second LoRA
    adapter, initialised from the trained one at the first step and updated after every optimizer step (SDPO's
    default teacher)."""
    ema_rate: float = 0.05
    """``ema`` teacher: ``theta_T <- (1 - rate) theta_T + rate theta`` (SDPO ``teacher_update_rate`` 0.05; OPSD's
    ``ema_decay`` 0.999 is rate 0.001)."""
    loss_agg: str = "token-mean"
    """``topk`` / ``full`` mode: how the divergence loss averages over a mini-batch (verl) / accumulation window
    (TRL), all processes: ``token-mean`` ``Σ m·ρ·D / N`` (N = response tokens of the rows that have a teacher) or
    ``seq-mean-token-mean`` ``(1/R) Σ_r (Σ_t m·ρ·D_{r,t}) / L_r`` (R = all rows, those without a teacher adding 0;
    L_r = row r's response tokens): the authors' objective (lasgroup/SDPO and siyan-zhao/OPSD run one sequence per
    micro-batch and average over gradient accumulation; configs/opsd.yaml and sdpo.yaml set it).
    ``sampled_token`` mode must keep ``token-mean`` (its PG loss uses the engine's own aggregation)."""


@dataclass
class ConSPOConfig:
    """ConSPO settings (``cepo.conspo``; its paper's values: tau 10, M 0.01, warm-up ratio 0.3). Positives are
    rollouts with reward at least ``cepo.neg_threshold``."""

    tau: float = 10.0
    """Contrastive temperature."""
    margin: float = 0.01
    """Target margin M of the half-cosine curriculum."""
    margin_warmup_ratio: float = 0.3
    """Fraction of training over which the margin ramps from 0 to M."""


_BLOCKS: dict[str, type] = {"reward": RewardConfig, "distill": DistillConfig, "conspo": ConSPOConfig}
"""Nested blocks of the ``cepo:`` config."""


@dataclass
class CEPOConfig:
    """Credit-assignment settings (the ``cepo:`` block of every method YAML)."""

    method: str = "cepo"
    """``grpo`` | ``rlsd`` | ``cepo`` | ``opsd`` | ``sdpo`` | ``conspo`` (``cepo.algorithms.METHODS``)."""
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
    negative_reference: str = "paper"
    """Which wrong answer r- carries: ``paper`` (the group's lowest-reward rejected rollout), ``own_answer`` (a
    rejected rollout contrasts with its own answer), ``most_frequent`` (``cepo.algorithms.NEGATIVE_REFERENCES``)."""
    teacher_max_prompt_length: int | None = None
    """Fail when a teacher prompt (hint included) is longer than this many tokens."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    """OPSD / SDPO settings (divergence mode, top-k, EMA teacher)."""
    conspo: ConSPOConfig = field(default_factory=ConSPOConfig)
    """ConSPO settings."""

    def __post_init__(self) -> None:
        for name, kind in _BLOCKS.items():
            if isinstance(getattr(self, name), Mapping):
                setattr(self, name, kind(**getattr(self, name)))
        self.validate()

    def _check_types(self) -> None:
        """Raise ``ValueError`` naming the ``cepo.<key>`` whose value has the wrong type (e.g. ``cepo.lam0=``
        gives the empty string, which would otherwise fail later with a bare ``TypeError``)."""
        expected: dict[str, tuple[type, ...]] = {f.name: _FIELD_TYPES[f.type] for f in dataclasses.fields(self)
                                                 if f.type in _FIELD_TYPES}
        values = {name: getattr(self, name) for name in expected}
        for block in _BLOCKS:
            for f in dataclasses.fields(getattr(self, block)):
                expected[f"{block}.{f.name}"] = _FIELD_TYPES[f.type]
                values[f"{block}.{f.name}"] = getattr(getattr(self, block), f.name)
        for name, value in values.items():
            kinds = expected[name]
            if value is None and type(None) in kinds:
                continue
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
                raise ValueError(f"cepo.{name} must be {_TYPE_WORDS[kinds]}, got {value!r}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the ``cepo.<key>`` that has the wrong type or is out of range."""
        self._check_types()
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
        self._check_lambda_not_always_zero()
        if self.negative_reference not in NEGATIVE_REFERENCES:
            raise ValueError(
                f"cepo.negative_reference must be one of {list(NEGATIVE_REFERENCES)}, got {self.negative_reference!r}"
            )
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
        if not 0.0 <= self.distill.weight <= 1.0:
            raise ValueError(f"cepo.distill.weight must be in [0, 1], got {self.distill.weight}")
        try:
            compile_template(self.distill.demo_template)
        except ValueError as err:
            raise ValueError(f"cepo.distill.demo_template: {err}") from err
        self._validate_distill()
        if self.conspo.tau <= 0:
            raise ValueError(f"cepo.conspo.tau must be > 0, got {self.conspo.tau}")
        if self.conspo.margin < 0:
            raise ValueError(f"cepo.conspo.margin must be >= 0, got {self.conspo.margin}")
        if not 0.0 < self.conspo.margin_warmup_ratio <= 1.0:
            raise ValueError(
                f"cepo.conspo.margin_warmup_ratio must be in (0, 1], got {self.conspo.margin_warmup_ratio}"
            )

    def _check_lambda_not_always_zero(self) -> None:
        """A lambda-gated method (RLSD, CEPO) with lambda 0 at every step is GRPO (Eq. 7 gives ``A_t = A``): refuse
        the settings that make it so (``lam0 = 0``; the linear schedule over ``warmup_steps = 0``), naming the fix."""
        if not get_method(self.method).lambda_gated:
            return
        if self.lam0 == 0:
            raise ValueError(
                f"cepo.lam0=0 makes lambda 0 at every step, so cepo.method={self.method} would train plain GRPO "
                f"(Eq. 7); set cepo.method=grpo (and algorithm.adv_estimator=grpo) for GRPO, or cepo.lam0 > 0"
            )
        if self.lambda_schedule == "linear" and self.warmup_steps == 0:
            raise ValueError(
                f"cepo.warmup_steps=0 with cepo.lambda_schedule=linear makes lambda 0 at every step, so "
                f"cepo.method={self.method} would train plain GRPO; set cepo.lambda_schedule=constant (lambda = "
                f"cepo.lam0 throughout), cepo.warmup_steps > 0, or cepo.method=grpo for GRPO"
            )

    def _validate_distill(self) -> None:
        distill = self.distill
        if distill.mode not in DISTILL_MODES:
            raise ValueError(f"cepo.distill.mode must be one of {list(DISTILL_MODES)}, got {distill.mode!r}")
        if distill.topk < 1:
            raise ValueError(f"cepo.distill.topk must be >= 1, got {distill.topk}")
        if not 0.0 <= distill.alpha <= 1.0:
            raise ValueError(f"cepo.distill.alpha must be in [0, 1] (0 forward KL, 1 reverse KL), got {distill.alpha}")
        if distill.is_clip is not None and not distill.is_clip > 0:
            raise ValueError(f"cepo.distill.is_clip must be > 0 or null (no correction), got {distill.is_clip!r}")
        if distill.support not in SUPPORTS:
            raise ValueError(f"cepo.distill.support must be one of {list(SUPPORTS)}, got {distill.support!r}")
        if distill.teacher not in DISTILL_TEACHERS:
            raise ValueError(f"cepo.distill.teacher must be one of {list(DISTILL_TEACHERS)}, got {distill.teacher!r}")
        if not 0.0 <= distill.ema_rate <= 1.0:
            raise ValueError(f"cepo.distill.ema_rate must be in [0, 1], got {distill.ema_rate}")
        if distill.loss_agg not in LOSS_AGGS:
            raise ValueError(f"cepo.distill.loss_agg must be one of {list(LOSS_AGGS)}, got {distill.loss_agg!r}")
        if get_method(self.method).distill_teacher is None:
            distilling = ", ".join(sorted(m for m, spec in METHODS.items() if spec.distill_teacher is not None))
            for key, value, default in (("mode", distill.mode, "sampled_token"), ("teacher", distill.teacher, "live"),
                                        ("loss_agg", distill.loss_agg, "token-mean")):
                if value != default:
                    raise ValueError(
                        f"cepo.distill.{key}={value} applies to the self-distillation methods ({distilling}) only; "
                        f"cepo.method is {self.method!r}: remove it or set cepo.distill.{key}={default}"
                    )
        if distill.mode == "sampled_token" and distill.loss_agg != "token-mean":
            raise ValueError(
                f"cepo.distill.loss_agg={distill.loss_agg} applies to cepo.distill.mode=topk|full (the divergence "
                "loss) only; with mode=sampled_token the PG loss uses the engine's own aggregation: set "
                "cepo.distill.loss_agg=token-mean"
            )

    @property
    def schedule(self) -> LambdaSchedule:
        return LambdaSchedule(self.lambda_schedule, self.lam0, self.warmup_steps)

    def template_for(self, hints: tuple[str, ...]) -> str:
        """The teacher template of a method's teacher contexts: SDPO's demonstrations use ``distill.demo_template``,
        r+ / r- use ``teacher_template`` (Appendix B)."""
        return self.distill.demo_template if "demo" in hints else self.teacher_template

    def credit_options(self, progress: float = 0.0) -> dict[str, float]:
        """The method settings ``cepo.algorithms`` reads (``CreditInputs.options``), at training progress in [0, 1]
        (ConSPO's margin curriculum)."""
        from cepo.algorithms.conspo import conspo_margin

        margin = conspo_margin(min(max(progress, 0.0), 1.0), self.conspo.margin, self.conspo.margin_warmup_ratio)
        return {"distill_weight": self.distill.weight, "tau": self.conspo.tau, "margin": margin,
                "threshold": self.neg_threshold}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> CEPOConfig:
        """Build from a plain mapping (e.g. ``OmegaConf.to_container(cfg.cepo)``); unknown keys
        raise with the list of known ones, so a misspelt key never passes silently."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            close = [m for key in unknown for m in difflib.get_close_matches(key, sorted(known), n=1)]
            hint = f"did you mean cepo.{', cepo.'.join(close)}? " if close else ""
            raise ValueError(f"unknown key(s) cepo.{', cepo.'.join(unknown)}; {hint}known keys: {sorted(known)}")
        blocks: dict[str, Any] = {}
        for block, kind in _BLOCKS.items():
            given = values.pop(block, None) or {}
            block_known = {f.name for f in dataclasses.fields(kind)}
            if not isinstance(given, Mapping):
                raise ValueError(f"cepo.{block} must be a mapping with keys {sorted(block_known)}, got {given!r}")
            bad = sorted(set(given) - block_known)
            if bad:
                raise ValueError(
                    f"unknown key(s) cepo.{block}.{f', cepo.{block}.'.join(bad)}; known: {sorted(block_known)}"
                )
            blocks[block] = kind(**given)
        return cls(**values, **blocks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
