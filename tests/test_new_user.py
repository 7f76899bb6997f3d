"""Tried as a new user would (issue 17 §3): ``cepo eval --local`` results per model and never silently replaced,
``scripts/train_*.sh --help``, the repository's ignored output folders, ``cepo smoke --base-model``, λ only for the
methods that have one, ``cepo plot`` runs whose curves coincide."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cepo.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _one_error_line(err: str, prefix: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    return lines[0]


# -- cepo eval --local: where results go ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Two TRL-run-shaped folders (metrics.jsonl + final/ with a tiny random Qwen3-VL) and a Geo3k-like file."""
    from cepo.testing import make_geo3k_like, save_tiny_qwen3vl

    base = tmp_path_factory.mktemp("two_runs")
    runs = []
    for name, seed in (("run-a", 0), ("run-b", 1)):
        save_tiny_qwen3vl(base / name / "final", seed=seed)
        (base / name / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.0}) + "\n")
        runs.append(base / name)
    make_geo3k_like(2).to_parquet(str(base / "geo.parquet"))
    return runs[0], runs[1], base / "geo.parquet"


def _eval_local(model: Path, data: Path, *extra: str) -> int:
    return cli_main(["eval", str(model), "--local", str(data), "--max-new-tokens", "2", "--temperature", "0", *extra])


def test_eval_local_results_go_under_each_run_and_are_kept(
    two_runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_a, run_b, data = two_runs
    monkeypatch.chdir(data.parent)
    assert _eval_local(run_a / "final", data) == 0
    assert _eval_local(run_b / "final", data) == 0
    first, second = run_a / "eval" / "local-geo" / "eval.json", run_b / "eval" / "local-geo" / "eval.json"
    assert json.loads(first.read_text())["model"] == str(run_a / "final")
    assert json.loads(second.read_text())["model"] == str(run_b / "final")
    assert not (data.parent / "eval").exists()  # nothing in the current folder
    capsys.readouterr()
    before = first.read_text()
    assert _eval_local(run_a / "final", data) == 2  # results there: refused, before the model loads
    line = _one_error_line(capsys.readouterr().err, "cepo eval:")
    assert f"{first.parent} already holds results (eval.json); replace them with --overwrite" in line, line
    assert first.read_text() == before
    assert _eval_local(run_a / "final", data, "--overwrite") == 0
    assert "generating: 100%" in capsys.readouterr().err  # a progress bar while it generates


def test_eval_local_output_dir_is_checked(two_runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    run_a, _, data = two_runs
    (tmp_path / "f").write_text("")
    assert _eval_local(run_a / "final", data, "--output-dir", str(tmp_path / "f")) == 2
    assert "--output-dir" in _one_error_line(capsys.readouterr().err, "cepo eval:")


# -- scripts and the repository ------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("train_*.sh")))
def test_train_scripts_print_usage(script: str, tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ") and "NGPUS" in done.stdout and "MODEL_PATH" in done.stdout
    assert done.stderr == ""


def test_output_folders_are_ignored_by_git(tmp_path: Path) -> None:
    names = ["runs/smoke/x", "checkpoints/a", "eval/local-geo/eval.json", "credit-map/credit_map.png",
             "outputs/2026/x"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(names), done.stdout + done.stderr


# -- cepo smoke --base-model ----------------------------------------------------------------------------------------
def test_smoke_base_model_is_where_the_warm_start_goes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def stub(model_dir: Path, **_: Any) -> None:
        calls.append(Path(model_dir))
        raise ValueError("WARM START reached")

    monkeypatch.setattr("cepo.smoke.prepare_smoke_model", stub)
    shared = tmp_path / "shared-base"
    assert cli_main(["smoke", "--output-dir", str(tmp_path / "run"), "--base-model", str(shared)]) == 2
    assert calls == [shared] and "WARM START reached" in capsys.readouterr().err
    assert cli_main(["smoke", "--output-dir", str(tmp_path / "run"), "--base-model", "/sys/cepo-base"]) == 2
    line = _one_error_line(capsys.readouterr().err, "cepo smoke:")
    assert "--base-model '/sys/cepo-base' cannot be written" in line and calls == [shared], line


# -- λ only for the methods that have one ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["grpo", "opsd", "sdpo", "conspo", "rlsd", "cepo"])
def test_lambda_is_logged_only_for_methods_with_lambda(method: str, tmp_path: Path) -> None:
    from transformers import TrainerState

    from cepo.algorithms import METHODS
    from cepo.integrations.trl.run import MetricsFileCallback

    callback = MetricsFileCallback(tmp_path / "metrics.jsonl", echo=False, method=method)
    state = TrainerState()
    state.global_step = 1
    callback.on_log(None, state, None, logs={"loss": 0.5, "reward": 0.25, "cepo/lambda": 0.5})
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    has_lambda = method in ("rlsd", "cepo")
    assert METHODS[method].lambda_gated == has_lambda
    assert ("cepo/lambda" in row) == has_lambda and row["reward"] == 0.25


def test_verl_grpo_metrics_have_no_lambda() -> None:
    from cepo.config import CEPOConfig
    from cepo.integrations.verl.credit import apply_token_credit

    # GRPO keeps verl's own advantages: the batch is not read
    assert "cepo/lambda" not in apply_token_credit(None, CEPOConfig(method="grpo"), step=0)


# -- cepo plot: coinciding curves stay visible ----------------------------------------------------------------------
def test_plot_coinciding_runs_are_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.pyplot as plt

    from cepo.analysis.plots import load_run, plot_runs

    for name in ("grpo", "rlsd"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "reward": 0.1 * s}) + "\n" for s in range(1, 5)))
    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read it back
    plot_runs([load_run(tmp_path / "grpo"), load_run(tmp_path / "rlsd")], tmp_path / "c.png", panels=["reward"])
    (ax,) = [a for a in figures[0].axes if a.lines]
    first, second = ax.lines
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["grpo", "rlsd (= grpo)"]
    assert first.get_marker() != second.get_marker()
    assert first.get_markersize() > second.get_markersize()  # the one underneath shows around the one on top
