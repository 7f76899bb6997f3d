"""verl custom reward function (``reward.custom_reward_function``) wrapping ``cepo.rewards.compute_score``.

verl calls ``compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)``;
the weights come from ``reward.custom_reward_function.reward_kwargs`` (set from ``cepo.reward`` in the YAMLs).
"""

from __future__ import annotations

from typing import Any

from cepo.rewards import compute_score as _math_score


def compute_score(
    data_source: str | None = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: dict[str, Any] | None = None,
    accuracy_weight: float = 0.9,
    format_weight: float = 0.1,
    **kwargs: Any,
) -> dict[str, float]:
    """Geo3k/math reward: ``score = accuracy_weight * accuracy + format_weight * format`` (EasyR1's geo3k reward).

    Returns ``{"score", "acc", "format"}``; verl logs the extra keys. A row with an empty ground truth
    raises ``ValueError`` naming the row's ``extra_info.index`` when present.
    """
    try:
        result = _math_score(solution_str, ground_truth, accuracy_weight=accuracy_weight, format_weight=format_weight)
    except ValueError as err:
        index = (extra_info or {}).get("index")
        where = f"dataset row {index}" if index is not None else f"data_source {data_source!r}"
        raise ValueError(f"{where}: {err}") from err
    return {"score": result.overall, "acc": result.accuracy, "format": result.format}
