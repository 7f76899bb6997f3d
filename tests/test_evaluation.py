"""cepo eval / cepo report: the benchmark table, lmms-eval commands and result files, Table 2, the local evaluator."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cepo.cli import main
from cepo.evaluation import BENCHMARKS, PAPER_SAMPLING, EvalResult, table2_markdown
from cepo.evaluation.benchmarks import SamplingSettings, resolve_benchmarks
from cepo.evaluation.lmms import BACKENDS, PYTHON_ENV, build_command, ignored_settings, scores_from_file
from cepo.evaluation.results import BenchmarkScore

DATA = Path(__file__).parent / "data"
RESULTS_FIXTURE = DATA / "lmms_eval_0_7_3_results.json"
TASKS_0_7_3 = json.loads((DATA / "lmms_eval_0_7_3_tasks.json").read_text())["tasks"]

# Table 2, Qwen3-VL-2B-Instruct, "Base" row: accuracy and the printed standard error per benchmark
PAPER_BASE = {"dynamath": (50.08, 0.7), "logicvista": (32.81, 2.2), "mathvision": (19.41, 2.3), "mmmu": (44.11, 1.7),
              "wemath": (52.24, 1.2)}


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"cepo {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- the benchmark table --------------------------------------------------------------------------------------
def test_benchmarks_are_the_papers_five_with_their_lmms_eval_0_7_3_tasks() -> None:
    assert [b.title for b in BENCHMARKS.values()] == ["DynaMath", "LogicVista", "MathVis.m", "MMMU", "WeMath"]
    assert {b.name: b.task for b in BENCHMARKS.values()} == {
        "dynamath": "dynamath_reasoning", "logicvista": "logicvista_reasoning", "mathvision": "mathvision_testmini",
        "mmmu": "mmmu_val", "wemath": "wemath_testmini_reasoning",
    }
    for bench in BENCHMARKS.values():  # checked against the task YAMLs of the 0.7.3 wheel (tests/data)
        assert bench.task in TASKS_0_7_3, bench.task
        assert bench.metric in TASKS_0_7_3[bench.task]["metrics"], (bench.task, bench.metric)
        assert TASKS_0_7_3[bench.task]["yaml"] == bench.task_yaml


def test_task_names_exist_in_the_installed_lmms_eval_registry() -> None:
    python = os.environ.get(PYTHON_ENV)
    if not python or not Path(python).exists():
        pytest.skip(f"no lmms-eval interpreter here (${PYTHON_ENV} unset): lmms-eval cannot be installed beside verl; "
                    "the names are checked against the 0.7.3 wheel's task list in tests/data instead")
    probe = "import json; from lmms_eval.tasks import TaskManager; print(json.dumps(TaskManager().all_tasks))"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    registry = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert {b.task for b in BENCHMARKS.values()} <= registry


def test_no_extra_installs_lmms_eval_beside_verl() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    every = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {canonicalize_name(Requirement(r).name) for r in every}
    assert "verl" in names and "lmms-eval" not in names  # verl is a core dependency: any extra lands beside it


def test_resolve_benchmarks() -> None:
    assert resolve_benchmarks(None) == list(BENCHMARKS.values())
    assert [b.name for b in resolve_benchmarks("mmmu, mathvision-mini,wemath_testmini_reasoning")] == [
        "mmmu", "mathvision", "wemath"]
    with pytest.raises(ValueError, match="unknown benchmark 'mathvista'"):
        resolve_benchmarks("mmmu,mathvista")


# -- lmms-eval commands -----------------------------------------------------------------------------------------
def _kv(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split(","))


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_lmms_eval_command_has_the_papers_sampling(name: str, tmp_path: Path) -> None:
    bench = BENCHMARKS[name]
    command = build_command("/venv/bin/python", bench, "/ckpt/merged", BACKENDS["vllm"], PAPER_SAMPLING, tmp_path)
    assert command[:3] == ["/venv/bin/python", "-m", "lmms_eval"]
    flags = {command[i]: command[i + 1] for i in range(3, len(command) - 1) if command[i].startswith("--")
             and not command[i + 1].startswith("--")}
    assert flags["--model"] == "vllm"
    assert flags["--tasks"] == bench.task
    assert flags["--output_path"] == str(tmp_path)
    assert "--log_samples" in command
    gen = _kv(flags["--gen_kwargs"])
    assert gen == {"temperature": "1.0", "top_p": "1.0", "top_k": "40", "presence_penalty": "2.0",
                   "max_new_tokens": "32000"}  # max_new_tokens, which lmms-eval reads; never max_tokens
    model_args = _kv(flags["--model_args"])
    assert model_args["model"] == "/ckpt/merged"
    assert model_args["max_new_tokens"] == "32000"  # vLLM generates max(request, model setting)
    assert int(model_args["max_model_len"]) > 32000


def test_backends_warn_about_what_they_ignore() -> None:
    assert ignored_settings(BACKENDS["vllm"], PAPER_SAMPLING) == []
    assert ignored_settings(BACKENDS["qwen3_vl"], PAPER_SAMPLING) == ["presence_penalty=2.0"]
    assert ignored_settings(BACKENDS["hf"], PAPER_SAMPLING) == ["top_k=40", "presence_penalty=2.0"]
    plain = SamplingSettings(top_k=0, presence_penalty=0.0)
    assert ignored_settings(BACKENDS["hf"], plain) == []
    command = build_command("py", BENCHMARKS["mmmu"], "m", BACKENDS["hf"], plain, "out")
    assert _kv(command[command.index("--gen_kwargs") + 1]) == {"temperature": "1.0", "top_p": "1.0",
                                                                "max_new_tokens": "32000"}
    assert _kv(command[command.index("--model_args") + 1]) == {"pretrained": "m"}


# -- result files and Table 2 ---------------------------------------------------------------------------------
def test_lmms_eval_result_file_reproduces_the_papers_base_row() -> None:
    scores = scores_from_file(RESULTS_FIXTURE, list(BENCHMARKS.values()))
    assert list(scores) == list(BENCHMARKS)
    for name, (accuracy, stderr) in PAPER_BASE.items():
        assert f"{scores[name].accuracy:.2f}" == f"{accuracy:.2f}", name
        assert f"{scores[name].stderr:.1f}" == f"{stderr:.1f}", name
    assert scores["logicvista"].stderr_source == "lmms-eval"  # acc_score is mean-aggregated: lmms-eval's own
    assert scores["mmmu"].stderr_source == "binomial"  # custom aggregation: "N/A" in the file
    assert scores["mmmu"].n == 900 and scores["dynamath"].n == 5010
    result = EvalResult(label="Base", benchmarks=scores)
    average = result.as_dict()["average"]
    assert f"{average['accuracy']:.2f}" == "39.73" and f"{average['stderr']:.1f}" == "0.8"  # the paper's average


def _paper_rows() -> list[EvalResult]:
    rows = {  # Table 2, Qwen3-VL-2B-Instruct
        "Base": [50.08, 32.81, 19.41, 44.11, 52.24],
        "GRPO": [50.36, 37.50, 21.05, 42.33, 54.60],
        "RLSD": [50.36, 36.38, 23.39, 39.44, 55.26],
        "CEPO": [51.44, 37.72, 25.99, 45.78, 56.21],
    }
    errs = [0.7, 2.3, 2.3, 1.6, 1.2]
    return [EvalResult(label=label, benchmarks={
        name: BenchmarkScore(accuracy=v, stderr=e, n=None) for name, v, e in zip(BENCHMARKS, values, errs, strict=True)
    }) for label, values in rows.items()]


def test_table2_layout_numbers_average_and_bold() -> None:
    table = table2_markdown(_paper_rows()).splitlines()
    assert table[0] == "| Method | DynaMath | LogicVista | MathVis.m | MMMU | WeMath | Average Acc. |"
    assert table[1] == "|---|---|---|---|---|---|---|"
    assert [line.split(" | ")[0] for line in table[2:]] == ["| Base", "| GRPO", "| RLSD", "| CEPO"]
    assert table[2] == "| Base | 50.08 ± 0.7 | 32.81 ± 2.3 | 19.41 ± 2.3 | 44.11 ± 1.6 | 52.24 ± 1.2 | 39.73 ± 0.8 |"
    # CEPO is best everywhere, as in the paper; its average is the paper's 43.43
    assert table[5] == ("| CEPO | **51.44** ± 0.7 | **37.72** ± 2.3 | **25.99** ± 2.3 | **45.78** ± 1.6 | "
                        "**56.21** ± 1.2 | **43.43** ± 0.8 |")
    assert sum(line.count("**") for line in table[2:5]) == 0
    # GRPO and RLSD tie on DynaMath when CEPO is left out: both bold
    tied = table2_markdown(_paper_rows()[:3]).splitlines()
    assert tied[3].split(" | ")[1] == "**50.36** ± 0.7" and tied[4].split(" | ")[1] == "**50.36** ± 0.7"


def test_table2_row_missing_a_benchmark_has_no_average() -> None:
    rows = _paper_rows()[:2]
    del rows[1].benchmarks["mmmu"]
    table = table2_markdown(rows).splitlines()
    assert table[3].split(" | ")[4] == "–" and table[3].endswith("| – |")
    assert table[2].endswith("| 39.73 ± 0.8 |")  # not bold: nothing to compare with


def test_cepo_report_reads_eval_json_run_dirs_and_lmms_eval_files(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    base, _, _, cepo = _paper_rows()
    base.write(tmp_path / "base.json")
    run = tmp_path / "runs" / "cepo"
    cepo.write(run / "eval" / "eval.json")  # a run directory evaluated with the default output dir
    out = tmp_path / "table.md"
    assert main(["report", str(tmp_path / "base.json"), str(run), str(RESULTS_FIXTURE), "--labels",
                 "Base,CEPO,Base (lmms-eval file)", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    lines = printed.splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| Base", "| CEPO", "| Base (lmms-eval file)"]
    assert lines[4].endswith("| 39.73 ± 0.8 |")


def test_cepo_report_warns_about_max_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(RESULTS_FIXTURE.read_text())
    data["config"]["gen_kwargs"] = {"temperature": 1.0, "top_p": 1.0, "top_k": 40, "presence_penalty": 2.0,
                                    "max_tokens": 32000}  # the authors' README command
    (tmp_path / "authors_results.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path / "authors_results.json")]) == 0
    assert "max_tokens=32000 but no max_new_tokens: lmms-eval ignored it" in capsys.readouterr().err


def test_cepo_report_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in _one_error_line(capsys, "report")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "cepo eval" in _one_error_line(capsys, "report")


# -- cepo eval with lmms-eval (a stand-in interpreter) --------------------------------------------------------
FAKE_LMMS_EVAL = r'''#!{python}
"""Stands in for an lmms-eval interpreter: answers the version probe, records each run, writes a result file
in lmms-eval 0.7.3's layout (from the fixture) under --output_path/<model>/<date>_results.json."""
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
if argv[:1] == ["-c"]:
    print("0.7.3")
    sys.exit(0)
assert argv[:2] == ["-m", "lmms_eval"], argv
flags, i = {{}}, 2
while i < len(argv):
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        flags[argv[i]], i = argv[i + 1], i + 2
    else:
        flags[argv[i]], i = True, i + 1
model_args = dict(kv.split("=", 1) for kv in flags["--model_args"].split(","))
model = Path(model_args.get("model") or model_args["pretrained"])
record = {{"argv": argv, "model": str(model), "has_config": (model / "config.json").is_file(),
          "has_weights": any(model.glob("*.safetensors"))}}
with open(os.environ["FAKE_LMMS_LOG"], "a") as log:
    log.write(json.dumps(record) + "\n")
if os.environ.get("FAKE_LMMS_FAIL"):
    print("Traceback (most recent call last): something broke in lmms-eval")
    sys.exit(3)
fixture = json.loads(Path(os.environ["FAKE_LMMS_FIXTURE"]).read_text())
task = flags["--tasks"]
fixture["results"] = {{task: fixture["results"][task]}}
fixture["config"]["gen_kwargs"] = dict(kv.split("=", 1) for kv in flags["--gen_kwargs"].split(","))
out = Path(flags["--output_path"]) / "merged-model"
out.mkdir(parents=True, exist_ok=True)
(out / "20261129_120000_results.json").write_text(json.dumps(fixture))
print("lmms-eval (stand-in) finished", task)
'''


@pytest.fixture()
def fake_lmms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    python = tmp_path / "lmms-venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_LMMS_EVAL.format(python=sys.executable))
    python.chmod(0o755)
    log = tmp_path / "lmms-calls.jsonl"
    monkeypatch.setenv("FAKE_LMMS_LOG", str(log))
    monkeypatch.setenv("FAKE_LMMS_FIXTURE", str(RESULTS_FIXTURE))
    monkeypatch.delenv(PYTHON_ENV, raising=False)
    return python, log


@pytest.fixture(scope="module")
def tiny_trl_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TRL-shaped run directory: config.json (cepo), metrics.jsonl, final/ = a LoRA adapter on a tiny Qwen3-VL."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from cepo.testing import save_tiny_qwen3vl

    root = tmp_path_factory.mktemp("tiny-run")
    base = save_tiny_qwen3vl(root / "base")
    run = root / "run"
    (run / "final").mkdir(parents=True)
    model = AutoModelForImageTextToText.from_pretrained(base)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(run / "final")
    (run / "config.json").write_text(json.dumps({"cepo_method": "cepo"}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward": 0.1}) + "\n")
    return run


def test_resolve_model_finds_the_model_of_each_engines_layout(tiny_trl_run: Path, tmp_path: Path) -> None:
    from cepo.evaluation.models import resolve_model

    hub = resolve_model("Qwen/Qwen3-VL-2B-Instruct")
    assert hub.kind == "hub" and hub.method() is None
    run = resolve_model(str(tiny_trl_run))  # TRL run directory -> final/ adapter, the run's method
    assert run.kind == "adapter" and Path(run.path) == tiny_trl_run / "final" and run.method() == "cepo"
    assert run.base == str(tiny_trl_run.parent / "base")
    verl = tmp_path / "checkpoints" / "cepo_geo3k" / "global_step_50"
    (verl / "actor").mkdir(parents=True)
    (verl / "actor" / "model_world_size_8_rank_0.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"verl\.model_merger"):  # FSDP shards, no adapter
        resolve_model(str(verl))
    (verl / "actor" / "lora_adapter").mkdir()
    (verl / "actor" / "lora_adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": str(tmp_path / "gone")}))
    with pytest.raises(FileNotFoundError, match="pass --base"):
        resolve_model(str(verl))
    adapter = resolve_model(str(verl), base="Qwen/Qwen3-VL-2B-Instruct")
    assert adapter.kind == "adapter" and adapter.path.endswith("actor/lora_adapter") and adapter.method() is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no model"):
        resolve_model(str(tmp_path / "empty"))


def test_cepo_eval_runs_lmms_eval_per_benchmark_on_a_merged_adapter(
    tiny_trl_run: Path, fake_lmms: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    python, log = fake_lmms
    out = tmp_path / "eval-out"
    argv = ["eval", str(tiny_trl_run), "--lmms-eval-python", str(python), "--benchmarks", "mmmu,logicvista",
            "--output-dir", str(out)]
    assert main(argv) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["argv"][c["argv"].index("--tasks") + 1] for c in calls] == ["mmmu_val", "logicvista_reasoning"]
    assert all(c["has_config"] and c["has_weights"] for c in calls)  # lmms-eval got a merged checkpoint
    assert len({c["model"] for c in calls}) == 1 and not Path(calls[0]["model"]).exists()  # one merge, removed
    result = json.loads((out / "eval.json").read_text())
    assert result["label"] == "CEPO" and result["method"] == "cepo" and result["backend"] == "vllm"
    assert list(result["benchmarks"]) == ["mmmu", "logicvista"]
    assert f"{result['benchmarks']['mmmu']['accuracy']:.2f}" == "44.11"
    assert result["benchmarks"]["logicvista"]["gen_kwargs"]["max_new_tokens"] == "32000"
    average = (result["benchmarks"]["mmmu"]["accuracy"] + result["benchmarks"]["logicvista"]["accuracy"]) / 2
    assert math.isclose(result["average"]["accuracy"], average)
    assert "| CEPO |" in capsys.readouterr().out
    # the same command again reads the results already there: lmms-eval is not run again
    assert main(argv) == 0
    assert len(log.read_text().splitlines()) == 2
    assert "reusing" in capsys.readouterr().err


def test_cepo_eval_lmms_eval_failure_exits_1_naming_the_log(
    tiny_trl_run: Path, fake_lmms: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    python, _ = fake_lmms
    monkeypatch.setenv("FAKE_LMMS_FAIL", "1")
    monkeypatch.setenv(PYTHON_ENV, str(python))  # the interpreter from the environment variable
    code = main(["eval", str(tiny_trl_run / "final"), "--benchmarks", "wemath", "--output-dir", str(tmp_path / "o")])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cepo eval: lmms-eval failed on wemath") and "exit code 3" in last
    log = Path(last.rsplit("its log: ", 1)[1])
    assert "something broke" in log.read_text()


def test_cepo_eval_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PYTHON_ENV, raising=False)
    assert main(["eval", "Qwen/Qwen3-VL-2B-Instruct", "--benchmarks", "mmmu,mathvista", "--dry-run"]) == 2
    assert "unknown benchmark 'mathvista'" in _one_error_line(capsys, "eval")
    assert main(["eval", str(tmp_path / "no-such-checkpoint"), "--dry-run"]) == 2
    assert "does not exist" in _one_error_line(capsys, "eval")
    assert main(["eval", "Qwen/Qwen3-VL-2B-Instruct", "--benchmarks", "mmmu"]) == 2
    assert "--lmms-eval-python" in _one_error_line(capsys, "eval")
    assert main(["eval", "Qwen/Qwen3-VL-2B-Instruct", "--lmms-eval-python", str(tmp_path / "nope")]) == 2
    assert "does not exist" in _one_error_line(capsys, "eval")
    assert main(["eval", "Qwen/Qwen3-VL-2B-Instruct", "--local", str(tmp_path / "missing.parquet")]) == 2
    assert "does not exist" in _one_error_line(capsys, "eval")
    assert main(["eval", "Qwen/Qwen3-VL-2B-Instruct", "--top-p", "0", "--dry-run"]) == 2
    assert "--top-p" in _one_error_line(capsys, "eval")


def test_cepo_eval_dry_run_prints_one_command_per_benchmark(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PYTHON_ENV, "/nowhere/python")  # a dry run needs no interpreter
    assert main(["eval", "Qwen/Qwen3-VL-2B-Instruct", "--dry-run", "--backend", "hf"]) == 0
    captured = capsys.readouterr()
    commands = captured.out.strip().splitlines()
    assert len(commands) == 5 and all("-m lmms_eval --model huggingface" in c for c in commands)
    assert "ignores top_k=40" in captured.err and "ignores presence_penalty=2.0" in captured.err


# -- cepo eval --local ------------------------------------------------------------------------------------------
def test_presence_penalty_counts_generated_tokens_only() -> None:
    import torch

    from cepo.evaluation.generation import PresencePenaltyLogitsProcessor, sampling_processors

    proc = PresencePenaltyLogitsProcessor(2.0, prompt_length=2)
    ids = torch.tensor([[0, 1, 3, 3, 4]])  # prompt 0 1, generated 3 3 4
    scores = torch.zeros(1, 6)
    assert proc(ids, scores).tolist() == [[0.0, 0.0, 0.0, -2.0, -2.0, 0.0]]  # once per token, prompt not counted
    chain = sampling_processors(PAPER_SAMPLING, 2)
    assert [type(p).__name__ for p in chain] == ["PresencePenaltyLogitsProcessor", "TopKLogitsWarper"]
    assert sampling_processors(SamplingSettings(temperature=0.0, top_k=40, presence_penalty=0.0), 2) == []


def test_local_data_layouts_give_the_training_prompt(tmp_path: Path) -> None:
    """Geo3k's own columns and verl's layout (scripts/prepare_geo3k.py) give the same conversations and answers:
    the student prompt of training, the image first."""
    import datasets

    from cepo.data import student_prompt
    from cepo.evaluation.local import load_examples
    from cepo.testing import make_geo3k_like

    rows = make_geo3k_like(3, seed=1)
    rows.to_parquet(str(tmp_path / "geo3k.parquet"))
    verl = rows.map(lambda r: {"prompt": [{"role": "user", "content": "<image>" + student_prompt(r["problem"])}],
                               "reward_model": {"style": "rule", "ground_truth": r["answer"]}},
                    remove_columns=["problem", "answer"])
    verl.to_parquet(str(tmp_path / "verl.parquet"))
    datasets.Dataset.from_list([{"question": "What is 2 + 3?", "answer": ["5"]}]).to_json(str(tmp_path / "t.jsonl"))
    geo, ver = load_examples(tmp_path / "geo3k.parquet"), load_examples(tmp_path / "verl.parquet")
    assert [e.messages for e in geo] == [e.messages for e in ver]
    assert [e.answer for e in geo] == [e.answer for e in ver] == list(rows["answer"])
    assert geo[0].messages == [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": student_prompt(rows[0]["problem"])}]}]
    assert all(len(e.images) == 1 and e.images[0].mode == "RGB" for e in geo + ver)
    (text,) = load_examples(tmp_path / "t.jsonl")
    assert text.messages == [{"role": "user", "content": student_prompt("What is 2 + 3?")}] and text.answer == "5"


def test_cepo_eval_local_accuracy_is_the_verifiers(smoke_model: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from cepo.rewards import compute_score
    from cepo.testing import make_geo3k_like

    data = tmp_path / "geo.parquet"
    rows = make_geo3k_like(12, seed=0)  # problems the fixture model was warm-started on: some answers right
    rows.to_parquet(str(data))
    out = tmp_path / "local"
    assert main(["eval", str(smoke_model), "--local", str(data), "--max-new-tokens", "12", "--temperature", "0",
                 "--output-dir", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["label"].endswith("/base-model")  # a local checkpoint outside a run: labelled by its path
    assert f"| {result['label']} |" in capsys.readouterr().out
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["answer"] for s in samples] == list(rows["answer"])  # row order kept
    recomputed = [compute_score(s["response"], a).accuracy for s, a in zip(samples, rows["answer"], strict=True)]
    assert [s["accuracy"] for s in samples] == recomputed
    score = result["benchmarks"]["geo"]
    assert score["n"] == 12
    assert math.isclose(score["accuracy"], 100 * sum(recomputed) / 12)
    assert math.isclose(score["stderr"], 100 * math.sqrt(score["accuracy"] / 100 * (1 - score["accuracy"] / 100) / 12))
    assert result["evaluator"] == "local" and result["backend"] == "hf"
    assert result["sampling"]["temperature"] == 0.0 and result["sampling"]["top_k"] == 40
