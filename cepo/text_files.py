"""Text files a user hands us (data ``.json``/``.jsonl``, method YAMLs): read as UTF-8 or refused naming the line.

:func:`read_utf8` returns the text, or raises ``ValueError`` naming the file, the line and column of the first byte
that is not UTF-8, and the fix (save the file as UTF-8), instead of Python's ``'utf-8' codec can't decode byte 0xe9
in position 707``. :func:`check_method_yaml` reads a method YAML and the YAMLs its ``defaults`` list names that way
and refuses, naming the file, one that is empty, is not a mapping, or whose ``cepo:`` is not a mapping — before
Hydra composes them (which blames an empty file's missing keys on an override).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_method_yaml", "read_utf8"]


def read_utf8(path: str | Path, label: str) -> str:
    """The text of ``path``; ``label`` names it in the error (``"config file"``, ``"data.train_files entry"``)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{label} {str(path)!r} is not UTF-8 text: line {line}, column {column} has the byte "
            f"0x{data[err.start]:02x}; save the file as UTF-8"
        ) from None


def check_method_yaml(path: str | Path, _seen: set[Path] | None = None) -> None:
    """Check ``path`` (a method YAML) and, recursively, the YAMLs of its folder that its ``defaults`` list names.

    A missing file is left to Hydra (its message lists the YAMLs there). Raises ``ValueError`` naming the file.
    """
    import yaml

    path = Path(path)
    seen = _seen if _seen is not None else set()
    if path.resolve() in seen or not path.is_file():
        return
    seen.add(path.resolve())
    text = read_utf8(path, "config file")
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        return  # Hydra reports syntax errors with file:line:column
    if content is None:
        raise ValueError(f"config file {str(path)!r} is empty; start from configs/cepo.yaml (or another method YAML)")
    if not isinstance(content, dict):
        raise ValueError(f"config file {str(path)!r} holds a {type(content).__name__}, not a mapping of keys; start "
                         "from configs/cepo.yaml")
    if "cepo" in content and content["cepo"] is not None and not isinstance(content["cepo"], dict):
        raise ValueError(f"config file {str(path)!r}: cepo: must be a block of keys (method: ..., lam0: ...), "
                         f"got {content['cepo']!r}; see configs/paper_base.yaml")
    for entry in content.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            check_method_yaml(path.parent / f"{entry}.yaml", seen)
