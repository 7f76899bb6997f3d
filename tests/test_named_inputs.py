"""Bad input whose message used to miss the thing (issue 17 §2): a data file without an answer column, a data file
or YAML that is not UTF-8, an empty YAML, ``cepo:`` that is not a block of keys, Hydra's ``--cfg jobs``. Each is
exit 2 and one line naming the file (and line) or flag and the fix, before the model loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cepo.cli import main as cli_main
from cepo.testing import make_geo3k_like
from cepo.testing.cli_checks import one_error_line


def _train(config: Path, data: Path | str, run: Path) -> int:
    settings = {"actor_rollout_ref.model.path": "/unused", "data.train_files": data, "data.train_batch_size": 2,
                "actor_rollout_ref.actor.ppo_mini_batch_size": 2, "actor_rollout_ref.rollout.n": 4,
                "trainer.total_training_steps": 1, "actor_rollout_ref.actor.optim.lr_warmup_steps": 0,
                "trainer.default_local_dir": run}
    return cli_main(["train", "--config", str(config), *(f"{k}={v}" for k, v in settings.items())])


@pytest.fixture
def method_yaml() -> Path:
    from cepo.recipes import configs_dir

    return configs_dir() / "cepo.yaml"


def test_data_without_an_answer_column(tmp_path: Path, method_yaml: Path, capsys: pytest.CaptureFixture[str],
                                       no_model_load: None) -> None:
    make_geo3k_like(4).remove_columns("answer").to_parquet(str(tmp_path / "noans.parquet"))
    assert _train(method_yaml, tmp_path / "noans.parquet", tmp_path / "run") == 2
    line = one_error_line(capsys.readouterr().err, "cepo train:")
    assert f"{tmp_path / 'noans.parquet'} has no 'answer' column" in line
    assert "columns: ['images', 'problem']" in line and "add the verifiable final answer" in line, line


def test_data_file_that_is_not_utf8(tmp_path: Path, method_yaml: Path, capsys: pytest.CaptureFixture[str],
                                    no_model_load: None) -> None:
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(b'{"problem": "a", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n')
    assert _train(method_yaml, data, tmp_path / "run") == 2
    line = one_error_line(capsys.readouterr().err, "cepo train:")
    assert f"'{data}' is not UTF-8 text: line 2, column 17 has the byte 0xe9; save the file as UTF-8" in line, line


@pytest.fixture
def own_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the package's method YAMLs, used through $CEPO_CONFIGS_DIR."""
    from cepo.recipes import PACKAGE_CONFIGS_DIR

    folder = tmp_path / "configs"
    shutil.copytree(PACKAGE_CONFIGS_DIR, folder)
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(folder))
    return folder


HEADER = "hydra:\n  searchpath:\n    - pkg://verl.trainer.config\ndefaults:\n  - paper_base\n  - _self_\n"

YAML_CASES: dict[str, tuple[str, bytes | None, str]] = {
    # name: (file written, its content, expected in the line, with {path} the file's path)
    "empty": ("mine.yaml", b"", "config file '{path}' is empty; start from configs/cepo.yaml"),
    "only a comment": ("mine.yaml", b"# nothing here\n", "config file '{path}' is empty"),
    "a list": ("mine.yaml", b"- cepo\n", "config file '{path}' holds a list, not a mapping of keys"),
    "cepo is a number": ("mine.yaml", HEADER.encode() + b"cepo: 3\n",
                         "config file '{path}': cepo: must be a block of keys (method: ..., lam0: ...), got 3"),
    "not UTF-8": ("mine.yaml", HEADER.encode() + b"# caf\xe9\n",
                  "config file '{path}' is not UTF-8 text: line 7, column 6 has the byte 0xe9"),
    "a default not UTF-8": ("paper_base.yaml", None,
                            "config file '{path}' is not UTF-8 text: line 1, column 2 has the byte 0xff"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_method_yaml_problems_name_the_file(case: str, own_configs: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], no_model_load: None) -> None:
    name, content, expected = YAML_CASES[case]
    path = own_configs / name
    if content is None:  # paper_base.yaml, which cepo.yaml lists in its defaults, gets a bad byte
        path.write_bytes(b"#\xff\n" + path.read_bytes())
        config = own_configs / "cepo.yaml"
    else:
        path.write_bytes(content)
        config = path
    assert _train(config, tmp_path / "d.parquet", tmp_path / "run") == 2
    line = one_error_line(capsys.readouterr().err, "cepo train:")
    assert expected.format(path=path) in line, line
    assert "override" not in line


def test_verl_entry_point_bad_hydra_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from cepo.integrations.verl.main import main as verl_main

    assert verl_main(["--cfg", "jobs"]) == 2
    err = capsys.readouterr().err
    line = one_error_line(err, "cepo (verl): error:")
    assert "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all')" in line, line
    assert "usage:" not in err
