"""Schedules for the modulation strength lambda (paper Eq. 7, Sec. 4)."""

from __future__ import annotations

from dataclasses import dataclass


def linear_lambda(step: int, lam0: float, warmup_steps: int) -> float:
    """Linear decay of lambda from ``lam0`` to 0 over ``warmup_steps`` (paper Sec. 3.4, T_warm).

    ``step`` counts training steps from 0: step 0 uses ``lam0``; step ``warmup_steps`` and
    later use 0. With the paper's ``lam0=0.5, warmup_steps=25`` the first step uses 0.5 and
    step 24 uses 0.02 (the authors' CEPO code uses the same values).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= lam0 <= 1.0:
        raise ValueError(f"lam0 must be in [0, 1], got {lam0}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return 0.0
    return float(lam0) * max(0.0, 1.0 - step / warmup_steps)


def constant_lambda(step: int, lam0: float) -> float:
    """Constant lambda (ablation): every step uses ``lam0``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if not 0.0 <= lam0 <= 1.0:
        raise ValueError(f"lam0 must be in [0, 1], got {lam0}")
    return float(lam0)


SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class LambdaSchedule:
    """A named lambda schedule, as configured by ``lambda_schedule``/``lam0``/``warmup_steps``."""

    kind: str = "linear"
    lam0: float = 0.5
    warmup_steps: int = 25

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"lambda schedule must be one of {SCHEDULES}, got {self.kind!r}")
        if not 0.0 <= self.lam0 <= 1.0:
            raise ValueError(f"lam0 must be in [0, 1], got {self.lam0}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return constant_lambda(step, self.lam0)
        return linear_lambda(step, self.lam0, self.warmup_steps)
