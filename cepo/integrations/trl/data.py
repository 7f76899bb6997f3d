"""Training data for the TRL engine: verl parquet or Geo3k columns -> TRL's conversational layout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cepo.data.geo3k import IMAGE_PLACEHOLDER, missing_answers, student_prompt


def _answer(row: dict[str, Any]) -> Any:
    if row.get("answer") not in (None, ""):
        return row["answer"]
    reward_model = row.get("reward_model") or {}
    return reward_model.get("ground_truth") if isinstance(reward_model, dict) else None


def _strip_placeholders(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": student_prompt(messages)}]
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = content.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append({"role": message["role"], "content": content})
    return out


def load_train_dataset(
    files: str | Sequence[str] | None, prompt_key: str = "prompt", image_key: str = "images"
) -> Any:
    """The ``data.train_files`` parquet(s) in TRL's conversational layout (``prompt``, ``images``, ``answer``).

    Accepts verl's parquet (``prompt`` messages with ``<image>`` placeholders and
    ``reward_model.ground_truth``) or Geo3k's own columns (``problem``/``answer``). Rows without an
    answer fail here, with their indices, before any model is loaded.
    """
    import datasets

    if files is None:
        raise ValueError("data.train_files is not set; point it at the parquet from scripts/prepare_geo3k.py")
    files = [files] if isinstance(files, str) else list(files)
    for file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"data.train_files entry {file!r} does not exist; run scripts/prepare_geo3k.py")
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    if prompt_key not in dataset.column_names and "problem" in dataset.column_names:
        prompt_key = "problem"
    if prompt_key not in dataset.column_names:
        raise ValueError(f"data.prompt_key={prompt_key!r} is not a column of {files} ({dataset.column_names})")
    missing = missing_answers(_answer(row) for row in dataset)
    if missing:
        raise ValueError(f"rows {missing[:10]} of {files} have no answer (answer or reward_model.ground_truth)")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": _strip_placeholders(row[prompt_key]), "answer": str(_answer(row)).strip()}

    keep = {image_key}
    out = dataset.map(convert, remove_columns=[c for c in dataset.column_names if c not in keep])
    if image_key in out.column_names and image_key != "images":
        out = out.rename_column(image_key, "images")
    return out
