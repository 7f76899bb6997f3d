"""The run's ``README.md`` model card, as TRL drafts it but naming what was trained.

TRL's ``GRPOTrainer.create_model_card`` writes ``<run>/README.md`` at every checkpoint with the base model taken
from the model's config only when it is a hub id (a local folder gives "a fine-tuned version of [None]"), the
pipeline example pointing at ``None``, and "trained with GRPO" whatever ``cepo_method`` was.
:func:`fix_model_card` rewrites those three lines with the method, the base model and the run's ``final/`` folder.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["METHOD_NAMES", "fix_model_card"]

METHOD_NAMES = {"grpo": "GRPO", "rlsd": "RLSD", "cepo": "CEPO", "opsd": "OPSD", "sdpo": "SDPO", "conspo": "ConSPO"}
"""How each method is written in prose."""

_BASE = re.compile(r"^This model is a fine-tuned version of \[[^\]]*\]\([^)]*\)", re.M)
_TRAINED = re.compile(r"^This model was trained with GRPO.*$", re.M)
_PIPELINE = re.compile(r'model="None"')


def fix_model_card(card: str | Path, method: str, base_model: str | None, model_dir: str | Path) -> bool:
    """Rewrite the model card at ``card`` (if it exists) for ``method`` trained from ``base_model`` (a hub id or a
    local folder), the trained model being in ``model_dir``. Returns whether the file was there."""
    path = Path(card)
    if not path.is_file():
        return False
    text = path.read_text()
    if base_model:
        local = Path(base_model).expanduser().exists()
        base = f"`{base_model}` (a local model)" if local else f"[{base_model}](https://huggingface.co/{base_model})"
        text = _BASE.sub(lambda _: f"This model is a fine-tuned version of {base}", text)
    name = METHOD_NAMES.get(method, method)
    if method != "grpo":
        text = _TRAINED.sub(lambda _: f"This model was trained with {name} (cepo_method={method!r}, the cepo "
                                      "reference implementation on TRL's GRPOTrainer).", text)
    text = _PIPELINE.sub(lambda _: f'model="{model_dir}"', text)
    path.write_text(text)
    return True
