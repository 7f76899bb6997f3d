"""scripts/prepare_geo3k.py on offline Geo3k-shaped parquet, read back by verl's own RLHFDataset."""

from __future__ import annotations

import os
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


def _with_answers(answers: list) -> datasets.Dataset:
    ds = make_geo3k_like(len(answers))
    return ds.remove_columns("answer").add_column("answer", answers)


def _error_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("[prepare_geo3k] error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_list_answers_one_element_or_refused(tmp_path):
    _with_answers([["12"], ["7"]]).to_parquet(str(tmp_path / "one.parquet"))
    res = _run("--dataset", str(tmp_path / "one.parquet"), "--local-dir", str(tmp_path / "out"), "--splits", "train")
    assert res.returncode == 0, res.stderr
    assert [rm["ground_truth"] for rm in pd.read_parquet(tmp_path / "out" / "train.parquet")["reward_model"]] == \
        ["12", "7"]
    _with_answers([["12"], ["24", "x"]]).to_parquet(str(tmp_path / "two.parquet"))
    res = _run("--dataset", str(tmp_path / "two.parquet"), "--local-dir", str(tmp_path / "out2"), "--splits", "train")
    assert res.returncode == 2
    assert "split 'train': row 1: 2 answers ['24', 'x'] (the verifier compares against one" in _error_line(res)
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_bad_images_named_with_split_row_and_column(tmp_path, policy):
    from cepo.testing import GEO3K_FEATURES

    ds = make_geo3k_like(3)
    images = [[{"bytes": b"random bytes", "path": None}] if i == 1 else r["images"] for i, r in enumerate(ds)]
    datasets.Dataset.from_dict({"images": images, "problem": ds["problem"], "answer": ds["answer"]},
                               features=GEO3K_FEATURES).to_parquet(str(tmp_path / "img.parquet"))
    res = _run("--dataset", str(tmp_path / "img.parquet"), "--local-dir", str(tmp_path / "out"), "--splits", "train",
               "--on-bad-image", policy)
    assert "split 'train': rows whose image cannot be opened: row 1 (images[0]): not a decodable image" in res.stderr
    if policy == "skip":
        assert res.returncode == 0, res.stderr
        assert [e["index"] for e in pd.read_parquet(tmp_path / "out" / "train.parquet")["extra_info"]] == [0, 2]
    else:
        assert res.returncode == 2
        assert "rows [1] have an image that cannot be opened" in _error_line(res)
        assert not (tmp_path / "out").exists()


def test_missing_image_file_in_jsonl_source(tmp_path):
    import json

    ds = make_geo3k_like(2)
    ds[0]["images"][0].save(tmp_path / "a.png")
    rows = [{"problem": r["problem"], "answer": r["answer"], "images": [str(tmp_path / name)]}
            for r, name in zip(ds, ["a.png", "gone.png"], strict=True)]
    (tmp_path / "src.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = _run("--dataset", str(tmp_path / "src.jsonl"), "--local-dir", str(tmp_path / "out"), "--splits", "train",
               "--on-bad-image", "fail")
    assert res.returncode == 2
    assert "row 1 (images[0]): image file" in _error_line(res) and "gone.png' does not exist" in res.stderr


def test_missing_path_and_unreachable_hub_are_told_apart(tmp_path):
    out = tmp_path / "out"
    for source in ("./data/geo3k", "~/no/such/dir", "/no/such/file.parquet", "missing.parquet"):
        res = _run("--dataset", source, "--local-dir", str(out))
        assert res.returncode == 2
        assert f"--dataset {source!r} does not exist (no such file or directory)" in _error_line(res)
    res = subprocess.run([sys.executable, str(SCRIPT), "--dataset", "someone/geometry", "--local-dir", str(out)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2
    line = _error_line(res)
    assert "'someone/geometry' is not a local path and the Hugging Face hub cannot be reached" in line
    assert "HF_HUB_OFFLINE is set" in line
    assert not out.exists()  # nothing written, not even an empty directory


def test_no_partial_output_when_a_later_split_fails(tmp_path):
    src = write_geo3k_parquet(tmp_path / "src", n_train=3, n_test=2)
    _with_answers([["1"], ["2", "3"]]).to_parquet(str(src / "test.parquet"))
    res = _run("--dataset", str(src), "--local-dir", str(tmp_path / "out"))
    assert res.returncode == 2 and "split 'test': row 1: 2 answers" in _error_line(res)
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train.parquet").write_text("previous output")
    res = _run("--dataset", str(src), "--local-dir", str(tmp_path / "out"))
    assert res.returncode == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.parquet"]  # untouched, no temp files
    assert (tmp_path / "out" / "train.parquet").read_text() == "previous output"
