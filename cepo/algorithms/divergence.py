"""Per-token divergences between the student and a teacher distribution (OPSD, SDPO).

These are the losses of the *loss-level* self-distillation baselines (``../shared/paper/baselines.md``
§3 OPSD, §4 SDPO), the methods whose gradient the CEPO paper contrasts with its own (Eq. 3 vs
Theorem 1 (ii)): a divergence over the vocabulary sends gradient along ``∇ log π(v)`` of every token
``v``, weighted by the answer-conditioned teacher, while CEPO's gradient acts only through the
sampled tokens.

Conventions (TRL's ``trl.experimental.sdpo``; OPSD's β plays ``alpha``'s role):

* ``alpha = 0``: forward KL, ``KL(P_T ‖ P_S) = Σ_v P_T(v) log(P_T(v) / P_S(v))``;
* ``alpha = 1``: reverse KL, ``KL(P_S ‖ P_T)``;
* otherwise the generalized Jensen-Shannon divergence with mixture ``M = (1 - alpha)·P_S + alpha·P_T``:
  ``JSD_alpha = (1 - alpha)·KL(P_S ‖ M) + alpha·KL(P_T ‖ M)``.

Every function takes log-probabilities over the last dimension ``(..., V)``: the full vocabulary, or a
top-k support (renormalised, or with one extra tail category, see :func:`with_tail_bucket`). Nothing
is detached inside: the gradient reaches whichever inputs require it. Self-distillation treats the
teacher as a constant, so callers pass ``teacher_log_probs.detach()`` (or compute it under
``torch.no_grad()``) and the gradient then flows through ``student_log_probs`` only.
"""

from __future__ import annotations

import math

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_finite, check_same_shape

SUPPORTS = ("teacher", "student")


def _check_log_probs(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() < 1 or tensor.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1 categories, got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor of log-probabilities, got dtype {tensor.dtype}")


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(
            f"alpha must be in [0, 1] (0 = forward KL(T‖S), 1 = reverse KL(S‖T), between = JSD), got {alpha}"
        )
    return alpha


def _kl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-category terms ``p·(log p - log q)`` of ``KL(p ‖ q)``, with ``0·log 0 = 0``.

    Categories where ``p = 0`` (``log p = -inf``, e.g. a masked vocabulary entry or an empty tail bucket)
    contribute exactly 0 to the value and to the gradient, instead of the NaN of ``0·(-inf)``.
    """
    p = log_p.exp()
    zero = p == 0
    diff = torch.where(zero, torch.zeros_like(log_p), log_p - log_q)
    return p * diff


def token_divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Divergence between ``P_S`` and ``P_T`` per position, summed over the last dim (OPSD / SDPO loss).

    ``alpha = 0``: ``KL(P_T ‖ P_S)``; ``alpha = 1``: ``KL(P_S ‖ P_T)``; otherwise
    ``(1 - alpha)·KL(P_S ‖ M) + alpha·KL(P_T ‖ M)`` with ``M = (1 - alpha)·P_S + alpha·P_T`` (the
    generalized JSD of GKD/OPSD with β = ``alpha``). Numerically equal to TRL's
    ``trl.experimental.sdpo.loss_utils.compute_divergence``; in addition a zero-probability category
    (``-inf`` log-prob) contributes 0 rather than NaN.

    Gradient: nothing is detached here. With ``teacher_log_probs`` detached by the caller, the gradient
    w.r.t. the student logits is the vocabulary-wide sum of the CEPO paper's Eq. 3 (for ``alpha = 0``:
    ``softmax(z_S) - P_T = -Σ_v P_T(v)·∇_z log P_S(v)``).

    Args:
        student_log_probs: (..., V) log-probabilities of the student (full vocabulary or a support).
        teacher_log_probs: (..., V) log-probabilities of the teacher on the same categories.
        alpha: interpolation in [0, 1] (TRL's ``distillation_alpha``, OPSD's ``beta``).

    Returns:
        (...) divergence per position (the last dim summed), in the inputs' dtype.
    """
    _check_log_probs("student_log_probs", student_log_probs)
    _check_log_probs("teacher_log_probs", teacher_log_probs)
    if tuple(student_log_probs.shape) != tuple(teacher_log_probs.shape):
        raise ValueError(
            f"teacher_log_probs has shape {tuple(teacher_log_probs.shape)} but student_log_probs has shape "
            f"{tuple(student_log_probs.shape)}; both must be (..., V) over the same categories"
        )
    alpha = _check_alpha(alpha)
    if alpha == 0.0:
        terms = _kl_terms(teacher_log_probs, student_log_probs)
    elif alpha == 1.0:
        terms = _kl_terms(student_log_probs, teacher_log_probs)
    else:
        # log M = logsumexp(log P_S + log(1 - alpha), log P_T + log(alpha)), stable for any log-probs
        log_mixture = torch.logaddexp(student_log_probs + math.log1p(-alpha), teacher_log_probs + math.log(alpha))
        terms = (1.0 - alpha) * _kl_terms(student_log_probs, log_mixture) + alpha * _kl_terms(
            teacher_log_probs, log_mixture
        )
    return terms.sum(dim=-1)


# --------------------------------------------------------------------------------------------------
# Top-k supports (OPSD ``--top_k_loss``: the teacher's top-k, renormalised; SDPO: the student's top-k,
# renormalised or with a tail bucket).
# --------------------------------------------------------------------------------------------------


def topk_support(log_probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely categories of one distribution: ``(values, indices)``, each (..., k).

    ``values`` are the (un-renormalised) log-probs at ``indices``; they keep the gradient of ``log_probs``.
    """
    _check_log_probs("log_probs", log_probs)
    vocab = log_probs.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ValueError(f"k must be an int in [1, {vocab}] (the size of the last dim of log_probs), got {k!r}")
    values, indices = torch.topk(log_probs, k=k, dim=-1)
    return values, indices


def gather_support(log_probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Log-probs of ``log_probs`` (..., V) at the support ``indices`` (..., k): returns (..., k)."""
    _check_log_probs("log_probs", log_probs)
    if not isinstance(indices, torch.Tensor) or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError("indices must be an integer (int64) tensor of vocabulary ids, e.g. from topk_support")
    if indices.dim() != log_probs.dim() or tuple(indices.shape[:-1]) != tuple(log_probs.shape[:-1]):
        raise ValueError(
            f"indices has shape {tuple(indices.shape)} but log_probs has shape {tuple(log_probs.shape)}; "
            "indices must be (..., k) with the leading dims of log_probs"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= log_probs.shape[-1]):
        raise ValueError(f"indices must lie in [0, {log_probs.shape[-1]}) (the vocabulary of log_probs)")
    return torch.gather(log_probs, dim=-1, index=indices.long())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (Mächler's log1mexp)."""
    near_zero = x > -math.log(2.0)
    # each branch is evaluated where it is accurate; the other branch's input is replaced by a safe value
    a = torch.where(near_zero, x, torch.full_like(x, -1.0))
    b = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(b)))


def with_tail_bucket(log_probs_on_support: torch.Tensor) -> torch.Tensor:
    """Append the leftover mass as one extra category: (..., k) -> (..., k + 1) (SDPO ``add_tail``).

    ``log_probs_on_support`` are true log-probs of a subset of the vocabulary, so they sum (in probability)
    to the captured mass ``P_k <= 1``; the new last category is ``log(1 - P_k)`` and the result is a
    distribution that sums to 1. ``log P_k`` is clamped to ``<= -eps`` of the dtype (``finfo.eps``:
    the resolution of a probability near 1), so a support that holds all the mass gets a tail of about
    ``log(eps)`` instead of ``-inf`` (whose gradient would be infinite).
    """
    _check_log_probs("log_probs_on_support", log_probs_on_support)
    log_mass = torch.logsumexp(log_probs_on_support, dim=-1, keepdim=True)
    log_mass = log_mass.clamp(max=-torch.finfo(log_probs_on_support.dtype).eps)
    return torch.cat([log_probs_on_support, _log1mexp(log_mass)], dim=-1)


def renormalize(log_probs_on_support: torch.Tensor) -> torch.Tensor:
    """Renormalise log-probs on a support to a distribution over it: ``l - logsumexp(l)``, (..., k)."""
    _check_log_probs("log_probs_on_support", log_probs_on_support)
    return log_probs_on_support - torch.logsumexp(log_probs_on_support, dim=-1, keepdim=True)


def _support_divergence(
    student_on_support: torch.Tensor, teacher_on_support: torch.Tensor, alpha: float, tail: bool
) -> torch.Tensor:
    if tail:
        return token_divergence(with_tail_bucket(student_on_support), with_tail_bucket(teacher_on_support), alpha)
    return token_divergence(renormalize(student_on_support), renormalize(teacher_on_support), alpha)


def topk_divergence(
    student_log_probs: torch.Tensor,
    teacher_log_probs: torch.Tensor,
    k: int,
    alpha: float,
    support: str = "teacher",
    tail: bool = False,
) -> torch.Tensor:
    """:func:`token_divergence` restricted to a top-k support of full (..., V) log-probs; returns (...).

    ``support="teacher"`` takes the teacher's top-k tokens (OPSD ``--top_k_loss``), ``"student"`` the
    student's (SDPO ``distillation_topk``). Both distributions are gathered on that support, then either
    renormalised over it (``tail=False``: the divergence of the top-k conditionals; OPSD, SDPO without tail)
    or given one tail category holding the rest of the mass (``tail=True``: k + 1 categories, no
    renormalisation; SDPO ``distillation_add_tail``). With ``k = V`` and ``tail=False`` this is the
    full-vocabulary divergence.
    """
    _check_log_probs("student_log_probs", student_log_probs)
    _check_log_probs("teacher_log_probs", teacher_log_probs)
    if tuple(student_log_probs.shape) != tuple(teacher_log_probs.shape):
        raise ValueError(
            f"teacher_log_probs has shape {tuple(teacher_log_probs.shape)} but student_log_probs has shape "
            f"{tuple(student_log_probs.shape)}; both must be full (..., V) log-probs"
        )
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS} (whose top-k tokens form the support), got {support!r}")
    _check_alpha(alpha)
    chooser = teacher_log_probs if support == "teacher" else student_log_probs
    _, indices = topk_support(chooser.detach(), k)
    return _support_divergence(
        gather_support(student_log_probs, indices), gather_support(teacher_log_probs, indices), alpha, tail
    )


def divergence_on_teacher_topk(
    student_log_probs_full: torch.Tensor,
    teacher_topk_logps: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    alpha: float,
    tail: bool = False,
) -> torch.Tensor:
    """Top-k divergence from the teacher's precomputed top-k (the engines' path); returns (...).

    The engines compute the teacher's top-k once in the teacher pass (``teacher_topk_logps``: the
    teacher's full-vocabulary log-probs at ``teacher_topk_indices``, both (..., k)) and gather the
    student's (..., V) log-probs on those ids here. Equal to
    ``topk_divergence(student, teacher, k, alpha, support="teacher", tail=tail)``.
    """
    _check_log_probs("teacher_topk_logps", teacher_topk_logps)
    shape = tuple(teacher_topk_logps.shape)
    if not isinstance(teacher_topk_indices, torch.Tensor) or tuple(teacher_topk_indices.shape) != shape:
        raise ValueError(f"teacher_topk_indices must be a tensor of the shape of teacher_topk_logps, {shape}")
    _check_alpha(alpha)
    student_on_support = gather_support(student_log_probs_full, teacher_topk_indices)
    return _support_divergence(student_on_support, teacher_topk_logps, alpha, tail)


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_topk_logps: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    loss_mask: torch.Tensor,
    alpha: float,
    tail: bool,
    normalizer: float | torch.Tensor,
    is_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k self-distillation loss of a batch (OPSD ``--top_k_loss``; SDPO ``topk`` with the teacher's support):
    ``Σ_{b,t} mask_{b,t}·ρ_{b,t}·D_alpha(P_S, P_T)_{b,t} / normalizer`` (``ρ = 1`` without ``is_weight``).

    Per token, ``D_alpha`` is :func:`divergence_on_teacher_topk` of ``log_softmax(student_logits)`` on the teacher's
    top-k ids (with one tail category, or renormalised). The student's log-probs on the support are computed as
    ``logits[ids] - logsumexp(logits)``, equal to gathering ``log_softmax`` but without a second (B, T, V) tensor
    kept for the backward. The engines pass a token count as ``normalizer`` (TRL's ``dapo`` normaliser: the
    masked tokens of the global batch, per accumulation window), i.e. a masked token-mean over the batch.

    Args:
        student_logits: (B, T, V) student logits at the response positions, already divided by the temperature;
            carries the gradient.
        teacher_topk_logps: (B, T, k) teacher log-probs (full-vocabulary softmax) at its top-k ids (constants).
        teacher_topk_indices: (B, T, k) integer vocabulary ids of the teacher's top-k.
        loss_mask: (B, T) 0/1 or bool: response tokens of rows that have a teacher.
        alpha: 0 forward KL(T‖S), 1 reverse KL(S‖T), else the generalized JSD (:func:`token_divergence`).
        tail: one tail category holding the mass outside the top-k (SDPO ``add_tail``), else renormalise (OPSD).
        normalizer: the token count the masked sum is divided by, > 0.
        is_weight: optional (B, T) constant per-token weights ``ρ``, SDPO's clipped importance ratio
            (:func:`importance_weight`); ``per_token`` stays the unweighted divergence.

    Returns:
        ``(loss, per_token)``: the scalar loss (with gradient) and the (B, T) detached divergences (0 off the mask).
    """
    _check_log_probs("student_logits", student_logits)
    check_2d("loss_mask", loss_mask)
    if student_logits.dim() != 3 or tuple(student_logits.shape[:2]) != tuple(loss_mask.shape):
        raise ValueError(
            f"student_logits must be (B, T, V) with (B, T) = loss_mask's shape {tuple(loss_mask.shape)}, "
            f"got {tuple(student_logits.shape)}"
        )
    if tuple(teacher_topk_logps.shape[:2]) != tuple(loss_mask.shape):
        raise ValueError(
            f"teacher_topk_logps must be (B, T, k) with (B, T) = {tuple(loss_mask.shape)}, "
            f"got {tuple(teacher_topk_logps.shape)}"
        )
    mask = as_bool_mask("loss_mask", loss_mask)
    log_norm = torch.logsumexp(student_logits, dim=-1, keepdim=True)
    student_on_support = gather_support(student_logits, teacher_topk_indices) - log_norm
    per_token = _support_divergence(student_on_support, teacher_topk_logps.to(student_logits.dtype), alpha, tail)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    denominator = torch.as_tensor(normalizer, dtype=per_token.dtype, device=per_token.device)
    if not bool(denominator > 0):
        raise ValueError(f"normalizer must be > 0 (a token count), got {float(denominator)}")
    weighted = per_token
    if is_weight is not None:
        check_same_shape("loss_mask", loss_mask, is_weight=is_weight)
        weighted = per_token * is_weight.detach().to(per_token.dtype)
    return weighted.sum() / denominator, per_token.detach()


def importance_weight(student_logp: torch.Tensor, old_logp: torch.Tensor, clip: float) -> torch.Tensor:
    """SDPO's importance-sampling correction of the distillation loss: ``ρ_t = min(π_θ(y_t) / π_old(y_t), clip)``.

    A rollout scored after one or more optimizer steps on its batch (TRL's ``steps_per_generation >
    gradient_accumulation_steps`` or ``num_iterations > 1``; verl's ``ppo_mini_batch_size < train_batch_size``)
    was sampled from ``π_old``, not the current policy; the per-token divergence is weighted by this ratio, a
    constant (no gradient), as SDPO's ``distillation_is_clip`` (log-ratio clamped to [-20, 20] before ``exp``).

    Args:
        student_logp: (B, T) current log-probs of the sampled tokens.
        old_logp: (B, T) log-probs of the same tokens under the rollout policy.
        clip: upper bound of the ratio, > 0 (SDPO 2.0).

    Returns:
        (B, T) detached weights in (0, clip].
    """
    check_2d("student_logp", student_logp)
    check_same_shape("student_logp", student_logp, old_logp=old_logp)
    clip = float(clip)
    if not clip > 0:  # also rejects NaN
        raise ValueError(f"clip must be > 0 (SDPO's distillation_is_clip, 2.0), got {clip}")
    log_ratio = (student_logp.detach() - old_logp.detach()).clamp(min=-20.0, max=20.0)
    return log_ratio.exp().clamp(max=clip)


# --------------------------------------------------------------------------------------------------
# Sampled-token estimator (SDPO ``distillation_mode="sampled_token"``, alpha = 1; OPSD ``--use_tinker_loss``)
# --------------------------------------------------------------------------------------------------


def sampled_token_advantage(
    teacher_logp: torch.Tensor,
    student_logp: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Per-token advantage of the sampled-token reverse-KL estimator: ``A_t = sg(log P_T(y_t) - log P_S(y_t))``.

    The sampled-token estimator of ``KL(P_S ‖ P_T)`` is the loss ``Σ_t sg(lS_t - lT_t)·lS_t`` (SDPO
    ``sampled_token`` mode with alpha = 1; OPSD's tinker loss), whose gradient is
    ``Σ_t (lS_t - lT_t)·∇ log π(y_t) = -Σ_t A_t·∇ log π(y_t)``: exactly the policy gradient with these
    token advantages. OPSD and SDPO in sampled-token mode therefore run through an engine's unchanged
    PG / PPO-clip loss (at ratio 1, on-policy) with ``A_t`` in place of the GRPO advantage, like RLSD and
    CEPO, and their gradient stays in the span of the sampled tokens' ``∇ log π(y_t)``.

    Args:
        teacher_logp: (B, T) teacher log-probs of the sampled response tokens.
        student_logp: (B, T) student log-probs of the same tokens (the old / rollout log-probs).
        response_mask: (B, T) 0/1 or bool mask of response tokens.

    Returns:
        (B, T) detached advantages, 0 outside the response mask.
    """
    check_2d("teacher_logp", teacher_logp)
    check_same_shape("teacher_logp", teacher_logp, student_logp=student_logp, response_mask=response_mask)
    mask = as_bool_mask("response_mask", response_mask)
    check_finite("teacher_logp", teacher_logp, mask)
    check_finite("student_logp", student_logp, mask)
    adv = (teacher_logp - student_logp).detach()
    return torch.where(mask, adv, torch.zeros_like(adv))
