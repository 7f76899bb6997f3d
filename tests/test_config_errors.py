"""Bad configs give one line naming the key (or file:line) and the fix, exit status 2, no traceback, on both
entry points: ``cepo train --config`` (TRL engine) and ``python -m cepo.integrations.verl.main`` (Hydra app).

Most cases call the entry points' ``main`` in-process (the verl imports take seconds per subprocess on 2
cores); a few run the real commands as subprocesses for the end-to-end exit status and stderr.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cepo

PACKAGE_CONFIGS_DIR = Path(cepo.__file__).resolve().parent / "configs"
ROOT = Path(__file__).resolve().parents[1]

VERL_MAIN = [sys.executable, "-m", "cepo.integrations.verl.main"]
CEPO_CLI = [sys.executable, "-m", "cepo.cli"]


def _one_line(stderr: str) -> str:
    """The single error line; fails if stderr holds a traceback or more than one line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def _verl_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m cepo.integrations.verl.main <argv>`` in-process: (exit status, stdout, stderr)."""
    from cepo.integrations.verl.main import main

    saved = sys.argv
    sys.argv = ["cepo/integrations/verl/main.py", *argv]
    try:
        code = main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    out = capsys.readouterr()
    return code, out.out, out.err


def _cepo_train(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``cepo train <argv>`` in-process: (exit status, stdout, stderr)."""
    from cepo.cli import main

    try:
        code = main(["train", *argv])
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty working directory (so a stray ``outputs/`` would show) with the package configs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CEPO_CONFIGS_DIR", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


def _configs_copy(tmp_path: Path, drop: tuple[str, ...] = (), append: dict[str, str] | None = None) -> Path:
    """A copy of the package configs without ``drop`` and with text appended to some files."""
    folder = tmp_path / "my_configs"
    folder.mkdir()
    for path in PACKAGE_CONFIGS_DIR.glob("*.yaml"):
        if path.stem not in drop:
            shutil.copy(path, folder / path.name)
    for name, text in (append or {}).items():
        with open(folder / f"{name}.yaml", "a") as f:
            f.write(text)
    return folder


# (overrides, fragments the one line must hold): the key and the fix
BAD_OVERRIDES = [
    pytest.param(["cepo.eps=0.3"], ["cepo.eps ", "cepo.eps_w", "+cepo.eps=0.3"], id="misspelt-cepo-key"),
    pytest.param(["actor_rollout_ref.actor.optim.lrr=1"],
                 ["actor_rollout_ref.actor.optim.lrr", "+actor_rollout_ref.actor.optim.lrr=1", "lr_warmup_steps"],
                 id="misspelt-verl-key"),
    pytest.param(["actor_rollout_ref.rolout.n=4"], ["actor_rollout_ref.rolout", "actor_rollout_ref.rollout"],
                 id="misspelt-verl-block"),
    pytest.param(["cepo.lam0=[1"], ["'cepo.lam0=[1'", "key=value"], id="override-syntax"),
    pytest.param(["foo"], ["'foo'", "key=value"], id="override-without-value"),
    pytest.param(["cepo.lam0="], ["cepo.lam0", "number"], id="empty-value"),
    pytest.param(["cepo.lam0=1.5"], ["cepo.lam0", "[0, 1]"], id="out-of-range"),
    pytest.param(["algorithm.use_kl_in_reward=true"],
                 ["algorithm.use_kl_in_reward", "actor_rollout_ref.actor.use_kl_loss"], id="kl-in-reward"),
    pytest.param(["actor_rollout_ref.rollout.multi_turn.enable=true"],
                 ["actor_rollout_ref.rollout.multi_turn.enable", "grpo"], id="multi-turn"),
    pytest.param(["data.train_files=/nonexistent/train.parquet"],
                 ["data.train_files entry '/nonexistent/train.parquet' does not exist", "scripts/prepare_geo3k.py"],
                 id="missing-data-file"),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_OVERRIDES)
def test_verl_entry_point_bad_override(in_tmp, capsys, overrides, fragments):
    code, out, err = _verl_main(overrides, capsys)
    assert out == ""
    line = _one_line(err)
    assert code == 2 and line.startswith("cepo (verl): error:")
    for fragment in fragments:
        assert fragment in line, line
    assert not (in_tmp / "outputs").exists() and list(in_tmp.iterdir()) == []


@pytest.mark.parametrize(("overrides", "fragments"), BAD_OVERRIDES[:4] + BAD_OVERRIDES[7:8])
def test_cepo_train_bad_override(in_tmp, capsys, overrides, fragments):
    code, _, err = _cepo_train(["--config", str(PACKAGE_CONFIGS_DIR / "cepo.yaml"), *overrides], capsys)
    line = _one_line(err)
    assert code == 2 and line.startswith("cepo train: error:")
    for fragment in fragments:
        assert fragment in line, line
    assert list(in_tmp.iterdir()) == []  # a failed start leaves nothing in the working directory


@pytest.mark.parametrize(("overrides", "fragments"), [
    (["cepo.lam0=1.5"], ["cepo.lam0", "[0, 1]"]),
    (["algorithm.adv_estimator=rlsd"], ["algorithm.adv_estimator", "cepo.method"]),
])
def test_verl_cfg_job_validates_before_printing(in_tmp, capsys, overrides, fragments):
    code, out, err = _verl_main(["--cfg", "job", *overrides], capsys)
    line = _one_line(err)
    assert code == 2 and out == ""
    for fragment in fragments:
        assert fragment in line, line


def test_verl_unknown_config_name(in_tmp, capsys):
    code, _, err = _verl_main(["--config-name", "cepoo"], capsys)
    line = _one_line(err)
    assert code == 2 and "cepoo.yaml" in line and str(PACKAGE_CONFIGS_DIR) in line and "cepo, conspo, grpo" in line


@pytest.mark.parametrize("engine", ["verl", "trl"])
def test_yaml_syntax_error_names_file_and_line(in_tmp, capsys, monkeypatch, engine):
    folder = _configs_copy(in_tmp, append={"cepo": "extra:\n  lam0: [1\n"})
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(folder))
    line_no = len((folder / "cepo.yaml").read_text().splitlines())  # the flow sequence never closes
    if engine == "verl":
        code, _, err = _verl_main(["--cfg", "job"], capsys)
    else:
        code, _, err = _cepo_train(["--config", str(folder / "cepo.yaml")], capsys)
    line = _one_line(err)
    assert code == 2 and f"{folder / 'cepo.yaml'}:" in line and f"line {line_no}" in line, line


@pytest.mark.parametrize("engine", ["verl", "trl"])
def test_configs_dir_without_paper_base(in_tmp, capsys, monkeypatch, engine):
    folder = _configs_copy(in_tmp, drop=("paper_base",))
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(folder))
    if engine == "verl":
        code, _, err = _verl_main(["--cfg", "job"], capsys)
    else:
        code, _, err = _cepo_train(["--config", str(folder / "cepo.yaml")], capsys)
    line = _one_line(err)
    assert code == 2 and "paper_base.yaml" in line and str(folder) in line and "CEPO_CONFIGS_DIR" in line


def test_configs_dir_without_cepo_yaml_is_used_not_ignored(in_tmp, capsys, monkeypatch):
    folder = _configs_copy(in_tmp, drop=("cepo",))
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(folder))
    code, _, err = _verl_main(["--cfg", "job"], capsys)
    line = _one_line(err)
    assert code == 2 and "cepo.yaml" in line and str(folder) in line and "CEPO_CONFIGS_DIR" in line
    code, out, _ = _verl_main(["--config-name", "rlsd", "--cfg", "job"], capsys)  # its other YAMLs compose
    assert code == 0 and "adv_estimator: rlsd" in out


def test_configs_dir_not_a_folder(in_tmp, capsys, monkeypatch):
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(in_tmp / "nowhere"))
    code, _, err = _verl_main(["--cfg", "job"], capsys)
    line = _one_line(err)
    assert code == 2 and str(in_tmp / "nowhere") in line and "CEPO_CONFIGS_DIR" in line


def test_verl_run_puts_hydra_folder_in_the_run_dir(in_tmp, capsys, monkeypatch):
    """A run that passes validation: Hydra's folder goes under trainer.default_local_dir, not ./outputs."""
    import cepo.integrations.verl.main as entry

    seen: dict[str, object] = {}

    def fake_run(cfg):  # stands in for prepare + run_ppo (they need vLLM and GPUs)
        from hydra.core.hydra_config import HydraConfig

        seen["output_dir"] = Path(HydraConfig.get().runtime.output_dir)
        seen["run_dir"] = Path(cfg.trainer.default_local_dir).resolve()

    monkeypatch.setattr(entry, "run", fake_run)
    monkeypatch.setattr(entry, "start_ray_checked", lambda cfg: None)  # the GPU check (0 GPUs here: exit 2)
    monkeypatch.setattr(entry, "prepare", lambda cfg: None)  # its vLLM check (not installed here: exit 2)
    data = in_tmp.parent / f"{in_tmp.name}-data"  # outside the working directory the test watches
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.parquet").touch()
    monkeypatch.setenv("DATA_DIR", str(data))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code, _, err = _verl_main(["--config-name", "grpo", "trainer.default_local_dir=runs/g"], capsys)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
    assert not code, err
    assert seen["run_dir"] == in_tmp / "runs" / "g"
    assert seen["output_dir"].parent == in_tmp / "runs" / "g" / "hydra"
    assert (seen["output_dir"] / ".hydra" / "config.yaml").is_file()
    assert not (in_tmp / "outputs").exists()


def test_full_error_env_keeps_the_traceback(in_tmp, monkeypatch):
    """HYDRA_FULL_ERROR=1 (set by the user) still gives the full exception, for debugging."""
    from cepo.integrations.verl.main import main
    from cepo.recipes import ConfigError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["main.py", "cepo.eps=0.3"])
    with pytest.raises(ConfigError, match=r"cepo\.eps"):
        main()


# End to end: the real commands, as a user runs them.


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CEPO_CONFIGS_DIR")}
    return subprocess.run(cmd, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=180)


def test_subprocess_verl_cfg_job_invalid(tmp_path):
    out = _run([*VERL_MAIN, "--cfg", "job", "cepo.lam0=1.5"], tmp_path)
    line = _one_line(out.stderr)
    assert out.returncode == 2 and out.stdout == "" and "cepo.lam0" in line
    assert list(tmp_path.iterdir()) == []


def test_subprocess_cepo_train_yaml_error(tmp_path):
    folder = _configs_copy(tmp_path, append={"paper_base": "  bad: : x\n"})
    out = _run([*CEPO_CLI, "train", "--config", str(folder / "cepo.yaml")], tmp_path,
               env={"CEPO_CONFIGS_DIR": str(folder)})
    line = _one_line(out.stderr)
    n = len((folder / "paper_base.yaml").read_text().splitlines())
    assert out.returncode == 2 and f"{folder / 'paper_base.yaml'}:{n}:" in line, line


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("engine", ["trl", pytest.param("verl", marks=pytest.mark.slow)])
def test_failed_start_leaves_nothing_in_the_repository(tmp_path: Path, engine: str) -> None:
    """Issue 17 §3: run from a copy of the repository's top folder (with the installed package's configs), a start
    that fails on a missing data file writes nothing there: no ``outputs/`` of Hydra, no run or checkpoint folder.
    verl's entry point does not read the data files before Ray starts: here it stops at the GPU check (0 GPUs)."""
    repo = tmp_path / "repo"
    for name in ("configs", "scripts", "pyproject.toml"):
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, repo / name)
    before = _tree(repo)
    bad = ["data.train_files=/nonexistent/train.parquet"]
    if engine == "trl":
        out = _run([*CEPO_CLI, "train", "--config", str(PACKAGE_CONFIGS_DIR / "cepo.yaml"), *bad], repo)
        line = _one_line(out.stderr)
        assert "data.train_files" in line and "/nonexistent/train.parquet" in line, line
    else:
        out = _run([*VERL_MAIN, "--config-name", "cepo", *bad], repo)
        assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 2, out.stderr
    assert _tree(repo) == before
