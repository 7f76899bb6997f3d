"""Dataset preparation and prompt templates; the answer, image and file checks shared by every loader."""

from cepo.data.answers import AnswerError, answer_problems, answer_text
from cepo.data.files import SUPPORTED_FORMATS, read_data_file
from cepo.data.geo3k import STUDENT_PROMPT_SUFFIX, missing_answers, student_prompt, to_conversational
from cepo.data.images import BadImage, describe_bad_images, image_problems, open_image

__all__ = [
    "STUDENT_PROMPT_SUFFIX",
    "SUPPORTED_FORMATS",
    "AnswerError",
    "BadImage",
    "answer_problems",
    "answer_text",
    "describe_bad_images",
    "image_problems",
    "missing_answers",
    "open_image",
    "read_data_file",
    "student_prompt",
    "to_conversational",
]
