"""The math verifier and answer extraction for r-."""

from __future__ import annotations

import pytest

from cepo.rewards import compute_score, compute_scores, extract_answer


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        (r"The area is \boxed{12}.", "12"),
        (r"first \boxed{3} then \boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{ 4\sqrt{3} }", r"4\sqrt{3}"),
        (r"\boxed{None}", "None"),  # a literal None answer is an answer
        ("x = 12, no box", None),
        (r"\boxed{}", None),
        (r"\boxed{12", None),  # unclosed
        ("", None),
    ],
)
def test_extract_answer(response: str, answer: str | None) -> None:
    assert extract_answer(response) == answer


def test_scores_follow_easyr1_weights() -> None:
    assert compute_score(r"so \boxed{12}", "12").as_dict() == {"overall": 1.0, "accuracy": 1.0, "format": 1.0}
    assert compute_score(r"so \boxed{13}", "12").overall == pytest.approx(0.1)
    assert compute_score("12", "12").overall == 0.0
    assert compute_score(r"\boxed{0.5}", r"\frac{1}{2}").accuracy == 1.0  # sympy equality
    assert compute_score(r"\boxed{12}", "12", accuracy_weight=1.0, format_weight=0.0).overall == 1.0
    assert [s.overall for s in compute_scores([r"\boxed{1}", "1"], ["1", "1"])] == [1.0, 0.0]


def test_reward_bad_input() -> None:
    with pytest.raises(ValueError, match="ground_truth is empty"):
        compute_score(r"\boxed{1}", "")
    with pytest.raises(ValueError, match="format_weight must be"):
        compute_score(r"\boxed{1}", "1", format_weight=-1)
    with pytest.raises(ValueError, match="ground_truths has 1"):
        compute_scores(["a", "b"], ["1"])
    with pytest.raises(TypeError, match="response must be a str"):
        extract_answer(None)  # type: ignore[arg-type]
