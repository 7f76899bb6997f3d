"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# the property tests draw the same examples on every run (CI is reproducible; a failure replays exactly)
settings.register_profile("cepo", derandomize=True)
settings.load_profile("cepo")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The warm-started tiny Qwen3-VL of ``cepo smoke``, built once per test session (the warm start is the
    slow part of every TRL engine test)."""
    from cepo.smoke import prepare_smoke_model

    return prepare_smoke_model(tmp_path_factory.mktemp("smoke") / "base-model")
