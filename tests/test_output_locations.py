"""Where a command writes, checked first: a file, a path under a file, a folder that cannot be written (``/sys``
refuses even root), an empty path, a plot name that is not a .png, ``--resume`` with ``--overwrite`` or on a folder
that does not exist. Each is exit 2 and one stderr line naming the option, the path and the fix, before the warm
start / model load / download (stubs that end the command say so when they are reached), and nothing is created."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from cepo.cli import main as cli_main
from cepo.testing.cli_checks import one_error_line

UNWRITABLE = Path("/sys/cepo-output-check")  # sysfs: mkdir fails with EPERM even for root
ROOT = Path(__file__).resolve().parents[1]


def _unwritable() -> Path:
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system (the unwritable location of this test)")
    return UNWRITABLE


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("not a directory\n")
    return path


@pytest.fixture
def no_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching the warm start (minutes on a first run) means the output checks passed: the stub ends the command."""

    def stub(*_: Any, **__: Any) -> None:
        raise ValueError("WARM START reached")

    monkeypatch.setattr("cepo.smoke.prepare_smoke_model", stub)


def _bad_dirs(tmp_path: Path, a_file: Path) -> dict[str, tuple[str, str]]:
    """name -> (path, expected text in the error line)."""
    return {
        "file": (str(a_file), f"'{a_file}' is a file, not a directory"),
        "under a file": (str(a_file / "run"), f"is under '{a_file}', which is a file"),
        "empty": ("", "is empty; give a directory"),
    }


@pytest.mark.parametrize("case", ["file", "under a file", "empty", "unwritable"])
def test_smoke_output_dir_checked_before_the_warm_start(
    case: str, tmp_path: Path, a_file: Path, capsys: pytest.CaptureFixture[str], no_warm_start: None
) -> None:
    if case == "unwritable":
        path, expected = str(_unwritable()), f"'{UNWRITABLE}' cannot be written: Operation not permitted"
    else:
        path, expected = _bad_dirs(tmp_path, a_file)[case]
    assert cli_main(["smoke", "--output-dir", path]) == 2
    line = one_error_line(capsys.readouterr().err, "cepo smoke:")
    assert "WARM START" not in line and "--output-dir" in line and expected in line, line
    assert not Path("base-model").exists() and a_file.read_text() == "not a directory\n"


def test_smoke_resume_and_overwrite_exclude_each_other(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_warm_start: None
) -> None:
    assert cli_main(["smoke", "--output-dir", str(tmp_path / "run"), "--resume", "--overwrite"]) == 2
    line = one_error_line(capsys.readouterr().err, "cepo smoke:")
    assert "--resume and --overwrite exclude each other" in line and "give one of them" in line, line


def test_smoke_resume_of_a_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          no_warm_start: None) -> None:
    assert cli_main(["smoke", "--output-dir", str(tmp_path / "nowhere"), "--resume"]) == 2
    line = one_error_line(capsys.readouterr().err, "cepo smoke:")
    assert f"cannot resume {tmp_path / 'nowhere'}: the directory does not exist; run without --resume" in line
    assert not (tmp_path / "nowhere").exists()


def _train(data: Path, tiny_dir: Path, *extra: str, cli: tuple[str, ...] = ()) -> int:
    from cepo.recipes import configs_dir

    return cli_main(["train", "--config", str(configs_dir() / "cepo.yaml"), *cli,
                     f"actor_rollout_ref.model.path={tiny_dir}", f"data.train_files={data}",
                     "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                     "actor_rollout_ref.rollout.n=4", "data.max_response_length=8", "trainer.total_training_steps=1",
                     "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
                     *extra])


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cepo.testing import make_geo3k_like, save_tiny_qwen3vl

    base = tmp_path_factory.mktemp("train_inputs")
    make_geo3k_like(4).to_parquet(str(base / "d.parquet"))
    return base / "d.parquet", save_tiny_qwen3vl(base / "tiny")


@pytest.mark.parametrize("case", ["file", "under a file", "empty", "unwritable"])
def test_train_output_dir_checked_before_the_model(
    case: str, tmp_path: Path, a_file: Path, train_inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    no_model_load: None,
) -> None:
    if case == "unwritable":
        path, expected = str(_unwritable()), "cannot be written: Operation not permitted"
    else:
        path, expected = _bad_dirs(tmp_path, a_file)[case]
    assert _train(*train_inputs, f"trainer.default_local_dir={path}") == 2
    line = one_error_line(capsys.readouterr().err, "cepo train:")
    assert "MODEL LOAD" not in line and "trainer.default_local_dir" in line and expected in line, line


def test_train_resume_checks_come_before_the_model(
    tmp_path: Path, train_inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    run = f"trainer.default_local_dir={tmp_path / 'run'}"
    assert _train(*train_inputs, run, cli=("--resume", "--overwrite")) == 2
    assert "--resume and --overwrite exclude each other" in one_error_line(capsys.readouterr().err, "cepo train:")
    assert _train(*train_inputs, run, cli=("--resume",)) == 2
    line = one_error_line(capsys.readouterr().err, "cepo train:")
    assert "the directory does not exist; run without --resume to start it, or set trainer.default_local_dir" in line
    (tmp_path / "run" / "checkpoint-1").mkdir(parents=True)
    assert _train(*train_inputs, run) == 2  # checkpoints there: refused before the data is read or the model loads
    assert "already holds checkpoints (checkpoint-1)" in one_error_line(capsys.readouterr().err, "cepo train:")


@pytest.fixture
def metrics_run(tmp_path: Path) -> Path:
    run = tmp_path / "run-a"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.1 * s}) + "\n" for s in (1, 2)))
    return run


@pytest.mark.parametrize("case", ["directory", "no .png", "under a file", "unwritable"])
def test_plot_output_must_be_a_writable_png(
    case: str, tmp_path: Path, a_file: Path, metrics_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, expected = {
        "directory": (str(tmp_path), f"--output '{tmp_path}' is a directory; give a file name in it"),
        "no .png": (str(tmp_path / "curves"), f"--output '{tmp_path / 'curves'}' does not end in .png"),
        "under a file": (str(a_file / "c.png"), f"is under '{a_file}', which is a file"),
        "unwritable": (str(UNWRITABLE / "c.png"), "cannot be written: Operation not permitted"),
    }[case]
    if case == "unwritable":
        _unwritable()
    assert cli_main(["plot", str(metrics_run), "--output", output]) == 2
    line = one_error_line(capsys.readouterr().err, "cepo plot:")
    assert expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run-a"]  # no curves.png, no DIR.png


def test_plot_writes_where_it_says(tmp_path: Path, metrics_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "c.png"
    assert cli_main(["plot", str(metrics_run), "--output", str(out)]) == 0
    assert f"written to {out}" in capsys.readouterr().out and out.is_file()


def _prepare_geo3k() -> Any:
    spec = importlib.util.spec_from_file_location("prepare_geo3k", ROOT / "scripts" / "prepare_geo3k.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["file", "under a file", "empty", "unwritable"])
def test_prepare_geo3k_local_dir_checked_before_the_download(
    case: str, tmp_path: Path, a_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default --dataset is the hub name; offline it would fail on the download, so reaching it shows up."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if case == "unwritable":
        path, expected = str(_unwritable()), "cannot be written: Operation not permitted"
    else:
        path, expected = _bad_dirs(tmp_path, a_file)[case]
    assert _prepare_geo3k().main(["--local-dir", path]) == 2
    line = one_error_line(capsys.readouterr().err, "[prepare_geo3k] error:")
    assert "--local-dir" in line and expected in line and "hub" not in line, line


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 900 KiB tmpfs: one LoRA checkpoint of the tiny model (~560 KiB) fits, a second does not."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_disk_full_is_one_line_with_the_resume_command(
    small_disk: Path, train_inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run = small_disk / "run"
    code = _train(*train_inputs, f"trainer.default_local_dir={run}", "trainer.total_training_steps=3",
                  "trainer.save_freq=1", "actor_rollout_ref.model.lora_rank=16")
    err = capsys.readouterr().err
    line = one_error_line(err, "cepo train:")
    assert code == 1, err
    assert line.startswith(f"cepo train: no space left on device in {run} at step ")
    assert f"last checkpoint: {run / 'checkpoint-1'}; free space, then resume with: cepo train " in line
    assert line.endswith(" --resume")
