"""Method registry: what each method needs from an engine, and its token advantages.

Every method is one :class:`MethodSpec`, registered with :func:`register_method` (the pattern of verl's
``register_adv_est``). The spec *declares* what an engine must provide — which teacher contexts (``pos``: r+,
the ground-truth answer; ``neg``: r-, a rejected rollout's answer; ``demo``: a successful rollout of the group,
SDPO), for which rollouts, where the credit reads the student log-probs P_S, and how the sequence advantage
is computed — and :func:`plan_teacher_passes` turns that declaration into the teacher rows of a batch. Both
engines schedule exactly what the plan says and then call :func:`compute_token_advantages`; no engine code
asks which method it runs.

All methods here produce (B, T) token advantages for the engine's unchanged policy-gradient loss:

* ``grpo``, ``rlsd``, ``cepo``: Eq. 1, Eq. 4, Eqs. 5 + 7 of the CEPO paper;
* ``opsd``, ``sdpo`` (sampled-token mode): ``A_t = (1 - w) A + w sg(log P_T(y_t) - log P_S(y_t))``, the
  policy-gradient form of the sampled reverse-KL self-distillation loss (:func:`sampled_token_advantage`);
  OPSD's teacher sees r+, SDPO's a successful peer rollout; ``w = 1`` (default) is pure distillation;
* ``conspo``: the ConSPO objective's exact score gradient at the rollout policy as a sequence advantage
  (:func:`cepo.algorithms.conspo.conspo_coefficients`), spread over each response's tokens so that a token-mean
  policy-gradient loss has ConSPO's gradient; it needs one update per rollout batch (no IS ratio in ConSPO).

OPSD and SDPO declare a ``distill_teacher`` (the teacher context they distil towards). In ``cepo.distill.mode``
``topk`` or ``full`` their distillation is a loss, not an advantage (:func:`loss_teacher` names the
context): the engine adds :func:`cepo.algorithms.divergence.topk_distillation_loss` (the teacher's top-k scored in
the teacher pass) or :func:`cepo.algorithms.divergence.logits_distillation_loss` (the teacher's logits from a forward
in the same micro-batch: the whole vocabulary, or the student's top-k) to its PG loss, whose advantage is then
GRPO's (``(1 - w) PG + w distill``). Nothing of size (B, T, V) is carried across the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_same_shape
from cepo.algorithms.advantages import group_advantages
from cepo.algorithms.evidence import contrastive_delta, modulate_advantages, rlsd_delta
from cepo.algorithms.metrics import credit_metrics
from cepo.algorithms.references import demonstration_rows, negative_hints, strip_thinking

HINT_KINDS = ("pos", "neg", "demo")
DISTILL_MODES = ("sampled_token", "topk", "full")
"""``cepo.distill.mode`` of the self-distillation methods: ``sampled_token`` (a per-token advantage in the PG loss,
both engines), ``topk`` (a divergence loss on a top-k support) or ``full`` (the whole-vocabulary divergence
loss); both engines."""
"""Teacher contexts: ``pos`` = r+ (ground-truth answer), ``neg`` = r- (a wrong answer of the group), ``demo`` = a
successful rollout of the group (SDPO's demonstration)."""


@dataclass
class CreditInputs:
    """Everything a credit method may read, for one batch of B rollouts with T response tokens."""

    advantages: torch.Tensor  # (B,) sequence advantages (Eq. 1, or the method's own sequence advantage)
    response_mask: torch.Tensor  # (B, T)
    lam: float
    eps_w: float
    logp_student: torch.Tensor | None = None  # (B, T) old log-probs, P_S
    logp_pos: torch.Tensor | None = None  # (B, T) P_T+ (hint = r+)
    logp_neg: torch.Tensor | None = None  # (B, T) P_T- (hint = r-)
    has_negative: torch.Tensor | None = None  # (B,) bool
    logp_demo: torch.Tensor | None = None  # (B, T) P_T under a successful peer rollout (SDPO)
    has_teacher: torch.Tensor | None = None  # (B,) bool: rows that got their distillation teacher pass
    num_tokens: int | None = None  # response tokens of the whole (global) batch, for ConSPO's token spread
    distill_mode: str = "sampled_token"  # cepo.distill.mode (DISTILL_MODES): topk = distillation is a loss term
    options: Mapping[str, float] = field(default_factory=dict)  # method settings, e.g. distill_weight


CreditFn = Callable[[CreditInputs], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass(frozen=True)
class MethodSpec:
    """What a method needs from an engine (see the module docstring)."""

    name: str
    credit: CreditFn
    hints: tuple[str, ...] = ()
    """Teacher contexts scored for each selected rollout (subset of :data:`HINT_KINDS`)."""
    teacher_rows: str = "nonzero_advantage"
    """Which rollouts get teacher passes: ``nonzero_advantage`` (A = 0 gives A_t = 0 whatever the teacher says)
    or ``all`` (distillation does not depend on A)."""
    student_rows: str = "none"
    """Where the credit reads P_S: ``none``, ``teacher`` (rows with a teacher pass), ``no_negative`` (rows with a
    teacher pass whose group has no r-: CEPO's RLSD fallback) or ``all``."""
    lambda_gated: bool = False
    """With lam = 0 the method is GRPO and needs no teacher pass (RLSD, CEPO)."""
    sequence_advantage: str = "grpo"
    """``grpo`` (Eq. 1 on the rewards) or ``conspo`` (needs P_S of every rollout: the sequence scores)."""
    one_update_per_rollout: bool = False
    """The method's objective has no importance ratio: one optimizer step per rollout batch (ConSPO)."""
    distill_teacher: str | None = None
    """Self-distillation (OPSD ``pos``, SDPO ``demo``): the teacher context the student is distilled towards. Such a
    method runs in either :data:`DISTILL_MODES` (``cepo.distill.mode``; :func:`loss_teacher`)."""


METHODS: dict[str, MethodSpec] = {}
CREDIT_REGISTRY: dict[str, CreditFn] = {}
TEACHER_PASSES: dict[str, tuple[str, ...]] = {}


def register_method(name: str, **spec: object) -> Callable[[CreditFn], CreditFn]:
    """Register a method under ``name`` with the :class:`MethodSpec` fields ``spec`` (its credit function is the
    decorated one)."""

    def decorator(fn: CreditFn) -> CreditFn:
        if name in METHODS and METHODS[name].credit is not fn:
            raise ValueError(f"method {name!r} is already registered")
        method = MethodSpec(name=name, credit=fn, **spec)  # type: ignore[arg-type]
        unknown = set(method.hints) - set(HINT_KINDS)
        if unknown:
            raise ValueError(f"method {name!r}: unknown teacher contexts {sorted(unknown)}; known: {HINT_KINDS}")
        if method.distill_teacher is not None and method.distill_teacher not in method.hints:
            raise ValueError(f"method {name!r}: distill_teacher {method.distill_teacher!r} is not one of its hints")
        METHODS[name] = method
        CREDIT_REGISTRY[name] = fn
        TEACHER_PASSES[name] = method.hints
        return fn

    return decorator


def get_method(name: str) -> MethodSpec:
    """Look up a registered method; the error lists the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}")
    return METHODS[name]


def get_credit_fn(name: str) -> CreditFn:
    """The credit function of a registered method."""
    return get_method(name).credit


def teacher_passes(method: str, lam: float) -> tuple[str, ...]:
    """The teacher contexts an engine must score for ``method`` at modulation strength ``lam``.

    For the lambda-gated methods (RLSD, CEPO), ``lam = 0`` makes Eq. 7 give ``A_t = A`` (GRPO) whatever the teacher
    says, so no pass is needed and :func:`compute_token_advantages` returns the GRPO advantage without reading any
    log-prob.
    """
    spec = get_method(method)
    return () if spec.lambda_gated and float(lam) == 0.0 else spec.hints


def loss_teacher(method: str, mode: str) -> str | None:
    """The teacher context whose distribution ``method``'s divergence loss needs in ``cepo.distill.mode`` ``mode``
    (``topk`` / ``full``: the engine adds that loss to the PG loss), or ``None`` when the method's whole loss is the
    engine's PG loss with its token advantages (``sampled_token``, or a method that does not distil)."""
    if mode not in DISTILL_MODES:
        raise ValueError(f"distill mode must be one of {DISTILL_MODES}, got {mode!r}")
    spec = get_method(method)
    return spec.distill_teacher if mode != "sampled_token" else None


def pg_mean_over_teacher_rows(method: str, mode: str, weight: float) -> bool:
    """Whether an engine's PG token-mean must count only the rows that have a teacher: pure sampled-token
    distillation (``weight = 1``), where the other rows' advantage is 0 (SDPO's ``self_distillation_mask`` in the
    denominator; OPSD gives every row a teacher). In ``topk`` / ``full`` mode the divergence loss does this itself.

    ``cepo.distill.loss_agg`` does not enter: it aggregates the divergence loss of ``topk`` / ``full`` mode, where this
    is False (and with ``weight < 1`` the PG term keeps the engine's own aggregation over all rows), and is refused in
    ``sampled_token`` mode unless ``token-mean`` (``CEPOConfig``). So the authors' counting of teacher-less rows
    (``seq-mean-token-mean``) lives in :func:`cepo.algorithms.loss_aggregation` alone, and the sampled-token PG mean
    stays SDPO's token-mean over ``response_mask × self_distillation_mask``."""
    return get_method(method).distill_teacher is not None and loss_teacher(method, mode) is None and weight == 1.0


# -- the plan: which teacher rows a batch needs ------------------------------------------------------------------
@dataclass
class TeacherPlan:
    """The teacher rows of one batch (rows are indices into the ``rows`` given to :func:`plan_teacher_passes`)."""

    jobs: list[tuple[str, int, str]]  # (hint kind, row, hint text)
    has_negative: list[bool]  # per row: an r- exists (CEPO; else the RLSD fallback)
    has_teacher: list[bool]  # per row: its distillation teacher row is scored (OPSD / SDPO)
    student_rows: list[int]  # rows whose P_S the credit reads


def plan_teacher_passes(
    method: str,
    lam: float,
    rows: Sequence[int],
    advantages: torch.Tensor | Sequence[float],
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    ground_truths: Sequence[str],
    answers: Sequence[str | None],
    texts: Sequence[str],
    neg_threshold: float = 0.5,
    require_answer: bool = True,
    negative_reference: str = "paper",
    success_threshold: float = 0.5,
    distill_mode: str = "sampled_token",
) -> TeacherPlan:
    """Teacher rows for ``rows`` of a batch, from the method's declaration (:class:`MethodSpec`).

    Args:
        method, lam: the method and this step's lambda (:func:`teacher_passes`).
        rows: the rows this caller scores (all rows, or one process's share of a gathered batch).
        advantages: (N,) sequence advantages of the whole batch (rows with A = 0 are skipped where declared).
        scores: (N,) rewards (NaN = unscorable); group_ids: N group ids.
        ground_truths: per row in ``rows``, the r+ text; answers: (N) extracted final answers (r- candidates);
        texts: (N) response texts (SDPO demonstrations, shown without their ``<think>`` blocks).
        neg_threshold, require_answer, negative_reference: the r- rule (``cepo.algorithms.negative_hints``).
        success_threshold: reward at which a rollout is a success (SDPO demonstrations).
        distill_mode: ``cepo.distill.mode``; in ``topk`` / ``full`` mode a self-distillation method reads no P_S.
    """
    spec = get_method(method)
    kinds = teacher_passes(method, lam)
    rows = list(rows)
    if len(ground_truths) != len(rows):
        raise ValueError(f"ground_truths has {len(ground_truths)} entries but rows has {len(rows)}")
    adv = [float(a) for a in (advantages.tolist() if isinstance(advantages, torch.Tensor) else advantages)]
    neg_hints = has_neg = None
    if "neg" in kinds:
        neg_hints, has_neg = negative_hints(answers, scores, group_ids, neg_threshold, require_answer,
                                            negative_reference)
    demos = demonstration_rows(scores, group_ids, success_threshold) if "demo" in kinds else None
    jobs: list[tuple[str, int, str]] = []
    has_negative = [bool(has_neg[r]) if has_neg is not None else False for r in rows]
    has_teacher = [False] * len(rows)
    for local, row in enumerate(rows):
        if spec.teacher_rows == "nonzero_advantage" and adv[row] == 0.0:
            continue
        if "pos" in kinds:
            jobs.append(("pos", local, str(ground_truths[local])))
            has_teacher[local] = True
        if neg_hints is not None and has_negative[local]:
            jobs.append(("neg", local, str(neg_hints[row])))
        if demos is not None and demos[row] is not None:
            jobs.append(("demo", local, strip_thinking(texts[demos[row]])))
            has_teacher[local] = True
    if loss_teacher(method, distill_mode) is not None:
        student = []  # the divergence loss replaces the sampled-token advantage, the only reader of P_S
    elif spec.student_rows == "all":
        student = list(range(len(rows)))
    elif spec.student_rows == "teacher":
        student = [i for i in range(len(rows)) if has_teacher[i]]
    elif spec.student_rows == "no_negative":
        student = [i for i in range(len(rows)) if has_teacher[i] and not has_negative[i]]
    else:
        student = []
    return TeacherPlan(jobs, has_negative, has_teacher, student if kinds or spec.student_rows == "all" else [])


# -- the credit functions ------------------------------------------------------------------------------------------
def _require(inputs: CreditInputs, method: str, *names: str) -> None:
    for name in names:
        if getattr(inputs, name) is None:
            raise ValueError(f"method {method!r} needs {name}; run its teacher pass first")


@register_method("grpo")
def grpo_credit(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GRPO: the sequence advantage of Eq. 1 on every response token."""
    mask = as_bool_mask("response_mask", inputs.response_mask)
    adv = inputs.advantages.detach().unsqueeze(-1).expand(mask.shape)
    return torch.where(mask, adv, torch.zeros_like(adv)), None


@register_method("rlsd", hints=("pos",), lambda_gated=True, student_rows="teacher")
def rlsd_credit(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RLSD, Eq. 4: weights from ``P_T+ / P_S``."""
    _require(inputs, "rlsd", "logp_pos", "logp_student")
    delta = rlsd_delta(inputs.logp_pos, inputs.logp_student, inputs.response_mask)
    return modulate_advantages(inputs.advantages, delta, inputs.response_mask, inputs.lam, inputs.eps_w), delta


@register_method("cepo", hints=("pos", "neg"), lambda_gated=True, student_rows="no_negative")
def cepo_credit(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CEPO, Eqs. 5 and 7: weights from ``P_T+ / P_T-``; RLSD for rows whose group has no r-."""
    _require(inputs, "cepo", "logp_pos", "logp_student", "has_negative")
    delta = contrastive_delta(
        inputs.logp_pos, inputs.logp_neg, inputs.logp_student, inputs.has_negative, inputs.response_mask
    )
    return modulate_advantages(inputs.advantages, delta, inputs.response_mask, inputs.lam, inputs.eps_w), delta


def _distillation_credit(inputs: CreditInputs, method: str, teacher: torch.Tensor | None) -> tuple[torch.Tensor, None]:
    """``(1 - w) A + w sg(log P_T - log P_S)`` on rows with a teacher pass, ``(1 - w) A`` elsewhere.

    In ``topk`` / ``full`` mode the distillation is a loss term (:func:`loss_teacher`) and the engine mixes
    ``(1 - w) PG + w distill`` itself: the credit is then the PG term's advantage, GRPO's ``A``."""
    from cepo.algorithms.divergence import sampled_token_advantage

    if inputs.distill_mode not in DISTILL_MODES:
        raise ValueError(f"distill_mode must be one of {DISTILL_MODES}, got {inputs.distill_mode!r}")
    if inputs.distill_mode != "sampled_token":
        return grpo_credit(inputs)[0], None

    _require(inputs, method, "logp_student", "has_teacher")
    if teacher is None:
        raise ValueError(f"method {method!r} needs its teacher log-probs; run its teacher pass first")
    weight = float(inputs.options.get("distill_weight", 1.0))
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {weight}")
    grpo, _ = grpo_credit(inputs)
    rows = torch.as_tensor(inputs.has_teacher, device=grpo.device).bool().unsqueeze(-1)
    distill = sampled_token_advantage(teacher, inputs.logp_student, inputs.response_mask)
    return (1.0 - weight) * grpo + weight * torch.where(rows, distill, torch.zeros_like(distill)), None


@register_method("opsd", hints=("pos",), teacher_rows="all", student_rows="teacher", distill_teacher="pos")
def opsd_credit(inputs: CreditInputs) -> tuple[torch.Tensor, None]:
    """OPSD, sampled-token mode: distillation towards the answer-conditioned teacher (context = prompt + r+)."""
    return _distillation_credit(inputs, "opsd", inputs.logp_pos)


@register_method("sdpo", hints=("demo",), teacher_rows="all", student_rows="teacher", distill_teacher="demo")
def sdpo_credit(inputs: CreditInputs) -> tuple[torch.Tensor, None]:
    """SDPO, sampled-token mode (its default, alpha = 1): distillation towards the teacher that sees a successful
    peer rollout; rows without one get no distillation signal."""
    return _distillation_credit(inputs, "sdpo", inputs.logp_demo)


@register_method("conspo", sequence_advantage="conspo", student_rows="all", one_update_per_rollout=True)
def conspo_credit(inputs: CreditInputs) -> tuple[torch.Tensor, None]:
    """ConSPO: a row's sequence advantage ``A_i = -dL/ds_i`` spread as ``A_i N / |o_i|`` over its tokens, so that the
    engine's token-mean policy gradient over N tokens equals ``-sum_i dL/ds_i grad s_i`` (``s_i`` the length-normalised
    log-prob, :func:`cepo.algorithms.conspo.conspo_scores`)."""
    _require(inputs, "conspo", "num_tokens")
    mask = as_bool_mask("response_mask", inputs.response_mask)
    lengths = mask.sum(-1).clamp(min=1).to(inputs.advantages.dtype)
    per_token = (inputs.advantages.detach() * float(inputs.num_tokens) / lengths).unsqueeze(-1).expand(mask.shape)
    return torch.where(mask, per_token, torch.zeros_like(per_token)), None


def rollout_scores(logp: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) length-normalised sequence log-probs (:func:`cepo.algorithms.conspo.conspo_scores`), NaN for a row with
    no response token (a padding row, or a completion masked out): such rows take no part in ConSPO's groups."""
    from cepo.algorithms.conspo import conspo_scores

    mask = as_bool_mask("response_mask", response_mask)
    rows = mask.any(-1)
    out = torch.full((mask.shape[0],), float("nan"), dtype=logp.dtype, device=logp.device)
    if rows.any():
        out[rows] = conspo_scores(logp[rows], mask[rows])
    return out


def sequence_advantages(
    method: str,
    rewards: torch.Tensor,
    group_ids: Sequence[Hashable],
    norm_by_std: bool = True,
    scores: torch.Tensor | None = None,
    options: Mapping[str, float] | None = None,
) -> torch.Tensor:
    """(N,) sequence advantages of a whole batch for ``method``: Eq. 1 (NaN rewards = unscorable, advantage 0), or
    ConSPO's ``-dL/ds`` at the rollout policy from the sequence scores ``scores`` (N,) (:func:`rollout_scores` of
    P_S; rows with a NaN reward or score take no part and get 0)."""
    spec = get_method(method)
    if spec.sequence_advantage == "grpo":
        return group_advantages(rewards, group_ids, norm_by_std=norm_by_std, skip_nan=True)
    from cepo.algorithms.conspo import conspo_coefficients

    if scores is None:
        raise ValueError(f"method {method!r} needs the sequence scores of every rollout (its P_S)")
    opts = dict(options or {})
    scored = ~torch.isnan(rewards) & ~torch.isnan(scores)
    out = torch.zeros_like(scores)
    index = torch.nonzero(scored).flatten()
    if index.numel():
        coefficients = conspo_coefficients(
            scores[index], rewards[index], [group_ids[i] for i in index.tolist()],
            tau=float(opts.get("tau", 10.0)), margin=float(opts.get("margin", 0.0)),
            threshold=float(opts.get("threshold", 0.5)),
        )
        out[index] = -coefficients.to(out.dtype)
    return out


def compute_token_advantages(method: str, inputs: CreditInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """Token advantages and credit metrics for ``method``.

    Returns ``(token_advantages (B, T), metrics)``; metrics carry ``lambda`` and, for the teacher-modulated methods
    while ``lam > 0``, :func:`cepo.algorithms.credit_metrics`. With ``lam = 0`` every lambda-gated method is GRPO
    (Eq. 7) and needs no teacher log-probs (see :func:`teacher_passes`).
    """
    spec = get_method(method)
    fn = spec.credit if teacher_passes(method, inputs.lam) or not spec.lambda_gated else grpo_credit
    check_2d("response_mask", inputs.response_mask)
    if inputs.advantages.dim() != 1 or inputs.advantages.shape[0] != inputs.response_mask.shape[0]:
        raise ValueError(
            f"advantages must have shape ({inputs.response_mask.shape[0]},), one per rollout, "
            f"got {tuple(inputs.advantages.shape)}"
        )
    check_same_shape("response_mask", inputs.response_mask, logp_student=inputs.logp_student,
                     logp_pos=inputs.logp_pos, logp_neg=inputs.logp_neg, logp_demo=inputs.logp_demo)
    token_adv, delta = fn(inputs)
    mask = as_bool_mask("response_mask", inputs.response_mask)
    metrics: dict[str, float] = {
        "lambda": float(inputs.lam),
        "token_adv_abs_mean": float(token_adv[mask].abs().mean()) if mask.any() else 0.0,
    }
    if delta is not None:
        metrics.update(credit_metrics(inputs.advantages, delta, inputs.response_mask, token_adv, inputs.eps_w))
    if inputs.has_negative is not None:
        metrics["has_negative_frac"] = float(torch.as_tensor(inputs.has_negative).float().mean())
    if inputs.has_teacher is not None and spec.teacher_rows == "all":
        metrics["has_teacher_frac"] = float(torch.as_tensor(inputs.has_teacher).float().mean())
    if spec.sequence_advantage == "conspo":
        metrics[CONSPO_NEG_PROB_METRIC] = conspo_negative_probability(inputs.advantages)
    return token_adv, metrics


CONSPO_NEG_PROB_METRIC = "conspo_neg_prob"
"""ConSPO's metric in place of the loss (:func:`conspo_negative_probability`): TRL's surrogate loss of ConSPO is 0 at
every step by construction (ratio 1, advantages that sum to 0 within each group)."""


def conspo_negative_probability(advantages: torch.Tensor) -> float:
    """Mean over the batch's contrastive groups of ``1 - P⁺`` (averaged over each group's positives): the probability
    ConSPO's InfoNCE still puts on the negatives: 0 once every positive outscores its negatives by far, ``N⁻/(N⁻+1)``
    when all scores are equal (no margin), 0 when no group has both a positive and a negative. Read off ConSPO's
    sequence advantages ``A = -dL/ds`` (:func:`sequence_advantages`): a positive's is ``(1 - P_i⁺)/(N⁺Q)``, so their
    sum over the batch is this mean (Q valid groups). With the rows of a batch split over processes it is this
    process's share."""
    values = advantages.detach().double()
    return float(values[values > 0].sum())
