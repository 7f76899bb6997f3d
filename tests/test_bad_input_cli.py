"""Bad input at the command line: exit 2, one stderr line naming the option / file / row and the fix, no
traceback, nothing trained. Every `cepo train` data case here must fail before the model's weights load
(`load_model` is replaced by a stub that would make the command exit 1)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import datasets
import pytest

from cepo.cli import main as cli_main
from cepo.testing import GEO3K_FEATURES, make_geo3k_like, save_tiny_qwen3vl


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen3vl(tmp_path_factory.mktemp("tiny_vl"))


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching the model load means every data check passed: the stub ends the command (exit 2, "MODEL LOAD")."""

    def stub(*_: Any, **__: Any) -> None:
        raise ValueError("MODEL LOAD reached")

    monkeypatch.setattr("cepo.integrations.trl.from_config.load_model", stub)


def _one_error_line(err: str, command: str = "train") -> str:
    """The error line; asserts no traceback and no other error line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"cepo {command}:")]
    assert len(lines) == 1, err
    assert len(lines[0]) < 600, lines[0]
    return lines[0]


def _train(tiny_vl: Path, data: Path | str, tmp_path: Path, *extra: str, cli: tuple[str, ...] = ()) -> int:
    """`cepo train` on the tiny model: ``cli`` options, then small-run overrides, then ``extra`` overrides."""
    from cepo.recipes import configs_dir

    overrides = [
        f"actor_rollout_ref.model.path={tiny_vl}",
        f"data.train_files={data}",
        "data.train_batch_size=2",
        "actor_rollout_ref.actor.ppo_mini_batch_size=2",
        "actor_rollout_ref.rollout.n=4",
        "data.max_response_length=8",
        "trainer.total_training_steps=1",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        f"trainer.default_local_dir={tmp_path / 'run'}",
    ]
    return cli_main(["train", "--config", str(configs_dir() / "cepo.yaml"), *cli, *overrides, *extra])


@pytest.mark.parametrize("steps", ["0", "-2", "x"])
def test_smoke_steps_must_be_positive(steps: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["smoke", "--steps", steps, "--output-dir", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys.readouterr().err, "smoke")
    assert "argument --steps: must be a positive integer" in line
    assert not (tmp_path / "run").exists()


def _write(tmp_path: Path, name: str, n: int = 4, **columns: list[Any]) -> Path:
    ds = make_geo3k_like(n)
    for column, values in columns.items():
        ds = ds.remove_columns(column).add_column(column, values)
    ds.to_parquet(str(tmp_path / name))
    return tmp_path / name


def _random_bytes_image(tmp_path: Path) -> Path:
    ds = make_geo3k_like(3)
    images = [[{"bytes": b"random bytes", "path": None}] if i == 1 else row["images"] for i, row in enumerate(ds)]
    datasets.Dataset.from_dict({"images": images, "problem": ds["problem"], "answer": ds["answer"]},
                               features=GEO3K_FEATURES).to_parquet(str(tmp_path / "img.parquet"))
    return tmp_path / "img.parquet"


def _missing_image_file(tmp_path: Path) -> Path:
    ds = make_geo3k_like(3)
    rows = []
    for i, row in enumerate(ds):
        row["images"][0].save(tmp_path / f"f{i}.png")
        rows.append({"problem": row["problem"], "answer": row["answer"], "images": [str(tmp_path / f"f{i}.png")]})
    rows[2]["images"] = [str(tmp_path / "gone.png")]
    (tmp_path / "img.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "img.jsonl"


def _file(path: Path, content: bytes | datasets.Dataset) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content.to_parquet(str(path))
    return path


CASES: dict[str, tuple[Any, list[str], str]] = {
    # name: (make the data file, extra args, expected in the error line)
    "smaller than one batch": (lambda t: _write(t, "one.parquet", n=1), [],
                               r"has 1 prompt\(s\), fewer than one step needs \(2 prompts x 4 generations\); "
                               r"add rows or lower data.train_batch_size"),
    "prompt too long": (lambda t: _write(t, "d.parquet"),
                        ["data.max_prompt_length=40", "data.filter_overlong_prompts=false"],
                        r"4 prompt\(s\) longer than data.max_prompt_length=40 tokens: .*d\.parquet row 0 \(\d+ tokens\)"
                        r".*raise data.max_prompt_length or drop them with data.filter_overlong_prompts=true"),
    "several answers": (lambda t: _write(t, "a.parquet", n=3, answer=[["1"], ["24", "x"], ["3"]]), [],
                        r"a\.parquet: 1 row\(s\) without a usable answer .*row 1: 2 answers \['24', 'x'\]"),
    "undecodable image": (_random_bytes_image, [],
                          r"img\.parquet: 1 row\(s\) with an image that cannot be opened: row 1 \(images\[0\]\): "
                          r"not a decodable image.*--on-bad-image skip"),
    "missing image file": (_missing_image_file, [],
                           r"img\.jsonl: 1 row\(s\) with an image that cannot be opened: row 2 \(images\[0\]\): "
                           r"image file '.*gone\.png' does not exist"),
    "empty file": (lambda t: _file(t / "empty.parquet", b""), [],
                   r"data.train_files entry '.*empty\.parquet' is empty \(0 bytes\)"),
    "no rows": (lambda t: _file(t / "none.parquet", make_geo3k_like(1).select([])), [], r"none\.parquet' has no rows"),
    "csv": (lambda t: _file(t / "d.csv", b"problem,answer\nx,1\n"), [],
            r"d\.csv': unsupported format '\.csv'; supported: \.parquet, \.json, \.jsonl, \.arrow"),
    "zero steps": (lambda t: _write(t, "d.parquet"), ["trainer.total_training_steps=0"],
                   r"trainer\.total_training_steps.*positive"),
    "missing model path": (lambda t: _write(t, "d.parquet"), ["actor_rollout_ref.model.path=/no/such/model"],
                           r"actor_rollout_ref.model.path='/no/such/model' does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_train_bad_data_fails_before_the_model(
    case: str, tiny_vl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    make, extra, expected = CASES[case]
    data = make(tmp_path)
    assert _train(tiny_vl, data, tmp_path, *extra) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "MODEL LOAD" not in line
    assert re.search(expected, line), line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", ["folder", "config without model_type"])
def test_train_model_path_that_is_not_a_model(content: str, tiny_vl: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that is not a checkpoint (transformers: "Unrecognized model in ...", a ValueError) is named by its
    key, before any weights load."""
    data = _write(tmp_path, "d.parquet")
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    if content == "folder":
        (folder / "train.parquet").write_bytes(data.read_bytes())
    else:
        (folder / "config.json").write_text("{}")
    assert _train(tiny_vl, data, tmp_path, f"actor_rollout_ref.model.path={folder}") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"cannot load actor_rollout_ref.model.path={str(folder)!r}" in line, line
    assert not (tmp_path / "run").exists()


def test_train_filters_and_skips_with_counts(
    tiny_vl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    """filter_overlong_prompts=true drops long prompts and --on-bad-image skip drops broken images, each with a
    count on stderr; then the data is good and the model load is reached."""
    ds = make_geo3k_like(6)
    problems = list(ds["problem"])
    problems[4] += " word" * 200
    images = [[{"bytes": b"junk", "path": None}] if i == 0 else row["images"] for i, row in enumerate(ds)]
    datasets.Dataset.from_dict({"images": images, "problem": problems, "answer": ds["answer"]},
                               features=GEO3K_FEATURES).to_parquet(str(tmp_path / "mixed.parquet"))
    code = _train(tiny_vl, tmp_path / "mixed.parquet", tmp_path, "data.max_prompt_length=120",
                  "data.filter_overlong_prompts=true", cli=("--on-bad-image", "skip"))
    err = capsys.readouterr().err
    assert code == 2 and "MODEL LOAD reached" in err, err
    assert "skipped 1 of 6 row(s) whose image cannot be opened (--on-bad-image skip): row 0 (images[0])" in err
    assert "dropped 1 of 5 prompt(s) longer than data.max_prompt_length=120 tokens" in err
    assert "mixed.parquet row 4" in err  # named by its row in the file, not its index after skipping


def test_train_reads_jsonl(tiny_vl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           no_model_load: None) -> None:
    rows = [{"problem": r["problem"], "answer": r["answer"]} for r in make_geo3k_like(4).remove_columns("images")]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _train(tiny_vl, tmp_path / "d.jsonl", tmp_path) == 2
    assert "MODEL LOAD reached" in capsys.readouterr().err


def test_train_existing_checkpoints_names_its_own_options(
    tiny_vl: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write(tmp_path, "d.parquet")
    (tmp_path / "run" / "checkpoint-1").mkdir(parents=True)
    assert _train(tiny_vl, data, tmp_path) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "already holds checkpoints (checkpoint-1); resume it (--resume), start elsewhere " \
           "(trainer.default_local_dir=<another dir>), or delete them (--overwrite)" in line
    assert "--output-dir" not in line
    assert _train(tiny_vl, data, tmp_path, cli=("--resume",)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no complete checkpoint (checkpoint-1 (trainer_state.json is missing" in line
    assert "start the run again with --overwrite" in line
    (tmp_path / "run" / "checkpoint-1").rmdir()
    assert _train(tiny_vl, data, tmp_path, cli=("--resume",)) == 2
    assert "holds no checkpoint; run without --resume" in _one_error_line(capsys.readouterr().err)


def test_train_ctrl_c_prints_the_resume_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cepo.integrations.trl.run import TrainingInterrupted

    def interrupted(*_: Any, **__: Any) -> None:
        raise TrainingInterrupted(tmp_path / "run", 7, tmp_path / "run" / "checkpoint-5")

    monkeypatch.setattr("cepo.integrations.trl.from_config.train_from_config", interrupted)
    argv = ["train", "--config", "my configs/cepo.yaml", "--overwrite", "data.train_batch_size=2"]
    assert cli_main(argv) == 130
    assert _one_error_line(capsys.readouterr().err) == (
        f"cepo train: interrupted at step 7; last checkpoint: {tmp_path / 'run' / 'checkpoint-5'}; resume with: "
        "cepo train --config 'my configs/cepo.yaml' data.train_batch_size=2 --resume"
    )

    def before_training(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cepo.integrations.trl.from_config.train_from_config", before_training)
    assert cli_main(argv) == 130
    assert "interrupted before training started; nothing to resume" in _one_error_line(capsys.readouterr().err)
