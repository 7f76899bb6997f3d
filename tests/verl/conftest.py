"""Shared fixtures for the verl-engine tests: a tiny Qwen3-VL checkpoint loaded through verl's own helpers, and the
local Ray + TransferQueue of the worker-path harness (_harness.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen3-VL (model, processor, tokenizer), loadable offline by path."""
    from cepo.testing import save_tiny_qwen3vl

    return save_tiny_qwen3vl(tmp_path_factory.mktemp("tiny_qwen3vl"))


@pytest.fixture(scope="session")
def vl_processor(tiny_vl_dir: Path):
    """verl's ``hf_processor`` on the tiny checkpoint: a Qwen3VLProcessor with ``get_rope_index`` bound."""
    from verl.utils.tokenizer import hf_processor

    processor = hf_processor(str(tiny_vl_dir))
    assert processor is not None and hasattr(processor, "get_rope_index")
    return processor


@pytest.fixture(scope="session")
def vl_model(tiny_vl_dir: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(tiny_vl_dir)).eval()


@pytest.fixture(scope="session")
def geo_rows():
    """Three Geo3k-like problems as verl ``raw_prompt`` conversations plus their images and answers."""
    from cepo.testing import make_geo3k_like

    ds = make_geo3k_like(3)
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": r["images"][0]},
                                      {"type": "text", "text": r["problem"].replace("<image>", "")}]}]
        for r in ds
    ]
    images = [[r["images"][0]] for r in ds]
    return messages, images, list(ds["answer"])


@pytest.fixture(scope="module")
def verl_cpu(tmp_path_factory):
    """Local Ray + TransferQueue, a 1-process gloo group, verl's engine modules pointed at the CPU (the worker-path
    harness of tests/verl/_harness.py). Ray and TransferQueue are shut down at the end of the module."""
    import threading
    import types

    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    import torch.distributed as dist
    import verl.workers.engine.base as engine_base
    import verl.workers.engine.fsdp.transformer_impl as fsdp_impl
    import verl.workers.engine.fsdp.utils as fsdp_utils
    import verl.workers.engine_workers as engine_workers
    from omegaconf import OmegaConf

    mp = pytest.MonkeyPatch()
    for module in (fsdp_impl, fsdp_utils, engine_base):
        mp.setattr(module, "get_device_name", lambda: "cpu")
    mp.setattr(fsdp_impl, "get_device_id", lambda: "cpu")
    mp.setattr(engine_workers, "get_torch_device",
               lambda: types.SimpleNamespace(max_memory_allocated=lambda: 0, max_memory_reserved=lambda: 0))
    own_pg = not dist.is_initialized()
    if own_pg:
        store = tmp_path_factory.mktemp("pg") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # controller (1 CPU) + one storage unit (1 CPU): fits the 2 logical CPUs; bounded so a stuck start fails
    errors: list[BaseException] = []

    def start():
        try:
            tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(timeout=120)
    try:
        if thread.is_alive() or errors:
            pytest.fail(f"TransferQueue did not start on the local Ray instance: {errors or 'timeout (120 s)'}")
        yield
    finally:
        try:
            tq.close()
        finally:
            ray.shutdown()
            if own_pg:
                dist.destroy_process_group()
            mp.undo()


@pytest.fixture(scope="module")
def geo():
    """Two Geo3k-like problems as (problem text, image, answer) for the worker-path harness."""
    from cepo.testing import make_geo3k_like

    ds = make_geo3k_like(2)
    return [(r["problem"].replace("<image>", ""), r["images"][0], str(r["answer"])) for r in ds]
