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
from collections.abc import Callable
from typing import Any

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_finite, check_same_shape

SUPPORTS = ("teacher", "student")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean")
"""``cepo.distill.loss_agg``: how the divergence loss (``mode=topk|full``) reduces the masked per-token divergences
``D`` of a mini-batch / accumulation window (verl's names): ``token-mean`` ``Σ_{r,t} m·ρ·D / N_tokens`` (the tokens of
rows that have a teacher), ``seq-mean-token-mean`` ``(1/R) Σ_r (Σ_t m·ρ·D_{r,t}) / L_r`` (all R rows, rows without a
teacher adding 0; ``L_r`` = row r's masked response tokens): the authors' objective (lasgroup/SDPO's one row per
micro-batch, siyan-zhao/OPSD's one sequence per device, each averaged over gradient accumulation)."""


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


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, suffix: str, expected: str, support: str) -> None:
    """The student's and the teacher's tensors cover the same categories, and ``support`` names one of them."""
    if tuple(student.shape) != tuple(teacher.shape):
        raise ValueError(
            f"teacher{suffix} has shape {tuple(teacher.shape)} but student{suffix} has shape "
            f"{tuple(student.shape)}; both must be {expected}"
        )
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of {SUPPORTS} (whose top-k tokens form the support), got {support!r}")


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
    _check_pair(student_log_probs, teacher_log_probs, "_log_probs", "full (..., V) log-probs", support)
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


DISTILL_CHUNK_ELEMENTS = 2**25
"""Float32 elements of one (B, chunk, V) temporary of the chunked losses (128 MiB): the chunk over T is
``max(1, DISTILL_CHUNK_ELEMENTS // (B·V))`` tokens unless a caller sets ``chunk_size`` (Qwen3-VL, V = 151,936, B = 4:
55 tokens)."""


def token_chunk_size(batch: int, vocab: int, budget: int = DISTILL_CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so that one (batch, chunk, vocab) float32 temporary holds at most ``budget`` elements."""
    return max(1, int(budget) // max(1, int(batch) * int(vocab)))


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 for half-precision logits (bf16 / fp16 forwards), the input's dtype otherwise (float64 tests)."""
    return torch.promote_types(tensor.dtype, torch.float32)


def row_token_mean_weights(loss_mask: torch.Tensor, row_index: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token weights ``w = m / L_r`` with ``L_r = Σ_t m_{r,t}`` the masked tokens of the token's row, so that
    ``Σ_t w·D`` is row r's masked token-mean (0 for a row with no masked token).

    Args:
        loss_mask: (B, T) 0/1 or bool, row = first dimension; or (N,) packed positions (verl's remove-padding
            layout) with ``row_index``.
        row_index: (N,) integer row of each packed position (read on the masked positions only); None for (B, T).

    Returns:
        Weights of ``loss_mask``'s shape, float64 (0 off the mask; the loss casts them to its compute dtype, so a
        float64 loss gets ``1 / L_r`` to float64 rounding).
    """
    mask = as_bool_mask("loss_mask", loss_mask)
    if row_index is None:
        check_2d("loss_mask", loss_mask)
        lengths = mask.sum(dim=-1, keepdim=True).expand_as(mask)
    else:
        if mask.dim() != 1 or tuple(row_index.shape) != tuple(mask.shape):
            raise ValueError(f"a packed loss_mask and row_index must both be (N,), got {tuple(mask.shape)} and "
                             f"{tuple(row_index.shape)}")
        rows = torch.where(mask, row_index.long(), torch.zeros_like(row_index, dtype=torch.long))
        if bool(mask.any()) and int(rows.min()) < 0:
            raise ValueError("row_index must be >= 0 on the masked positions")
        counts = torch.bincount(rows[mask], minlength=int(rows.max()) + 1 if rows.numel() else 1)
        lengths = counts[rows]
    return mask.double() / lengths.clamp(min=1).double()


def loss_aggregation(loss_agg: str, loss_mask: torch.Tensor, tokens: float | torch.Tensor, rows: float | torch.Tensor,
                     row_index: torch.Tensor | None = None) -> tuple[torch.Tensor | None, float | torch.Tensor]:
    """The ``(token_weight, normalizer)`` pair of the distillation losses for ``cepo.distill.loss_agg``
    (:data:`LOSS_AGGS`): the loss is ``Σ m·ρ·w·D / normalizer``.

    * ``token-mean``: ``(None, tokens)``: ``Σ m·ρ·D / N_tokens``.
    * ``seq-mean-token-mean``: ``(m / L_r, rows)`` (:func:`row_token_mean_weights`): ``(1/R) Σ_r Σ_t m·ρ·D / L_r``.

    Both engines call this with counts already in their own convention (the mini-batch's, or the generation batch's
    scaled to one accumulation window, summed over ranks and divided by their number, as the engine's gradient
    averaging needs), so ``tokens`` and ``rows`` are counted over the same rows: ``rows`` includes the rows without a
    teacher (they add 0 to the sum, as in SDPO's fork), ``tokens`` only the masked tokens.

    Args:
        loss_agg: ``"token-mean"`` or ``"seq-mean-token-mean"``.
        loss_mask: (B, T), or (N,) packed with ``row_index``: the masked positions of this micro-batch.
        tokens: the token normaliser (> 0 where used).
        rows: the row normaliser (> 0 where used).
        row_index: (N,) row of each packed position, or None for (B, T).
    """
    if loss_agg == "token-mean":
        return None, tokens
    if loss_agg == "seq-mean-token-mean":
        return row_token_mean_weights(loss_mask, row_index), rows
    raise ValueError(f"loss_agg must be one of {list(LOSS_AGGS)}, got {loss_agg!r}")


def _check_loss_inputs(student_logits: torch.Tensor, loss_mask: torch.Tensor, normalizer: float | torch.Tensor,
                       is_weight: torch.Tensor | None, temperature: float,
                       token_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Shapes of the batch losses; returns the (B, T) bool mask."""
    _check_log_probs("student_logits", student_logits)
    check_2d("loss_mask", loss_mask)
    if student_logits.dim() != 3 or tuple(student_logits.shape[:2]) != tuple(loss_mask.shape):
        raise ValueError(
            f"student_logits must be (B, T, V) with (B, T) = loss_mask's shape {tuple(loss_mask.shape)}, "
            f"got {tuple(student_logits.shape)}"
        )
    if is_weight is not None:
        check_same_shape("loss_mask", loss_mask, is_weight=is_weight)
    if token_weight is not None:
        check_same_shape("loss_mask", loss_mask, token_weight=token_weight)
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0 (the rollout temperature), got {temperature}")
    if not bool(torch.as_tensor(normalizer) > 0):
        raise ValueError(f"normalizer must be > 0 (a token or row count), got {float(torch.as_tensor(normalizer))}")
    return as_bool_mask("loss_mask", loss_mask)


class _GradientInForward(torch.autograd.Function):
    """A scalar ``Σ_chunks f(logits[:, chunk])`` whose gradient w.r.t. the logits is computed chunk by chunk in the
    forward (each chunk's float32 temporaries are freed before the next) into one buffer of the logits' dtype; the
    backward only scales it by the incoming gradient. Single backward only (the buffer is scaled in place)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, chunks: list[tuple[int, int]],
                terms: Callable[[torch.Tensor, int, int], torch.Tensor]) -> torch.Tensor:
        grad = torch.zeros_like(logits)
        total = torch.zeros((), dtype=_compute_dtype(logits), device=logits.device)
        for start, end in chunks:
            with torch.enable_grad():
                piece = logits[:, start:end].detach().requires_grad_()
                value = terms(piece, start, end)
                (piece_grad,) = torch.autograd.grad(value, piece)
            grad[:, start:end] = piece_grad
            total = total + value.detach()
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_output.to(grad.dtype)), None, None


def _chunked_masked_loss(
    divergence_of: Callable[[torch.Tensor, int, int], torch.Tensor],
    student_logits: torch.Tensor,
    mask: torch.Tensor,
    normalizer: float | torch.Tensor,
    is_weight: torch.Tensor | None,
    chunk_size: int | None,
    token_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ_{b,t} mask·ρ·w·D_{b,t} / normalizer``, with ``D`` computed over chunks of T (paper's OPSD / SDPO losses);
    ``ρ`` = ``is_weight``, ``w`` = ``token_weight`` (both (B, T) constants, 1 when None).

    ``divergence_of(logits_chunk, start, end)`` returns the (B, end - start) divergences of positions ``start:end``
    from the student's (B, end - start, V) logits chunk. Under autograd, each chunk's gradient is computed right away
    into one buffer of the logits' shape and dtype (:class:`_GradientInForward`, the fused-loss trick), so the loss
    holds no (B, T, V) float32 tensor: besides ``student_logits`` and that gradient (which the backward would produce
    anyway) only one chunk's (B, chunk, V) temporaries exist at a time. Chunks with no masked token are skipped
    (their terms are 0).

    Returns:
        ``(loss, per_token)``: the scalar loss and the (B, T) detached unweighted divergences (0 off the mask).
    """
    batch, length, vocab = student_logits.shape
    step = int(chunk_size) if chunk_size else token_chunk_size(batch, vocab)
    if step < 1:
        raise ValueError(f"chunk_size must be >= 1 (tokens per chunk) or None, got {chunk_size}")
    dtype = _compute_dtype(student_logits)
    per_token = torch.zeros(batch, length, dtype=dtype, device=student_logits.device)
    chunks = [(start, min(length, start + step)) for start in range(0, length, step)
              if bool(mask[:, start : start + step].any())]

    def terms(piece: torch.Tensor, start: int, end: int) -> torch.Tensor:
        divergence = divergence_of(piece, start, end)
        divergence = torch.where(mask[:, start:end], divergence, torch.zeros_like(divergence))
        per_token[:, start:end] = divergence.detach()
        if is_weight is not None:
            divergence = divergence * is_weight[:, start:end].detach().to(dtype)
        if token_weight is not None:
            divergence = divergence * token_weight[:, start:end].detach().to(dtype)
        return divergence.sum()

    if torch.is_grad_enabled() and student_logits.requires_grad:
        total = _GradientInForward.apply(student_logits, chunks, terms)
    else:
        zero = torch.zeros((), dtype=dtype, device=student_logits.device)
        total = sum((terms(student_logits[:, a:b], a, b) for a, b in chunks), zero)
    denominator = torch.as_tensor(normalizer, dtype=dtype, device=student_logits.device)
    return total / denominator, per_token


def topk_distillation_loss(
    student_logits: torch.Tensor,
    teacher_topk_logps: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    loss_mask: torch.Tensor,
    alpha: float,
    tail: bool,
    normalizer: float | torch.Tensor,
    is_weight: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    token_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k self-distillation loss of a batch (OPSD ``--top_k_loss``; SDPO ``topk`` with the teacher's support):
    ``Σ_{b,t} mask_{b,t}·ρ_{b,t}·w_{b,t}·D_alpha(P_S, P_T)_{b,t} / normalizer`` (``ρ = 1`` without ``is_weight``,
    ``w = 1`` without ``token_weight``).

    Per token, ``D_alpha`` is :func:`divergence_on_teacher_topk` of ``log_softmax(student_logits / temperature)`` on
    the teacher's top-k ids (with one tail category, or renormalised). The student's log-probs on the support are
    ``logits[ids] - logsumexp(logits)``, computed chunk by chunk over T (:func:`_chunked_masked_loss`), so no
    (B, T, V) float32 copy of the logits is made. The engines take ``(token_weight, normalizer)`` from
    :func:`loss_aggregation`: ``(None, tokens)`` for a masked token-mean (TRL's ``dapo`` normaliser: the masked tokens
    of the global batch, per accumulation window), ``(m / L_r, rows)`` for the authors' mean of per-row token-means.

    Args:
        student_logits: (B, T, V) student logits at the response positions (any float dtype); carries the gradient.
        teacher_topk_logps: (B, T, k) teacher log-probs (full-vocabulary softmax) at its top-k ids (constants).
        teacher_topk_indices: (B, T, k) integer vocabulary ids of the teacher's top-k.
        loss_mask: (B, T) 0/1 or bool: response tokens of rows that have a teacher.
        alpha: 0 forward KL(T‖S), 1 reverse KL(S‖T), else the generalized JSD (:func:`token_divergence`).
        tail: one tail category holding the mass outside the top-k (SDPO ``add_tail``), else renormalise (OPSD).
        normalizer: the token (or, with ``token_weight``, row) count the weighted masked sum is divided by, > 0.
        is_weight: optional (B, T) constant per-token weights ``ρ``, SDPO's clipped importance ratio
            (:func:`importance_weight`); ``per_token`` stays the unweighted divergence.
        temperature: the logits are divided by it (the rollout temperature), chunk by chunk.
        chunk_size: tokens per chunk over T (None: :func:`token_chunk_size`).
        token_weight: optional (B, T) constant per-token weights ``w`` of the aggregation (:func:`loss_aggregation`:
            ``1 / L_r`` for ``seq-mean-token-mean``); ``per_token`` stays the unweighted divergence.

    Returns:
        ``(loss, per_token)``: the scalar loss (with gradient) and the (B, T) detached divergences (0 off the mask).
    """
    mask = _check_loss_inputs(student_logits, loss_mask, normalizer, is_weight, temperature, token_weight)
    if tuple(teacher_topk_logps.shape[:2]) != tuple(loss_mask.shape):
        raise ValueError(
            f"teacher_topk_logps must be (B, T, k) with (B, T) = {tuple(loss_mask.shape)}, "
            f"got {tuple(teacher_topk_logps.shape)}"
        )
    _check_alpha(alpha)
    dtype = _compute_dtype(student_logits)

    def divergence_of(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        scaled = logits.to(dtype) / temperature
        ids = teacher_topk_indices[:, start:end]
        student_on_support = gather_support(scaled, ids) - torch.logsumexp(scaled, dim=-1, keepdim=True)
        return _support_divergence(student_on_support, teacher_topk_logps[:, start:end].to(dtype), alpha, tail)

    return _chunked_masked_loss(divergence_of, student_logits, mask, normalizer, is_weight, chunk_size, token_weight)


def logits_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    loss_mask: torch.Tensor,
    alpha: float,
    normalizer: float | torch.Tensor,
    topk: int | None = None,
    support: str = "student",
    tail: bool = False,
    is_weight: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    token_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The self-distillation loss of a micro-batch from the student's and the teacher's logits of the same step.

    ``topk=None`` (``cepo.distill.mode=full``; OPSD's default, ``generalized_jsd_loss`` with β = ``alpha``): the
    whole-vocabulary :func:`token_divergence` of ``log_softmax(z_S / τ)`` and ``log_softmax(z_T / τ)``. ``topk=k``
    (``mode=topk``): :func:`topk_divergence` on the ``support``'s top-k ids (``"student"``: SDPO's fork, chosen
    from the student's current logits; ``"teacher"``: OPSD ``--top_k_loss``), with a tail bucket or renormalised.
    Reduced as :func:`topk_distillation_loss`: ``Σ mask·ρ·w·D / normalizer``, chunk by chunk over T with the gradient
    computed per chunk (:func:`_chunked_masked_loss`), so besides the two forwards' own (B, T, V) logits and the
    student logits' gradient only (B, chunk, V) float32 temporaries exist.

    Args:
        student_logits: (B, T, V) student logits at the response positions; carries the gradient.
        teacher_logits: (B, T, V) teacher logits at the same positions (a constant: detached here).
        loss_mask: (B, T) 0/1 or bool: response tokens of rows that have a teacher.
        alpha: 0 forward KL(T‖S), 1 reverse KL(S‖T), else the generalized JSD.
        normalizer: the token (or, with ``token_weight``, row) count the weighted masked sum is divided by, > 0.
        topk: k of the top-k support, or None for the full vocabulary.
        support: ``"student"`` or ``"teacher"``: whose top-k ids form the support (``topk`` only).
        tail: top-k only: one tail category (SDPO ``add_tail``), else renormalise over the support.
        is_weight: optional (B, T) constant per-token weights (SDPO's clipped importance ratio).
        temperature: both logit sets are divided by it (the rollout temperature), chunk by chunk.
        chunk_size: tokens per chunk over T (None: :func:`token_chunk_size`).
        token_weight: optional (B, T) constant per-token weights ``w`` of the aggregation (:func:`loss_aggregation`:
            ``1 / L_r`` for ``seq-mean-token-mean``); ``per_token`` stays the unweighted divergence.

    Returns:
        ``(loss, per_token)``: the scalar loss (with gradient) and the (B, T) detached divergences (0 off the mask).
    """
    mask = _check_loss_inputs(student_logits, loss_mask, normalizer, is_weight, temperature, token_weight)
    _check_pair(student_logits, teacher_logits, "_logits", "(B, T, V) at the same positions", support)
    teacher = teacher_logits.detach()
    divergence_of = _logits_divergence(student_logits, lambda start, end: teacher[:, start:end], alpha, topk,
                                       support, tail, temperature)
    return _chunked_masked_loss(divergence_of, student_logits, mask, normalizer, is_weight, chunk_size, token_weight)


def _logits_divergence(
    student_logits: torch.Tensor, teacher_chunk: Callable[[int, int], torch.Tensor], alpha: float,
    topk: int | None, support: str, tail: bool, temperature: float,
) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """The per-chunk divergence of :func:`logits_distillation_loss` (``divergence_of`` of
    :func:`_chunked_masked_loss`), reading the teacher's logits of positions ``start:end`` from ``teacher_chunk``."""
    vocab = student_logits.shape[-1]
    if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= vocab):
        raise ValueError(f"topk must be an int in [1, {vocab}] or None (the full vocabulary), got {topk!r}")
    _check_alpha(alpha)
    dtype = _compute_dtype(student_logits)

    def divergence_of(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        student_lp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
        teacher_lp = torch.log_softmax(teacher_chunk(start, end).to(dtype) / temperature, dim=-1)
        if topk is None:
            return token_divergence(student_lp, teacher_lp, alpha)
        return topk_divergence(student_lp, teacher_lp, topk, alpha, support=support, tail=tail)

    return divergence_of


def packed_logits_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    teacher_index: torch.Tensor,
    loss_mask: torch.Tensor,
    alpha: float,
    normalizer: float | torch.Tensor,
    topk: int | None = None,
    support: str = "student",
    tail: bool = False,
    is_weight: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    token_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`logits_distillation_loss` on packed sequences (verl's remove-padding layout): the student's logits of
    every position of a micro-batch's concatenated sequences, the teacher's of its own (differently long) sequences,
    and for each student position the row of the teacher position that predicts the same response token.

    Chunked over the N student positions like :func:`logits_distillation_loss` (chunks without a masked position are
    skipped); each chunk gathers only its own teacher rows, so besides the two forwards' logits and the student
    logits' gradient only (chunk, V) temporaries exist.

    Args:
        student_logits: (N, V) or (1, N, V) student logits (any float dtype); carries the gradient.
        teacher_logits: (M, V) teacher logits (a constant: detached here).
        teacher_index: (N,) integer row of ``teacher_logits`` for each student position where ``loss_mask`` is set
            (any value elsewhere).
        loss_mask: (N,) 0/1 or bool: the positions predicting a response token of a row that has a teacher.
        alpha, normalizer, topk, support, tail, temperature, chunk_size: as :func:`logits_distillation_loss`.
        is_weight: optional (N,) constant per-position weights (SDPO's clipped importance ratio).
        token_weight: optional (N,) constant per-position aggregation weights (:func:`loss_aggregation` with the
            positions' ``row_index``).

    Returns:
        ``(loss, per_token)``: the scalar loss (with gradient) and the (N,) detached divergences (0 off the mask).
    """
    logits = student_logits.unsqueeze(0) if student_logits.dim() == 2 else student_logits
    if logits.dim() != 3 or logits.shape[0] != 1:
        raise ValueError(f"student_logits must be (N, V) or (1, N, V), got {tuple(student_logits.shape)}")
    n, vocab = logits.shape[1], logits.shape[2]
    if teacher_logits.dim() != 2 or teacher_logits.shape[-1] != vocab:
        raise ValueError(f"teacher_logits must be (M, V) with V = {vocab}, got {tuple(teacher_logits.shape)}")
    for name, tensor in (("teacher_index", teacher_index), ("loss_mask", loss_mask)):
        if tuple(tensor.shape) != (n,):
            raise ValueError(f"{name} must be (N,) with N = {n} student positions, got {tuple(tensor.shape)}")
    for name, weight in (("is_weight", is_weight), ("token_weight", token_weight)):
        if weight is not None and tuple(weight.shape) != (n,):
            raise ValueError(f"{name} must be (N,) with N = {n}, got {tuple(weight.shape)}")
    row_weight = None if token_weight is None else token_weight.unsqueeze(0)
    mask = _check_loss_inputs(logits, loss_mask.unsqueeze(0), normalizer,
                              None if is_weight is None else is_weight.unsqueeze(0), temperature, row_weight)
    rows = torch.where(mask[0], teacher_index.long(), torch.zeros_like(teacher_index, dtype=torch.long))
    if bool(mask.any()) and (int(rows[mask[0]].min()) < 0 or int(rows[mask[0]].max()) >= teacher_logits.shape[0]):
        raise ValueError(f"teacher_index must lie in [0, {teacher_logits.shape[0]}) on the masked positions")
    teacher = teacher_logits.detach()
    divergence_of = _logits_divergence(logits, lambda start, end: teacher[rows[start:end]].unsqueeze(0), alpha,
                                       topk, support, tail, temperature)
    loss, per_token = _chunked_masked_loss(divergence_of, logits, mask, normalizer,
                                           None if is_weight is None else is_weight.unsqueeze(0), chunk_size,
                                           row_weight)
    return loss, per_token[0]


def sampled_token_logps(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, chunk_size: int | None = None
) -> torch.Tensor:
    """``log_softmax(logits / τ)`` at ``token_ids``, (B, T, V) and (B, T) -> (B, T), detached, chunked over T (no
    (B, T, V) float32 copy): the current policy's log-probs of the sampled tokens, for :func:`importance_weight`."""
    batch, length, vocab = logits.shape
    step = int(chunk_size) if chunk_size else token_chunk_size(batch, vocab)
    dtype = _compute_dtype(logits)
    out = torch.zeros(batch, length, dtype=dtype, device=logits.device)
    with torch.no_grad():
        for start in range(0, length, step):
            scaled = logits[:, start : start + step].to(dtype) / temperature
            ids = token_ids[:, start : start + step].long().unsqueeze(-1)
            out[:, start : start + step] = (scaled.gather(-1, ids) - scaled.logsumexp(-1, keepdim=True)).squeeze(-1)
    return out


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
