"""cepo eval for text models: MATH-500 / AIME 2024 / AIME 2025 through lm-evaluation-harness (a separate program,
avg@k over k samples per problem), ``--local --samples k`` with cepo's verifier, and cepo report's avg@k columns.

The lm-eval result fixture (tests/data/lm_eval_0_4_13_*) is a real lm-eval 0.4.13 run through cepo's task folder:
``evaluate_lm_eval`` with the hf backend on the warm-started tiny text LM of ``cepo smoke --text``, 8 arithmetic
problems as a local copy of AIME 2024, k = 4, 24 new tokens, thinking off."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from cepo.cli import main
from cepo.data import student_prompt
from cepo.evaluation.benchmarks import (
    BENCHMARKS,
    TEXT_BENCHMARKS,
    SamplingSettings,
    is_text_selection,
    resolve_text_benchmarks,
)
from cepo.evaluation.lm_eval import BACKENDS, PYTHON_ENV, build_command, read_results_file, score_from_results
from cepo.evaluation.lm_eval import write_task_dir as write_tasks
from cepo.evaluation.local import avg_at_k
from cepo.evaluation.results import BenchmarkScore, EvalResult, table2_markdown

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
RESULTS_FIXTURE = DATA / "lm_eval_0_4_13_results.json"
SAMPLES_FIXTURE = DATA / "lm_eval_0_4_13_samples.jsonl"
THINKING_OFF = {"enable_thinking": False}


class _TaskLoader(yaml.SafeLoader):
    """YAML loader that reads lm-eval's ``!function module.name`` tags as text."""


_TaskLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cepo eval: error: ") and "Traceback" not in err, err
    return lines[0]


def _utils_module(task_dir: Path) -> ModuleType:
    """The written ``utils.py``, imported from its file as lm-eval does."""
    spec = importlib.util.spec_from_file_location(f"cepo_task_utils_{abs(hash(task_dir))}", task_dir / "utils.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the table -------------------------------------------------------------------------------------------------
def test_text_benchmarks_read_the_data_prepare_math_converts() -> None:
    spec = importlib.util.spec_from_file_location("prepare_math", ROOT / "scripts" / "prepare_math.py")
    assert spec is not None and spec.loader is not None
    prepare_math = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare_math)
    sources = {"math500": "math500", "aime24": "aime2024", "aime25": "aime2025"}
    for name, split_name in sources.items():
        _, hub, split = prepare_math.SOURCES[split_name]
        assert (TEXT_BENCHMARKS[name].dataset_path, TEXT_BENCHMARKS[name].split) == (hub, split)
    assert [b.task for b in TEXT_BENCHMARKS.values()] == ["cepo_math500", "cepo_aime24", "cepo_aime25"]
    assert {b.name: b.default_samples for b in TEXT_BENCHMARKS.values()} == {"math500": 4, "aime24": 32, "aime25": 32}
    assert not set(TEXT_BENCHMARKS) & set(BENCHMARKS)


def test_resolve_text_benchmarks() -> None:
    assert resolve_text_benchmarks("text") == list(TEXT_BENCHMARKS.values())
    assert [b.name for b in resolve_text_benchmarks("AIME2025, math-500,cepo_aime24")] == ["aime25", "math500",
                                                                                            "aime24"]
    assert is_text_selection("aime24") and is_text_selection("text") and not is_text_selection("mmmu,wemath")
    assert not is_text_selection(None)
    with pytest.raises(ValueError, match=r"mixes the text benchmark.*'mmmu'"):
        resolve_text_benchmarks("aime24,mmmu")
    with pytest.raises(ValueError, match="unknown benchmark 'gsm8k'"):
        resolve_text_benchmarks("aime24,gsm8k")


# -- the task folder -------------------------------------------------------------------------------------------
def test_task_folder_samples_k_per_problem_with_the_training_prompt(tmp_path: Path) -> None:
    task_dir = write_tasks(tmp_path / "tasks", TEXT_BENCHMARKS.values(), {"math500": 4, "aime24": 32, "aime25": 3})
    assert sorted(p.name for p in task_dir.iterdir()) == ["cepo_aime24.yaml", "cepo_aime25.yaml",
                                                          "cepo_math500.yaml", "utils.py"]
    for bench, k in ((TEXT_BENCHMARKS["aime24"], 32), (TEXT_BENCHMARKS["aime25"], 3)):
        config = yaml.load((task_dir / f"{bench.task}.yaml").read_text(), Loader=_TaskLoader)
        assert config["task"] == bench.task
        assert (config["dataset_path"], config["test_split"]) == (bench.dataset_path, bench.split)
        assert config["repeats"] == k and config["metadata"]["samples_per_problem"] == k
        assert config["filter_list"] == [{"name": "k_samples", "filter": [{"function": "take_first_k", "k": k}]}]
        assert [m["metric"] for m in config["metric_list"]] == ["avg_at_k", "pass_at_k"]
        assert all(m["aggregation"] == "mean" for m in config["metric_list"])
        assert config["process_results"] == "!function utils.process_results"
        assert config["generation_kwargs"]["until"] == []  # no stop string: a response ends at end-of-sequence
        assert config["num_fewshot"] == 0
    utils = _utils_module(task_dir)
    # the prompt of training, whichever capitalisation the hub copy uses
    assert utils.doc_to_text({"problem": "Find $x$.", "answer": "3"}) == student_prompt("Find $x$.")
    assert utils.doc_to_text({"Problem": "Find $y$.", "Answer": 7}) == student_prompt("Find $y$.")
    assert utils.doc_to_target({"ID": "2024-I-1", "Answer": 204}) == "204"


def test_task_scoring_is_the_fraction_of_k_correct(tmp_path: Path) -> None:
    utils = _utils_module(write_tasks(tmp_path / "tasks", [TEXT_BENCHMARKS["math500"]], {"math500": 4}))
    doc = {"problem": "Half of one?", "answer": "\\frac{1}{2}"}
    responses = ["so \\boxed{\\dfrac{1}{2}}", "\\boxed{0.5}", "\\boxed{2}", "the answer is 1/2"]  # right, right,
    # wrong, no box
    out = utils.process_results(doc, [responses])  # lm-eval's take_first_k: [[r1, ..., rk]]
    assert out == {"avg_at_k": 2 / 4, "pass_at_k": 1.0}
    assert utils.process_results(doc, ["\\boxed{3}"]) == {"avg_at_k": 0.0, "pass_at_k": 0.0}  # take_first: [r]
    assert utils.last_boxed("a \\boxed{1} then \\boxed{\\frac{3}{4}} end") == "\\frac{3}{4}"
    assert utils.last_boxed("cut off \\boxed{\\frac{3}{4}") is None


# -- the command -----------------------------------------------------------------------------------------------
def _flags(command: list[str]) -> dict[str, str]:
    return {command[i]: command[i + 1] for i in range(4, len(command) - 1)
            if command[i].startswith("--") and not command[i + 1].startswith("--")}


def test_lm_eval_command(tmp_path: Path) -> None:
    sampling = SamplingSettings()  # the paper's: 1.0 / 1.0 / 40 / 2.0 / 32000
    command = build_command("/venv/bin/python", TEXT_BENCHMARKS["aime24"], "/ckpt/merged", BACKENDS["vllm"],
                            sampling, tmp_path / "out", tmp_path / "tasks",
                            model_args={"tensor_parallel_size": "2", "gpu_memory_utilization": "0.85"},
                            chat_template_kwargs=THINKING_OFF)
    assert command[:4] == ["/venv/bin/python", "-m", "lm_eval", "run"]
    flags = _flags(command)
    assert flags["--model"] == "vllm" and flags["--tasks"] == "cepo_aime24"
    assert flags["--include_path"] == str(tmp_path / "tasks") and flags["--output_path"] == str(tmp_path / "out")
    assert "--apply_chat_template" in command and "--log_samples" in command and "--device" not in command
    model_args = json.loads(flags["--model_args"])
    assert model_args == {"pretrained": "/ckpt/merged", "max_model_len": 40000, "dtype": "bfloat16",
                          "max_gen_toks": 32000, "enable_thinking": False, "tensor_parallel_size": 2,
                          "gpu_memory_utilization": 0.85}
    gen = json.loads(flags["--gen_kwargs"])
    assert gen == {"do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 40, "presence_penalty": 2.0,
                   "max_gen_toks": 32000}
    hf = build_command("py", TEXT_BENCHMARKS["math500"], "m", BACKENDS["hf"], sampling, "o", "t", batch_size=8,
                       limit=5, device="cpu")
    hf_flags = _flags(hf)
    assert "presence_penalty" not in json.loads(hf_flags["--gen_kwargs"])  # transformers' generate has none
    assert json.loads(hf_flags["--model_args"]) == {"pretrained": "m"}  # thinking: the template's default
    assert hf_flags["--device"] == "cpu" and hf_flags["--batch_size"] == "8" and hf[-2:] == ["--limit", "5"]
    greedy = build_command("py", TEXT_BENCHMARKS["math500"], "m", BACKENDS["vllm"],
                           SamplingSettings(temperature=0.0, top_k=0, presence_penalty=0.0), "o", "t")
    assert json.loads(_flags(greedy)["--gen_kwargs"]) == {"do_sample": False, "temperature": 0.0, "top_p": 1.0,
                                                          "max_gen_toks": 32000}


def test_dry_run_prints_one_command_per_text_benchmark(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PYTHON_ENV, raising=False)  # a dry run needs no interpreter
    assert main(["eval", "Qwen/Qwen3-1.7B", "--benchmarks", "text", "--dry-run", "--no-thinking", "--samples", "8",
                 "--output-dir", "somewhere"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 3
    assert all(c.startswith(f"'${PYTHON_ENV}' -m lm_eval run --model vllm") for c in commands)
    assert [c.split("--tasks ")[1].split()[0] for c in commands] == ["cepo_math500", "cepo_aime24", "cepo_aime25"]
    assert all('"enable_thinking": false' in c for c in commands)


# -- result files, report --------------------------------------------------------------------------------------
def test_result_file_avg_at_k_and_its_standard_error_match_the_samples(tmp_path: Path) -> None:
    data = read_results_file(RESULTS_FIXTURE)
    score = score_from_results(data, TEXT_BENCHMARKS["aime24"], str(RESULTS_FIXTURE))
    assert score.extra["samples_per_problem"] == 4 and score.metric == "avg@4" and score.n == 8
    # independent: regrade every logged response with the task's own scorer, then average by hand
    utils = _utils_module(write_tasks(tmp_path / "tasks", [TEXT_BENCHMARKS["aime24"]], {"aime24": 4}))
    rows = [json.loads(line) for line in SAMPLES_FIXTURE.read_text().splitlines()]
    assert len(rows) == 8
    fractions = []
    for row in rows:
        (responses,) = row["filtered_resps"]
        assert len(responses) == 4
        grades = [utils.is_correct(r, row["target"]) for r in responses]
        fractions.append(sum(grades) / 4)
        assert row["avg_at_k"] == fractions[-1] and row["pass_at_k"] == float(any(grades))
    assert 0 < sum(fractions) < 8  # some right, some wrong
    assert math.isclose(score.accuracy, 100 * statistics.fmean(fractions))
    assert math.isclose(score.stderr, 100 * statistics.stdev(fractions) / math.sqrt(8))  # lm-eval: n - 1
    assert math.isclose(score.extra["pass_at_k"], 100 * sum(f > 0 for f in fractions) / 8)


def test_report_shows_avg_at_k(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run" / "lm-eval" / "aime24" / "model"
    run.mkdir(parents=True)
    (run / "results_2026-12-06T06-25-20.177956.json").write_text(RESULTS_FIXTURE.read_text())
    assert main(["report", str(tmp_path / "run"), str(RESULTS_FIXTURE), "--labels", "dir,file"]) == 0
    out = capsys.readouterr().out
    assert "| Method | AIME 2024 avg@4 | Average Acc. |" in out
    assert "| dir | **9.38** ± 6.6 | **9.38** ± 6.6 |" in out and "| file | **9.38** ± 6.6 | **9.38** ± 6.6 |" in out
    # rows with different k: each cell names its own
    other = EvalResult("k8", {"aime24": BenchmarkScore(12.5, 3.0, 30, extra={"samples_per_problem": 8})})
    mine = EvalResult("k4", {"aime24": BenchmarkScore(10.0, 2.0, 30, extra={"samples_per_problem": 4})})
    table = table2_markdown([mine, other])
    assert "| Method | AIME 2024 | Average Acc. |" in table
    assert "| k4 | 10.00 ± 2.0 (avg@4) |" in table and "| k8 | **12.50** ± 3.0 (avg@8) |" in table


# -- cepo eval with lm-eval (a stand-in interpreter) -----------------------------------------------------------
FAKE_LM_EVAL = r'''#!{python}
"""Stands in for an lm-eval 0.4.13 interpreter: answers the version probe, records each run, and writes the fixture
result file for the requested task under --output_path/<model>/results_<date>.json, with the task's repeats read
from the YAML cepo wrote into --include_path."""
import json, os, re, sys
from pathlib import Path

argv = sys.argv[1:]
if argv[:1] == ["-c"]:
    print("0.4.13")
    sys.exit(0)
assert argv[:3] == ["-m", "lm_eval", "run"], argv
flags = {{argv[i]: argv[i + 1] for i in range(3, len(argv) - 1) if argv[i].startswith("--")}}
task = flags["--tasks"]
yaml_text = (Path(flags["--include_path"]) / f"{{task}}.yaml").read_text()
k = int(re.search(r"^repeats: (\d+)$", yaml_text, re.M).group(1))
with open(os.environ["FAKE_LM_EVAL_LOG"], "a") as log:
    log.write(json.dumps({{"argv": argv, "k": k}}) + "\n")
if os.environ.get("FAKE_LM_EVAL_FAIL"):
    print("Traceback (most recent call last): something broke in lm-eval")
    sys.exit(3)
data = json.loads(Path(os.environ["FAKE_LM_EVAL_FIXTURE"]).read_text())
data["results"] = {{task: dict(data["results"]["cepo_aime24"], name=task, alias=task)}}
data["n-samples"] = {{task: data["n-samples"]["cepo_aime24"]}}
data["configs"] = {{task: dict(data["configs"]["cepo_aime24"], task=task, repeats=k)}}
data["config"]["gen_kwargs"] = json.loads(flags["--gen_kwargs"])
out = Path(flags["--output_path"]) / "merged-model"
out.mkdir(parents=True, exist_ok=True)
(out / "results_2026-12-06T06-25-20.177956.json").write_text(json.dumps(data))
print("lm-eval (stand-in) finished", task)
'''


@pytest.fixture()
def fake_lm_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    python = tmp_path / "lm-eval-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_LM_EVAL.format(python=sys.executable))
    python.chmod(0o755)
    log = tmp_path / "lm-eval-calls.jsonl"
    monkeypatch.setenv("FAKE_LM_EVAL_LOG", str(log))
    monkeypatch.setenv("FAKE_LM_EVAL_FIXTURE", str(RESULTS_FIXTURE))
    monkeypatch.delenv(PYTHON_ENV, raising=False)
    return python, log


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_cepo_eval_runs_lm_eval_per_text_benchmark(fake_lm_eval: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    python, log = fake_lm_eval
    out = tmp_path / "eval-out"
    argv = ["eval", "Qwen/Qwen3-1.7B", "--lm-eval-python", str(python), "--benchmarks", "aime24,math500",
            "--samples", "4", "--no-thinking", "--output-dir", str(out), "--label", "Qwen3"]
    assert main(argv) == 0
    calls = _calls(log)
    assert [c["argv"][c["argv"].index("--tasks") + 1] for c in calls] == ["cepo_aime24", "cepo_math500"]
    assert [c["k"] for c in calls] == [4, 4]
    assert all(json.loads(c["argv"][c["argv"].index("--model_args") + 1])["enable_thinking"] is False for c in calls)
    result = json.loads((out / "eval.json").read_text())
    assert result["evaluator"] == "lm-eval 0.4.13" and result["backend"] == "vllm" and result["label"] == "Qwen3"
    assert result["chat_template_kwargs"] == THINKING_OFF
    assert list(result["benchmarks"]) == ["aime24", "math500"]
    aime = result["benchmarks"]["aime24"]
    assert aime["accuracy"] == 9.375 and aime["samples_per_problem"] == 4 and aime["metric"] == "avg@4"
    assert aime["gen_kwargs"]["max_gen_toks"] == 32000 and aime["gen_kwargs"]["do_sample"] is True
    assert (out / "lm-eval" / "aime24" / "tasks" / "cepo_aime24.yaml").is_file()  # the task folder it ran
    assert "| Qwen3 | 9.38 ± 6.6 | 9.38 ± 6.6 | 9.38 ± 4.7 |" in capsys.readouterr().out
    # the same command again reads the results already there; another k runs again
    assert main(argv) == 0
    assert len(_calls(log)) == 2 and "reusing" in capsys.readouterr().err
    assert main([("8" if i > 0 and argv[i - 1] == "--samples" else a) for i, a in enumerate(argv)]) == 0
    assert [c["k"] for c in _calls(log)[2:]] == [8, 8]
    assert json.loads((out / "eval.json").read_text())["benchmarks"]["math500"]["samples_per_problem"] == 8


def test_cepo_eval_text_failure_and_bad_input(fake_lm_eval: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    python, _ = fake_lm_eval
    monkeypatch.setenv("FAKE_LM_EVAL_FAIL", "1")
    monkeypatch.setenv(PYTHON_ENV, str(python))  # the interpreter from the environment variable
    assert main(["eval", "Qwen/Qwen3-1.7B", "--benchmarks", "aime25", "--output-dir", str(tmp_path / "o")]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cepo eval: lm-eval failed on aime25") and "exit code 3" in last
    assert "something broke" in Path(last.rsplit("its log: ", 1)[1]).read_text()
    monkeypatch.delenv(PYTHON_ENV)
    bad = [
        (["--benchmarks", "aime24"], "--lm-eval-python"),
        (["--benchmarks", "aime24", "--lm-eval-python", str(tmp_path / "nope")], "does not exist"),
        (["--benchmarks", "aime24,mmmu", "--dry-run"], "mixes the text benchmark"),
        (["--benchmarks", "aime24", "--samples", "0", "--dry-run"], "--samples must be a positive"),
        (["--benchmarks", "mmmu", "--samples", "4", "--dry-run"], "--samples applies to the text benchmarks"),
        (["--benchmarks", "aime24", "--temperature", "0", "--dry-run"], "--samples 1 for greedy"),
        (["--benchmarks", "aime24", "--backend", "qwen3_vl", "--dry-run"], "--backend 'qwen3_vl' is not one of"),
        (["--benchmarks", "mmmu", "--lm-eval-python", str(python), "--dry-run"], "--lm-eval-python is for the text"),
    ]
    for extra, message in bad:
        assert main(["eval", "Qwen/Qwen3-1.7B", *extra]) == 2, extra
        assert message in _one_error_line(capsys), extra


# -- --local --samples k -----------------------------------------------------------------------------------------
def test_avg_at_k_and_its_standard_error_by_hand() -> None:
    grades = [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]  # fractions 0.5, 1, 0
    mean, se = avg_at_k(grades)
    assert mean == 0.5
    # population variance of (0.5, 1, 0) about 0.5: (0 + 0.25 + 0.25) / 3 = 1/6; se = sqrt(1/6 / 3) = sqrt(1/18)
    assert math.isclose(se, math.sqrt(1 / 18))
    p, n = 7 / 12, 12  # k = 1: the binomial standard error
    assert math.isclose(avg_at_k([[1]] * 7 + [[0]] * 5)[1], math.sqrt(p * (1 - p) / n))
    with pytest.raises(ValueError, match="at least one problem"):
        avg_at_k([])
    with pytest.raises(ValueError, match="at least one graded sample"):
        avg_at_k([[1], []])


def test_cepo_eval_local_samples_k(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``--local --samples 3`` on the tiny text LM, with generation replaced by known responses (the sampling path
    itself is the one test_evaluation.py runs): k copies of each problem, in order, graded by cepo's verifier, and
    avg@k ± its standard error as computed by hand."""
    import cepo.evaluation.generation as generation
    from cepo.testing import save_tiny_text_lm

    model = save_tiny_text_lm(tmp_path / "tiny-text-lm")
    data = tmp_path / "aime.jsonl"
    problems = [("What is 2 + 2?", "4"), ("Half of one?", "\\frac{1}{2}"), ("What is 3 * 5?", "15")]
    data.write_text("".join(json.dumps({"problem": q, "answer": a}) + "\n" for q, a in problems))
    responses = {  # problem -> its 3 responses: 2/3, 3/3 (0.5 = 1/2 for the verifier) and 0/3 right
        "What is 2 + 2?": ["\\boxed{4}", "\\boxed{5}", "so \\boxed{4}"],
        "Half of one?": ["\\boxed{\\frac{1}{2}}", "\\boxed{0.5}", "\\boxed{\\dfrac12}"],
        "What is 3 * 5?": ["\\boxed{8}", "no box: 15", "\\boxed{53}"],
    }
    seen: list[str] = []

    def canned(model: Any, processing_class: Any, conversations: list[Any], *_: Any, **kwargs: Any) -> list[Any]:
        assert kwargs["chat_template_kwargs"] == THINKING_OFF
        out = []
        for messages in conversations:
            problem = next(q for q in responses if messages[0]["content"] == student_prompt(q))
            out.append(generation.Generated([1, 2], responses[problem][seen.count(problem)]))
            seen.append(problem)
        return out

    monkeypatch.setattr(generation, "hf_generate", canned)
    out = tmp_path / "local"
    assert main(["eval", str(model), "--local", str(data), "--samples", "3", "--backend", "hf", "--no-thinking",
                 "--output-dir", str(out), "--label", "k3"]) == 0
    assert seen == [q for q, _ in problems for _ in range(3)]  # k copies of each problem, problem by problem
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(s["index"], s["sample"]) for s in samples] == [(i, j) for i in range(3) for j in range(3)]
    assert [s["accuracy"] for s in samples] == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # by hand: fractions 2/3, 1, 0; mean 5/9; population variance of the fractions about 5/9
    fractions = [2 / 3, 1.0, 0.0]
    variance = sum((f - 5 / 9) ** 2 for f in fractions) / 3
    score = json.loads((out / "eval.json").read_text())["benchmarks"]["aime"]
    assert score["n"] == 3 and score["samples_per_problem"] == 3 and score["metric"].startswith("avg@3")
    assert math.isclose(score["accuracy"], 100 * 5 / 9)
    assert math.isclose(score["stderr"], 100 * math.sqrt(variance / 3))
    assert math.isclose(score["pass_at_k"], 100 * 2 / 3)
    assert "| k3 | 55.56 ± 24.0 | 55.56 ± 24.0 |" in capsys.readouterr().out
    assert main(["report", str(out), "--labels", "mine"]) == 0
    assert "| Method | aime avg@3 | Average Acc. |" in capsys.readouterr().out
    assert main(["eval", str(model), "--local", str(data), "--samples", "2", "--temperature", "0",
                 "--output-dir", str(tmp_path / "greedy")]) == 2
    assert "--samples 1 for greedy" in _one_error_line(capsys)


# -- the installed lm-eval (CI builds it: .ci/run) -----------------------------------------------------------------
def _lm_eval_python() -> str:
    python = os.environ.get(PYTHON_ENV)
    if not python or not Path(python).exists():
        pytest.skip(f"no lm-eval interpreter here (${PYTHON_ENV} unset): lm-eval[math] 0.4.13 cannot be installed "
                    "beside verl (antlr4 4.11 vs 4.9); .ci/run builds one in its own virtualenv")
    return python


PROBE = r"""
import json, sys
from pathlib import Path
import lm_eval.filters  # registers the filters
from lm_eval.api.registry import get_filter
from lm_eval.config.task import TaskConfig
from lm_eval.tasks import TaskManager
from lm_eval.tasks._yaml_loader import load_yaml

task_dir = Path(sys.argv[1])
manager = TaskManager(include_path=str(task_dir))
names = set(manager.all_tasks)
config = load_yaml(task_dir / "cepo_aime24.yaml")  # lm-eval's loader: the !function entries through utils.py
TaskConfig(**config)  # every key is a task-config field lm-eval 0.4.13 knows
scored = config["process_results"]({"problem": "1/2?", "answer": "\\frac12"}, [["\\boxed{0.5}", "\\boxed{1}"]])
print(json.dumps({"names": sorted(n for n in names if n.startswith("cepo_") or n in
                                  ("hendrycks_math500", "aime24", "aime25")),
                  "take_first_k": get_filter("take_first_k").__name__, "scored": scored,
                  "text": config["doc_to_text"]({"Problem": "Find x."})}))
"""


def test_text_tasks_load_in_the_installed_lm_eval(tmp_path: Path) -> None:
    python = _lm_eval_python()
    task_dir = write_tasks(tmp_path / "tasks", TEXT_BENCHMARKS.values(), {"math500": 2, "aime24": 2, "aime25": 2})
    out = subprocess.run([python, "-c", PROBE, str(task_dir)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    # cepo's tasks and lm-eval's own tasks on the same problem sets are in the installed registry
    assert found["names"] == ["aime24", "aime25", "cepo_aime24", "cepo_aime25", "cepo_math500", "hendrycks_math500"]
    assert found["take_first_k"] == "TakeKFilter"
    assert found["scored"] == {"avg_at_k": 0.5, "pass_at_k": 1.0}  # math-verify works in lm-eval's environment
    assert found["text"] == student_prompt("Find x.")


@pytest.mark.slow
def test_cepo_eval_through_the_installed_lm_eval_on_the_tiny_text_lm(tmp_path: Path) -> None:
    """A real lm-eval run (hf backend, CPU) on the warm-started tiny text LM, problems from a local file; eval.json
    against a regrading of the samples lm-eval logged."""
    from cepo.evaluation.runner import evaluate_lm_eval
    from cepo.smoke import prepare_smoke_model
    from cepo.testing.math_data import make_math_problems

    python = _lm_eval_python()
    model = prepare_smoke_model(tmp_path / "text-model", text=True)
    problems = tmp_path / "aime.jsonl"
    problems.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answer}) + "\n"
                                for p in make_math_problems(4, seed=0)))
    sampling = SamplingSettings(temperature=1.0, top_k=0, presence_penalty=0.0, max_new_tokens=16)
    result, path = evaluate_lm_eval(str(model), [TEXT_BENCHMARKS["aime24"]], sampling, samples=2, backend="hf",
                                    python=python, output_dir=tmp_path / "eval", chat_template_kwargs=THINKING_OFF,
                                    data_files={"aime24": problems}, echo=False)
    score = result.benchmarks["aime24"]
    assert score.n == 4 and score.extra["samples_per_problem"] == 2
    (samples_file,) = (tmp_path / "eval" / "lm-eval" / "aime24").rglob("samples_cepo_aime24_*.jsonl")
    rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert all(r["arguments"]["gen_args_0"]["arg_0"].endswith("<think>\n\n</think>\n\n") for r in rows)  # thinking off
    utils = _utils_module(tmp_path / "eval" / "lm-eval" / "aime24" / "tasks")
    fractions = [statistics.fmean(utils.is_correct(x, r["target"]) for x in r["filtered_resps"][0]) for r in rows]
    assert math.isclose(score.accuracy, 100 * statistics.fmean(fractions))
    assert json.loads(path.read_text())["benchmarks"]["aime24"]["accuracy"] == score.accuracy
