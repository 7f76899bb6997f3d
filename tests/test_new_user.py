"""Tried as a new user would (issue 17 §3): ``cepo eval --local`` results per model and never silently replaced,
``scripts/train_*.sh --help``, the repository's ignored output folders, ``cepo smoke --base-model``, λ only for the
methods that have one, ``cepo plot`` runs whose curves coincide."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cepo.cli import main as cli_main
from cepo.testing.cli_checks import one_error_line

ROOT = Path(__file__).resolve().parents[1]


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
    line = one_error_line(capsys.readouterr().err, "cepo eval:")
    assert f"{first.parent} already holds results (eval.json); replace them with --overwrite" in line, line
    assert first.read_text() == before
    assert _eval_local(run_a / "final", data, "--overwrite") == 0
    assert "generating: 100%" in capsys.readouterr().err  # a progress bar while it generates


def test_eval_local_output_dir_is_checked(two_runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    run_a, _, data = two_runs
    (tmp_path / "f").write_text("")
    assert _eval_local(run_a / "final", data, "--output-dir", str(tmp_path / "f")) == 2
    assert "--output-dir" in one_error_line(capsys.readouterr().err, "cepo eval:")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--name", ""], "--name is empty; give one, or leave --name out (default: the --local file's stem)"),
    (["--label", " "], "--label is empty; give one, or leave --label out (default: the run's method, or Base)"),
])
def test_eval_empty_name_or_label_is_refused(two_runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path, extra: list[str], fragment: str) -> None:
    """An empty --name / --label was replaced by its default without a word (issue 17 trial: exit 0)."""
    run_a, _, data = two_runs
    assert _eval_local(run_a / "final", data, "--output-dir", str(tmp_path / "out"), *extra) == 2
    assert fragment in one_error_line(capsys.readouterr().err, "cepo eval:")
    assert not (tmp_path / "out").exists()


def test_eval_name_without_local_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--name applies to --local only; with --benchmarks it was ignored without a word."""
    argv = ["eval", str(tmp_path), "--benchmarks", "mmmu", "--name", "mine", "--dry-run"]
    assert cli_main(argv) == 2
    assert "--name names the --local file's benchmark" in one_error_line(capsys.readouterr().err, "cepo eval:")


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--dry-run"], "--dry-run is for the benchmarks that lmms-eval / lm-eval run"),
    (["--model-args", "tensor_parallel_size=2"], "--model-args is for the benchmarks that lmms-eval / lm-eval run"),
    (["--lmms-eval-python", "/usr/bin/python3"], "--lmms-eval-python is for the benchmarks that lmms-eval"),
])
def test_eval_local_refuses_the_external_evaluators_options(
    two_runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str],
    fragment: str,
) -> None:
    """--local ran the whole evaluation and ignored these (issue 17 trial: exit 0)."""
    run_a, _, data = two_runs
    assert _eval_local(run_a / "final", data, "--output-dir", str(tmp_path / "out"), *extra) == 2
    assert fragment in one_error_line(capsys.readouterr().err, "cepo eval:")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("benchmarks", ["mmmu", "math500"])
def test_eval_seed_without_local_is_refused(benchmarks: str, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    """--seed seeds --local's sampling only; lmms-eval / lm-eval never got it."""
    assert cli_main(["eval", str(tmp_path), "--benchmarks", benchmarks, "--seed", "3", "--dry-run"]) == 2
    assert "--seed is the sampling seed of --local" in one_error_line(capsys.readouterr().err, "cepo eval:")


@pytest.mark.parametrize("extra", [["--no-thinking"], ["--device", "cpu"]])
def test_eval_vision_benchmarks_refuse_local_only_options(extra: list[str], capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    assert cli_main(["eval", str(tmp_path), "--benchmarks", "mmmu", "--dry-run", *extra]) == 2
    line = one_error_line(capsys.readouterr().err, "cepo eval:")
    assert f"{extra[0]} applies to --local and the text benchmarks" in line, line


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
    line = one_error_line(capsys.readouterr().err, "cepo smoke:")
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


# -- ConSPO's step line: a number that moves in place of its loss (0 by construction) -------------------------------
def test_conspo_negative_probability_against_its_infonce() -> None:
    """``cepo/conspo_neg_prob`` against 1 - P⁺ of Eq. 13's softmax, written out in float64 per group."""
    import math

    import torch

    from cepo.algorithms import CreditInputs, compute_token_advantages, sequence_advantages

    gen = torch.Generator().manual_seed(3)
    scores = -torch.rand(12, generator=gen, dtype=torch.float64) * 3
    rewards = torch.tensor([1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0], dtype=torch.float64)  # 3rd group: no positive
    groups = [i // 4 for i in range(12)]
    tau, margin = 0.7, 0.05
    expected = []
    for g in range(3):
        rows = [i for i in range(12) if groups[i] == g]
        pos = [float(scores[i]) for i in rows if rewards[i] >= 0.5]
        neg = [float(scores[i]) for i in rows if rewards[i] < 0.5]
        if pos and neg:
            one_minus = [1 - math.exp((s - margin) / tau) / (math.exp((s - margin) / tau)
                                                             + sum(math.exp(n / tau) for n in neg)) for s in pos]
            expected.append(sum(one_minus) / len(one_minus))
    adv = sequence_advantages("conspo", rewards, groups, scores=scores, options={"tau": tau, "margin": margin})
    mask = torch.ones(12, 5)
    _, metrics = compute_token_advantages("conspo", CreditInputs(adv, mask, 0.0, 0.2, num_tokens=60))
    assert metrics["conspo_neg_prob"] == pytest.approx(sum(expected) / len(expected), rel=1e-9)
    _, equal = compute_token_advantages("conspo", CreditInputs(  # equal scores, no margin: N- / (N- + 1)
        sequence_advantages("conspo", rewards[:4], groups[:4], scores=torch.zeros(4, dtype=torch.float64)),
        mask[:4], 0.0, 0.2, num_tokens=20))
    assert equal["conspo_neg_prob"] == pytest.approx(3 / 4)
    _, grpo = compute_token_advantages("grpo", CreditInputs(adv, mask, 0.0, 0.2))
    assert "conspo_neg_prob" not in grpo


def test_step_line_leaves_out_conspo_loss_only() -> None:
    from cepo.integrations.trl.run import step_line

    row = {"step": 2, "wall_seconds": 0.5, "reward": 0.25, "loss": 0.0, "cepo/conspo_neg_prob": 0.6}
    assert "loss" not in step_line(row, "conspo") and "1-P+ 0.6000" in step_line(row, "conspo")
    assert "loss 0.0000" in step_line({**row, "loss": 0.0}, "grpo")


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


# -- the run's model card ---------------------------------------------------------------------------------------
def _trl_card(tmp_path: Path, base_model: str | None) -> Path:
    """The README.md GRPOTrainer.create_model_card writes for a model loaded from a local folder (base_model None)."""
    from trl import GRPOTrainer
    from trl.trainer.utils import generate_model_card

    card = generate_model_card(base_model=base_model, model_name="run", hub_model_id=None, dataset_name=None,
                               tags=["trl", "grpo"], wandb_url=None, trackio_url=None, trainer_name=GRPOTrainer._name,
                               trainer_citation=GRPOTrainer._paper.get("citation"),
                               paper_title=GRPOTrainer._paper.get("title"), paper_id=GRPOTrainer._paper.get("id"))
    card.save(str(tmp_path / "README.md"))
    return tmp_path / "README.md"


def test_model_card_names_method_and_base_model(tmp_path: Path) -> None:
    from cepo.integrations.trl.model_card import fix_model_card

    card = _trl_card(tmp_path, None)
    assert "fine-tuned version of [None]" in card.read_text()  # what TRL writes for a local base model
    base = tmp_path / "base-model"
    base.mkdir()
    assert fix_model_card(card, "conspo", str(base), tmp_path / "final")
    text = card.read_text()
    assert f"This model is a fine-tuned version of `{base}` (a local model)" in text
    assert "This model was trained with ConSPO (cepo_method='conspo'" in text and "trained with GRPO" not in text
    assert f'model="{tmp_path / "final"}"' in text and "None" not in text.split("## Training procedure")[0]

    card = _trl_card(tmp_path, None)
    fix_model_card(card, "grpo", "Qwen/Qwen3-VL-2B-Instruct", tmp_path / "final")
    text = card.read_text()
    assert "fine-tuned version of [Qwen/Qwen3-VL-2B-Instruct](https://huggingface.co/Qwen/Qwen3-VL-2B-Instruct)" in text
    assert "This model was trained with GRPO, a method introduced in" in text  # GRPO's own sentence is right


@pytest.mark.slow
def test_smoke_run_model_card(smoke_model: Path, tmp_path: Path) -> None:
    from cepo.smoke import run_smoke

    run_smoke(tmp_path / "run", method="cepo", steps=1, model_dir=smoke_model, echo=False)
    text = (tmp_path / "run" / "README.md").read_text()
    assert f"fine-tuned version of `{smoke_model}`" in text and "trained with CEPO" in text


# -- files a smoke run leaves to try eval --local and credit-map ---------------------------------------------------
def test_smoke_try_files_feed_eval_local_and_credit_map(tmp_path: Path) -> None:
    import shlex

    from PIL import Image

    from cepo.cli import build_parser
    from cepo.evaluation.local import load_examples
    from cepo.smoke_files import TRY_PROBLEMS, write_try_files

    eval_line, credit_line = write_try_files(tmp_path / "run", seed=0)
    examples = load_examples(tmp_path / "run" / "try" / "test.parquet")
    assert len(examples) == TRY_PROBLEMS and all(e.answer and len(e.images) == 1 for e in examples)
    assert Image.open(tmp_path / "run" / "try" / "figure.png").size == examples[0].images[0].size
    eval_ns = build_parser().parse_args(shlex.split(eval_line)[1:])
    credit_ns = build_parser().parse_args(shlex.split(credit_line)[1:])
    assert eval_ns.command == "eval" and eval_ns.local == str(tmp_path / "run" / "try" / "test.parquet")
    assert eval_ns.model == credit_ns.model == str(tmp_path / "run" / "final")
    assert credit_ns.answer == examples[0].answer != credit_ns.wrong_answer and credit_ns.sample


# -- an unreachable hub: one line ------------------------------------------------------------------------------------
def test_hub_retries_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub's own retry loop against a host that never resolves (.invalid, RFC 2606): one line."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.utils import http_backoff

    from cepo.hub_messages import HUB_HTTP_LOGGER, quiet_hub_retries

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline (conftest)

    quiet_hub_retries()
    quiet_hub_retries()  # installed once
    seen: list[str] = []
    collect = logging.Handler()
    collect.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(HUB_HTTP_LOGGER)
    logger.addHandler(collect)
    try:
        with pytest.raises(httpx.HTTPError):
            http_backoff("HEAD", "https://cepo-test.invalid/config.json", max_retries=2, base_wait_time=0.01)
    finally:
        logger.removeHandler(collect)
    lines = seen
    assert len(lines) == 1, lines
    assert lines[0].startswith("hub: cannot reach cepo-test.invalid (") and "HF_HUB_OFFLINE=1" in lines[0]
