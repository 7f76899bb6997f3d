"""Input validation shared by the algorithm functions.

Every check raises ``ValueError`` naming the offending argument and the fix, so that a
shape or NaN bug surfaces at the call site instead of as a silently corrupted update.
"""

from __future__ import annotations

import torch


def check_2d(name: str, tensor: torch.Tensor) -> None:
    """Require a (B, T) tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, response_len), got shape {tuple(tensor.shape)}")


def check_same_shape(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Require every tensor in ``others`` to have the shape of ``reference``."""
    for name, tensor in others.items():
        if tensor is None:
            continue
        if tuple(tensor.shape) != tuple(reference.shape):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but {reference_name} has shape "
                f"{tuple(reference.shape)}; both must be (batch, response_len) over the same response tokens"
            )


def check_finite(name: str, tensor: torch.Tensor, where: torch.Tensor | None = None) -> None:
    """Require finite values (optionally only where the boolean mask ``where`` is true)."""
    values = tensor if where is None else tensor[where]
    if values.numel() and not torch.isfinite(values).all():
        bad = (~torch.isfinite(tensor)) if where is None else (~torch.isfinite(tensor)) & where
        rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=-1)).flatten().tolist() if bad.dim() else []
        raise ValueError(
            f"{name} contains NaN or inf at response positions (rows {rows[:8]}"
            f"{'...' if len(rows) > 8 else ''}); check the log-prob pass that produced it "
            "(a -inf log-prob means the scored token had zero probability, e.g. a vocabulary or "
            "temperature mismatch)"
        )


def check_lam_eps(lam: float, eps_w: float) -> None:
    """Theorem 1 holds for lam in [0, 1] and eps_w in (0, 1)."""
    if not (0.0 <= float(lam) <= 1.0):
        raise ValueError(f"lam must be in [0, 1] (Theorem 1), got {lam}")
    if not (0.0 < float(eps_w) < 1.0):
        raise ValueError(f"eps_w must be in (0, 1) (Theorem 1: both clip bounds stay positive), got {eps_w}")


def as_bool_mask(name: str, mask: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a bool tensor; accepts 0/1 integer or float masks."""
    if mask.dtype == torch.bool:
        return mask
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{name} must contain only 0 and 1 (or be a bool tensor)")
    return mask.bool()
