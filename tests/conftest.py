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

if os.environ.get("PYTEST_XDIST_WORKER"):
    # A pytest-xdist worker has a thread blocked reading the controller's pipe; a child *forked* from it can hang
    # forever on a lock that thread held (seen: `datasets`' filter pool in verl's RLHFDataset, child stuck in a futex).
    # Pools started by `datasets` (the `multiprocess` package) and by `multiprocessing` spawn fresh interpreters here.
    import multiprocessing

    import multiprocess

    multiprocess.set_start_method("spawn", force=True)
    multiprocessing.set_start_method("spawn", force=True)


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The warm-started tiny Qwen3-VL of ``cepo smoke``, built once per test session (the warm start is the
    slow part of every TRL engine test)."""
    from cepo.smoke import prepare_smoke_model

    return prepare_smoke_model(tmp_path_factory.mktemp("smoke") / "base-model")


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cepo train`` stops with exit 2 and "MODEL LOAD reached" where it would load the model's weights (or its
    processor): a bad-input test that sees its own message instead knows the check came first."""

    def stub(*_: object, **__: object) -> None:
        raise ValueError("MODEL LOAD reached")

    monkeypatch.setattr("cepo.integrations.trl.from_config.load_model", stub)
    monkeypatch.setattr("cepo.integrations.trl.data.load_processing_class", stub)


LONGEST_FIRST = ("test_verl_main_job.py",)
"""Test files whose cases take minutes (verl's whole training loop, ~75 s per run): collected first, so that with
the README's ``-n 2`` (and pyproject's ``--maxschedchunk=1``) pytest-xdist's two workers start on them side by side
instead of finishing with them one after another."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: the rest keeps pytest's order
