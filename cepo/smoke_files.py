"""Files a ``cepo smoke`` run leaves to try the other commands offline: ``<run>/try/test.parquet`` (held-out
Geo3k-like problems, another seed than training) and ``<run>/try/figure.png`` (its first problem's figure), with
the ``cepo eval --local`` and ``cepo credit-map`` command lines that use them."""

from __future__ import annotations

import shlex
from pathlib import Path

__all__ = ["TRY_PROBLEMS", "write_try_files"]

TRY_PROBLEMS = 8


def write_try_files(run_dir: str | Path, seed: int = 0) -> list[str]:
    """Write ``<run_dir>/try/`` and return the two command lines to run next."""
    from cepo.testing import make_geo3k_like

    folder = Path(run_dir) / "try"
    folder.mkdir(parents=True, exist_ok=True)
    rows = make_geo3k_like(TRY_PROBLEMS, seed=seed + 1000)
    rows.to_parquet(str(folder / "test.parquet"))
    first = rows[0]
    first["images"][0].save(folder / "figure.png")
    model = str(Path(run_dir) / "final")
    wrong = str(int(first["answer"]) + 1) if str(first["answer"]).lstrip("-").isdigit() else "0"
    return [
        shlex.join(["cepo", "eval", model, "--local", str(folder / "test.parquet"), "--max-new-tokens", "16"]),
        shlex.join(["cepo", "credit-map", "--model", model, "--problem", first["problem"], "--image",
                    str(folder / "figure.png"), "--answer", str(first["answer"]), "--wrong-answer", wrong,
                    "--sample", "--max-new-tokens", "16", "--output-dir", str(Path(run_dir) / "credit-map")]),
    ]
