"""scripts/prepare_geo3k.py on offline Geo3k-shaped parquet, read back by verl's own RLHFDataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from cepo.testing import make_geo3k_like, write_geo3k_parquet

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_geo3k.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_converts_parquet_dir(tmp_path, vl_processor, tiny_vl_dir):
    src = write_geo3k_parquet(tmp_path / "src", n_train=4, n_test=2)
    out = tmp_path / "out"
    res = _run("--dataset", str(src), "--local-dir", str(out))
    assert res.returncode == 0, res.stderr
    df = pd.read_parquet(out / "train.parquet")
    assert len(df) == 4 and len(pd.read_parquet(out / "test.parquet")) == 2
    row = df.iloc[0]
    content = row["prompt"][0]["content"]
    assert content.startswith("<image>") and content.endswith(
        "Solve the problem step by step, keeping reasoning brief.\nPut ONLY the final answer inside \\boxed{}.")
    expected = make_geo3k_like(4)[0]["answer"]
    assert row["reward_model"]["ground_truth"] == expected and row["extra_info"]["index"] == 0

    # verl's own dataset reads it and builds the multimodal raw_prompt
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "max_prompt_length": 768,
                            "return_raw_chat": True, "filter_overlong_prompts": False, "truncation": "error"})
    ds = RLHFDataset(data_files=str(out / "train.parquet"), tokenizer=vl_processor.tokenizer, config=cfg,
                     processor=vl_processor)
    item = ds[0]
    kinds = [c["type"] for c in item["raw_prompt"][0]["content"]]
    assert kinds == ["image", "text"]
    assert item["reward_model"]["ground_truth"] == expected


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_missing_answer_reported_with_index(tmp_path, policy):
    ds = make_geo3k_like(4)
    answers = list(ds["answer"])
    answers[2] = ""
    ds = ds.remove_columns("answer").add_column("answer", answers)
    src = tmp_path / "one.parquet"
    ds.to_parquet(str(src))
    res = _run("--dataset", str(src), "--local-dir", str(tmp_path / "out"), "--splits", "train",
               "--on-missing-answer", policy)
    assert "rows without an answer: [2]" in res.stderr
    if policy == "skip":
        assert res.returncode == 0
        df = pd.read_parquet(tmp_path / "out" / "train.parquet")
        assert [e["index"] for e in df["extra_info"]] == [0, 1, 3]
    else:
        assert res.returncode == 2 and "rows [2] have no answer" in res.stderr
        assert not (tmp_path / "out" / "train.parquet").exists()


def test_save_to_disk_source(tmp_path):
    dd = datasets.DatasetDict({"train": make_geo3k_like(2), "test": make_geo3k_like(1, seed=1)})
    dd.save_to_disk(str(tmp_path / "disk"))
    res = _run("--dataset", str(tmp_path / "disk"), "--local-dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert len(pd.read_parquet(tmp_path / "out" / "test.parquet")) == 1
