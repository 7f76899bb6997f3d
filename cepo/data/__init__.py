"""Dataset preparation and prompt templates."""

from cepo.data.geo3k import STUDENT_PROMPT_SUFFIX, missing_answers, student_prompt, to_conversational

__all__ = ["STUDENT_PROMPT_SUFFIX", "missing_answers", "student_prompt", "to_conversational"]
