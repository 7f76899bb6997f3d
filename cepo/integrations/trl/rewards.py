"""The math verifier as a TRL reward function."""

from __future__ import annotations

from typing import Any

from cepo.rewards import compute_score


def completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        parts = []
        for message in completion:
            content = message.get("content", "")
            if isinstance(content, list):
                content = "".join(item.get("text", "") for item in content if isinstance(item, dict))
            parts.append(content or "")
        return "".join(parts)
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


def make_math_reward(accuracy_weight: float = 0.9, format_weight: float = 0.1):
    """A TRL reward function grading each completion against the ``answer`` column."""

    def math_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        return [
            compute_score(completion_text(c), a, accuracy_weight, format_weight).overall
            for c, a in zip(completions, answer, strict=True)
        ]

    math_reward.__name__ = "math_reward"
    return math_reward
