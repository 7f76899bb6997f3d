"""scripts/prepare_math.py on local files shaped like DAPO-Math-17k, MATH-500, AIME 2024 and AIME 2025, read back
by verl's own RLHFDataset with a text tokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest

from cepo.testing.math_data import make_math_problems, write_math_sources

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = " Solve the problem step by step, keeping reasoning brief.\nPut ONLY the final answer inside \\boxed{}."


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("prepare_math", ROOT / "scripts" / "prepare_math.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _error_line(err: str) -> str:
    """The one error line of a failed run (datasets' progress bars share stderr)."""
    lines = [line for line in err.splitlines() if "[prepare_math] error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _sources_args(sources: dict[str, Path]) -> list[str]:
    return ["--train-dataset", str(sources["train"]), "--math500", str(sources["math500"]),
            "--aime2024", str(sources["aime2024"]), "--aime2025", str(sources["aime2025"])]


@pytest.fixture
def sources(tmp_path) -> dict[str, Path]:
    return write_math_sources(tmp_path / "src", n_train=5, n_eval=3, repeats=3)


def test_converts_every_split_and_verl_reads_it(tmp_path, sources, capsys):
    out = tmp_path / "out"
    assert _script().main(["--local-dir", str(out), *_sources_args(sources)]) == 0
    assert "10 repeated (problem, answer) rows kept once" in capsys.readouterr().err  # 5 problems x 3 copies
    train = pd.read_parquet(out / "train.parquet")
    expected = make_math_problems(5, seed=0)
    assert len(train) == 5
    # DAPO's "Answer: $Answer" wrapper is gone: the prompt is the bare problem + the paper's boxed instruction
    assert [r[0]["content"] for r in train["prompt"]] == [p.problem + SUFFIX for p in expected]
    assert [r["ground_truth"] for r in train["reward_model"]] == [p.answer for p in expected]
    assert [e["index"] for e in train["extra_info"]] == [0, 1, 2, 3, 4]
    assert "images" not in train.columns and set(train["ability"]) == {"math"}
    evals = make_math_problems(5 + 9, seed=1)[5:]
    for i, split in enumerate(("math500", "aime2024", "aime2025")):
        df = pd.read_parquet(out / f"{split}.parquet")
        assert [r["ground_truth"] for r in df["reward_model"]] == [p.answer for p in evals[3 * i:3 * i + 3]]
        assert all(isinstance(r["ground_truth"], str) for r in df["reward_model"])  # AIME 2025's ints as text

    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from cepo.testing import build_qwen_tokenizer

    cfg = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 256, "return_raw_chat": True,
                            "filter_overlong_prompts": False, "truncation": "error",
                            "apply_chat_template_kwargs": {"enable_thinking": False}})
    item = RLHFDataset(data_files=str(out / "aime2025.parquet"), tokenizer=build_qwen_tokenizer(), config=cfg)[0]
    assert item["raw_prompt"] == [{"role": "user", "content": evals[6].problem + SUFFIX}]
    assert item["reward_model"]["ground_truth"] == evals[6].answer


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_bad_rows_named_then_skipped_or_nothing_written(tmp_path, sources, policy, capsys):
    rows = [json.loads(line) for line in sources["math500"].read_text().splitlines()]
    rows[1]["answer"] = " "
    rows[2]["problem"] = None
    sources["math500"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    code = _script().main(["--local-dir", str(out), *_sources_args(sources), "--on-bad-row", policy])
    err = capsys.readouterr().err
    assert "split 'math500': bad rows: row 1: no answer; row 2: no problem text in 'problem'" in err
    if policy == "skip":
        assert code == 0
        assert [e["index"] for e in pd.read_parquet(out / "math500.parquet")["extra_info"]] == [0]
    else:
        assert code == 2 and "use --on-bad-row skip" in _error_line(err)
        assert not out.exists()  # not even the splits that converted


def test_several_answers_fail_whatever_the_policy(tmp_path, sources, capsys):
    df = pd.read_parquet(sources["aime2024"])
    df["answer"] = [["1"], ["2", "3"], ["4"]]
    df.to_parquet(sources["aime2024"])
    code = _script().main(["--local-dir", str(tmp_path / "out"), *_sources_args(sources)])
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "split 'aime2024': row 1: 2 answers" in line and not (tmp_path / "out").exists()


def test_missing_local_path_is_told_from_an_unreachable_hub(tmp_path, sources, capsys, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    args = _sources_args(sources)
    missing = [*args[:2], "--math500", str(tmp_path / "nope" / "m500.jsonl"), *args[4:]]
    assert _script().main(["--local-dir", str(tmp_path / "out"), *missing]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "--math500" in line and "does not exist" in line and "hub" not in line
    hub = [*args[:2], "--math500", "someone/not-here", *args[4:]]
    assert _script().main(["--local-dir", str(tmp_path / "out"), *hub]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "--math500 'someone/not-here' is not a local path" in line and "cannot be reached" in line
    assert not (tmp_path / "out").exists()


def test_missing_problem_column_names_the_source(tmp_path, sources, capsys):
    pd.DataFrame({"text": ["x"], "answer": ["1"]}).to_parquet(tmp_path / "odd.parquet")
    args = ["--train-dataset", str(tmp_path / "odd.parquet"), "--splits", "train"]
    assert _script().main(["--local-dir", str(tmp_path / "out"), *args]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "--train-dataset split 'train' has no problem column (problem or question or prompt" in line
    assert f"in {str(tmp_path / 'odd.parquet')!r}; rename the column that holds the problem to problem" in line, line


def test_local_dir_is_checked_before_any_download(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # reaching the hub sources would fail differently
    (tmp_path / "a file").write_text("x")
    assert _script().main(["--local-dir", str(tmp_path / "a file")]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "--local-dir" in line and "is a file, not a directory" in line and "hub" not in line
