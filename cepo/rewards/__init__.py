"""Verifiable rewards: the Geo3k/math verifier (mathruler) and answer extraction for r-."""

from cepo.rewards.math_verifier import MathScore, compute_score, compute_scores, extract_answer

__all__ = ["MathScore", "compute_score", "compute_scores", "extract_answer"]
