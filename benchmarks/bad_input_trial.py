#!/usr/bin/env python
"""Bad-input trial (issue 17): the inputs a new user gets wrong, run against the real commands, each outcome
classified.

Commands: ``cepo train``, ``cepo eval``, ``cepo smoke``, ``python scripts/prepare_geo3k.py``,
``python scripts/prepare_math.py`` and ``python -m cepo.integrations.verl.main``. Cases: wrong YAML keys, wrong
types, missing files, non-UTF-8 files, an empty YAML, ``cepo:`` that is not a mapping, bad method names, bad
distillation modes, negative sizes, a resume of a missing folder, output locations that are files, ...

Every case runs as its own process (as a user would run it) in its own empty working directory, offline
(``HF_HUB_OFFLINE=1``), against a workspace of small files made here (a tiny random Qwen3-VL, Geo3k-like and
arithmetic data, a copy of the package configs for the YAML cases). An outcome is

  good       exit status 2, no traceback, one non-empty stderr line that holds every fragment the case expects
             (the thing named: the key, the file, the option) and nothing left in the working directory;
  traceback  a Python traceback on stderr or stdout;
  silent     exit status 0 (the bad input was accepted);
  other      anything else: several lines, exit status 1 without a traceback, a message that does not name the
             thing, files left in the working directory, a timeout.

Writes ``benchmarks/results/bad_input_trial.json`` (per case: command, exit status, class, reason, the error line,
stderr's tail, wall seconds, files left) and prints the counts. About 100 processes: 10 minutes on 2 CPU cores
(``--only NAME`` runs the cases whose name holds NAME; with ``--update`` their results replace those in the saved
file, listed under ``rerun``). Not part of the test suite.

Usage:
  python benchmarks/bad_input_trial.py [--output benchmarks/results/bad_input_trial.json]
  python benchmarks/bad_input_trial.py --only "prepare_math" --update
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CEPO = [PY, "-m", "cepo.cli"]
VERL = [PY, "-m", "cepo.integrations.verl.main"]
GEO3K = [PY, str(ROOT / "scripts" / "prepare_geo3k.py")]
MERGE = [PY, str(ROOT / "scripts" / "merge_lora.py")]
MATH = [PY, str(ROOT / "scripts" / "prepare_math.py")]
TIMEOUT_S = 240


@dataclass
class Case:
    """One bad input: the command (``{ws}`` is the workspace), the fragments its error line must hold, extra
    environment variables."""

    name: str
    command: list[str]
    expect: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


# -- the workspace ---------------------------------------------------------------------------------------------------
def make_workspace(ws: Path) -> None:
    """Small files the cases point at: a tiny model, good and bad data, config folders with one bad YAML each."""
    import datasets

    from cepo.testing import make_geo3k_like, save_tiny_qwen3vl
    from cepo.testing.math_data import make_math_problems

    save_tiny_qwen3vl(ws / "model")
    save_tiny_adapter(ws / "model", ws / "adapter")
    geo = make_geo3k_like(8)
    (ws / "data").mkdir()
    geo.to_parquet(str(ws / "data" / "train.parquet"))
    geo.to_parquet(str(ws / "data" / "test.parquet"))
    geo.remove_columns("answer").to_parquet(str(ws / "no_answer.parquet"))
    rows = [{"problem": r["problem"], "answer": r["answer"]} for r in geo.remove_columns("images")]
    (ws / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ws / "latin1.jsonl").write_bytes('{"problem": "caf\u00e9 x", "answer": "1"}\n'.encode("latin-1"))
    (ws / "broken.jsonl").write_text('{"problem": "x", "answer": "1"}\n{"problem": \n')
    (ws / "d.csv").write_text("problem,answer\nx,1\n")
    (ws / "empty.parquet").write_bytes(b"")
    (ws / "a_file").write_text("not a folder\n")
    problems = make_math_problems(6)
    math = datasets.Dataset.from_dict({"problem": [p.problem for p in problems],
                                       "answer": [str(p.answer) for p in problems]})
    math.to_parquet(str(ws / "math.parquet"))
    math.remove_columns("problem").to_parquet(str(ws / "math_no_problem.parquet"))
    (ws / "dataset").mkdir()  # a prepare_geo3k source folder
    geo.to_parquet(str(ws / "dataset" / "train.parquet"))

    import cepo

    package = Path(cepo.__file__).resolve().parent / "configs"
    bad_yaml = {
        "empty": b"",
        "latin1": "# r\u00e9glage\ncepo:\n  lam0: 0.5\n".encode("latin-1"),
        "cepo_list": b"cepo:\n  - 1\n  - 2\n",
        "syntax": b"cepo:\n  lam0: [1\n",
        "top_list": b"- a\n- b\n",
    }
    for name, content in bad_yaml.items():
        folder = ws / f"configs_{name}"
        shutil.copytree(package, folder)
        (folder / "cepo.yaml").write_bytes(content)


def save_tiny_adapter(model_dir: Path, out: Path) -> None:
    """The paper's LoRA on the tiny model, saved as a PEFT adapter directory (``merge_lora.py --adapter``)."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from cepo.integrations.trl.run import lora_config

    get_peft_model(AutoModelForImageTextToText.from_pretrained(model_dir), lora_config()).save_pretrained(out)


def small_run(ws: Path) -> list[str]:
    """Overrides that make an accepted ``cepo train`` a one-step run on the tiny model."""
    return [
        f"actor_rollout_ref.model.path={ws}/model", f"data.train_files={ws}/data/train.parquet",
        "data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2", "actor_rollout_ref.rollout.n=4",
        "data.max_response_length=8", "trainer.total_training_steps=1",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0", f"trainer.default_local_dir={ws}/runs/{{case}}",
    ]


def cases(ws: Path) -> list[Case]:
    import cepo

    cfg = str(Path(cepo.__file__).resolve().parent / "configs" / "cepo.yaml")
    run = small_run(ws)

    def train(name: str, *extra: str, expect: list[str], cli: tuple[str, ...] = (), config: str = cfg,
              env: dict[str, str] | None = None) -> Case:
        keys = {e.split("=", 1)[0] for e in extra}
        base = [o for o in run if o.split("=", 1)[0] not in keys]  # one value per key, or Hydra refuses the pair
        return Case(f"train: {name}", [*CEPO, "train", "--config", config, *cli, *base, *extra], expect, env or {})

    def yaml_case(kind: str, expect: list[str]) -> Case:
        folder = ws / f"configs_{kind}"
        return train(f"{kind} cepo.yaml", config=str(folder / "cepo.yaml"), env={"CEPO_CONFIGS_DIR": str(folder)},
                     expect=[str(folder / "cepo.yaml"), *expect])

    def verl(name: str, *argv: str, expect: list[str], env: dict[str, str] | None = None) -> Case:
        return Case(f"verl: {name}", [*VERL, *argv], expect, env or {})

    def smoke(name: str, *argv: str, expect: list[str]) -> Case:
        return Case(f"smoke: {name}", [*CEPO, "smoke", *argv], expect)

    def evaluate(name: str, *argv: str, expect: list[str]) -> Case:
        return Case(f"eval: {name}", [*CEPO, "eval", *argv], expect)

    model = f"{ws}/model"
    local = ("--max-new-tokens", "2", "--temperature", "0")
    return [
        # cepo train: the config file
        Case("train: config missing", [*CEPO, "train", "--config", f"{ws}/nowhere.yaml"], ["nowhere.yaml"]),
        Case("train: config is a folder", [*CEPO, "train", "--config", str(ws)], [str(ws)]),
        Case("train: no --config", [*CEPO, "train"], ["--config"]),
        yaml_case("empty", ["empty"]),
        yaml_case("latin1", ["UTF-8"]),
        yaml_case("cepo_list", ["cepo"]),
        yaml_case("syntax", []),
        yaml_case("top_list", []),
        # cepo train: overrides
        train("misspelt key", "cepo.eps=0.3", expect=["cepo.eps", "cepo.eps_w"]),
        train("override without value", "foo", expect=["'foo'"]),
        train("lam0 not a number", "cepo.lam0=abc", expect=["cepo.lam0"]),
        train("batch size not a number", "data.train_batch_size=two", expect=["data.train_batch_size"]),
        train("negative batch size", "data.train_batch_size=-4", expect=["data.train_batch_size"]),
        train("zero rollouts", "actor_rollout_ref.rollout.n=0", expect=["actor_rollout_ref.rollout.n"]),
        train("negative response length", "data.max_response_length=-5", expect=["data.max_response_length"]),
        train("negative learning rate", "actor_rollout_ref.actor.optim.lr=-1",
              expect=["actor_rollout_ref.actor.optim.lr"]),
        train("zero steps", "trainer.total_training_steps=0", expect=["trainer.total_training_steps"]),
        train("eps_w out of range", "cepo.eps_w=2", expect=["cepo.eps_w"]),
        train("unknown method", "cepo.method=ppo", expect=["ppo", "grpo"]),
        train("unknown distill mode", "cepo.distill.mode=bogus", expect=["cepo.distill.mode", "topk"]),
        train("distill mode on cepo", "cepo.distill.mode=topk", expect=["cepo.distill.mode"]),
        train("unknown lambda schedule", "cepo.lambda_schedule=bogus", expect=["cepo.lambda_schedule"]),
        train("lambda always 0", "cepo.warmup_steps=0", expect=["cepo.warmup_steps"]),
        train("added unknown key", "+cepo.foo=1", expect=["cepo.foo"]),
        train("unknown flag", "--fast", expect=["--fast"]),
        train("bad --on-bad-image", cli=("--on-bad-image", "maybe"), expect=["--on-bad-image"]),
        # cepo train: files and folders
        train("data missing", f"data.train_files={ws}/nowhere.parquet", expect=["nowhere.parquet"]),
        train("data non-UTF-8", f"data.train_files={ws}/latin1.jsonl", expect=["latin1.jsonl"]),
        train("data broken JSON", f"data.train_files={ws}/broken.jsonl", expect=["broken.jsonl"]),
        train("data without answer", f"data.train_files={ws}/no_answer.parquet",
              expect=["no_answer.parquet", "answer"]),
        train("data csv", f"data.train_files={ws}/d.csv", expect=["d.csv"]),
        train("data empty file", f"data.train_files={ws}/empty.parquet", expect=["empty.parquet"]),
        train("data is a folder", f"data.train_files={ws}/data", expect=[f"{ws}/data"]),
        train("model missing", "actor_rollout_ref.model.path=/no/such/model", expect=["/no/such/model"]),
        train("model is a data folder", f"actor_rollout_ref.model.path={ws}/data",
              expect=["actor_rollout_ref.model.path", f"{ws}/data"]),
        train("run dir is a file", f"trainer.default_local_dir={ws}/a_file", expect=["a_file"]),
        train("run dir empty", "trainer.default_local_dir=", expect=["trainer.default_local_dir"]),
        train("resume missing run", f"trainer.default_local_dir={ws}/runs/never", cli=("--resume",),
              expect=["never", "--resume"]),
        train("resume and overwrite", cli=("--resume", "--overwrite"), expect=["--resume", "--overwrite"]),
        train("empty data list", "data.train_files=[]", expect=["data.train_files"]),
        train("one of two data files missing", f"data.train_files=[{ws}/data/train.parquet,{ws}/nowhere.parquet]",
              expect=["nowhere.parquet"]),
        train("negative LoRA rank", "actor_rollout_ref.model.lora_rank=-1",
              expect=["actor_rollout_ref.model.lora_rank"]),
        train("one rollout per prompt", "actor_rollout_ref.rollout.n=1", expect=["actor_rollout_ref.rollout.n"]),
        train("run dir under a file", f"trainer.default_local_dir={ws}/a_file/run", expect=["a_file"]),
        # cepo eval
        evaluate("model missing", "/no/such/model", "--local", f"{ws}/good.jsonl", *local, expect=["/no/such/model"]),
        evaluate("no model", expect=["model"]),
        evaluate("local data missing", model, "--local", f"{ws}/nowhere.jsonl", *local, expect=["nowhere.jsonl"]),
        evaluate("local data non-UTF-8", model, "--local", f"{ws}/latin1.jsonl", *local, expect=["latin1.jsonl"]),
        evaluate("local data without answer", model, "--local", f"{ws}/no_answer.parquet", *local,
                 expect=["no_answer.parquet", "answer"]),
        evaluate("local data is a folder", model, "--local", f"{ws}/data", *local, expect=[f"{ws}/data"]),
        evaluate("negative max-new-tokens", model, "--local", f"{ws}/good.jsonl", "--max-new-tokens", "-1",
                 expect=["--max-new-tokens"]),
        evaluate("negative temperature", model, "--local", f"{ws}/good.jsonl", "--temperature", "-1",
                 expect=["--temperature"]),
        evaluate("zero batch size", model, "--local", f"{ws}/good.jsonl", "--batch-size", "0", *local,
                 expect=["--batch-size"]),
        evaluate("top-p not a number", model, "--local", f"{ws}/good.jsonl", "--top-p", "high", expect=["--top-p"]),
        evaluate("unknown benchmark", model, "--benchmarks", "bogus", "--dry-run", expect=["bogus"]),
        evaluate("negative limit", model, "--benchmarks", "mmmu", "--limit", "-5", "--dry-run", expect=["--limit"]),
        evaluate("empty --name", model, "--local", f"{ws}/good.jsonl", "--name", "", *local, expect=["--name"]),
        evaluate("empty --label", model, "--local", f"{ws}/good.jsonl", "--label", " ", *local, expect=["--label"]),
        evaluate("--name without --local", model, "--benchmarks", "mmmu", "--name", "x", "--dry-run",
                 expect=["--name"]),
        evaluate("--dry-run with --local", model, "--local", f"{ws}/good.jsonl", "--dry-run", *local,
                 expect=["--dry-run"]),
        evaluate("--model-args with --local", model, "--local", f"{ws}/good.jsonl", "--model-args",
                 "tensor_parallel_size=2", *local, expect=["--model-args"]),
        evaluate("--lmms-eval-python with --local", model, "--local", f"{ws}/good.jsonl", "--lmms-eval-python",
                 "/usr/bin/python3", *local, expect=["--lmms-eval-python"]),
        evaluate("--no-thinking on vision benchmarks", model, "--benchmarks", "mmmu", "--no-thinking", "--dry-run",
                 expect=["--no-thinking"]),
        evaluate("--seed without --local", model, "--benchmarks", "mmmu", "--seed", "3", "--dry-run",
                 expect=["--seed"]),
        evaluate("output dir is a file", model, "--local", f"{ws}/good.jsonl", "--output-dir", f"{ws}/a_file", *local,
                 expect=["a_file"]),
        # cepo smoke
        smoke("unknown method", "--method", "ppo", expect=["--method", "ppo"]),
        smoke("zero steps", "--steps", "0", expect=["--steps"]),
        smoke("seed not a number", "--seed", "abc", expect=["--seed"]),
        smoke("output dir empty", "--output-dir", "", expect=["--output-dir"]),
        smoke("output dir is a file", "--output-dir", f"{ws}/a_file", expect=["a_file"]),
        smoke("resume missing run", "--output-dir", f"{ws}/runs/never", "--resume", expect=["never"]),
        smoke("base model is a file", "--output-dir", f"{ws}/runs/smoke", "--base-model", f"{ws}/a_file",
              expect=["--base-model", "a_file"]),
        smoke("unknown engine", "--engine", "jax", expect=["--engine"]),
        smoke("--steps with the verl engine", "--engine", "verl", "--steps", "10", expect=["--steps"]),
        smoke("--base-model with the verl engine", "--engine", "verl", "--base-model", f"{ws}/model",
              expect=["--base-model"]),
        # prepare_geo3k.py
        Case("prepare_geo3k: dataset missing", [*GEO3K, "--dataset", f"{ws}/nowhere", "--local-dir", f"{ws}/out_g1"],
             ["nowhere"]),
        Case("prepare_geo3k: dataset non-UTF-8", [*GEO3K, "--dataset", f"{ws}/latin1.jsonl", "--local-dir",
                                                   f"{ws}/out_g2"], ["latin1.jsonl"]),
        Case("prepare_geo3k: local dir is a file", [*GEO3K, "--dataset", f"{ws}/dataset", "--local-dir",
                                                     f"{ws}/a_file"], ["a_file"]),
        Case("prepare_geo3k: unknown split", [*GEO3K, "--dataset", f"{ws}/dataset", "--splits", "bogus",
                                               "--local-dir", f"{ws}/out_g3"], ["bogus"]),
        Case("prepare_geo3k: no answer column, fail", [*GEO3K, "--dataset", f"{ws}/no_answer.parquet",
                                                        "--on-missing-answer", "fail", "--local-dir", f"{ws}/out_g4"],
             ["answer"]),
        Case("prepare_geo3k: csv", [*GEO3K, "--dataset", f"{ws}/d.csv", "--local-dir", f"{ws}/out_g5"], ["d.csv"]),
        # prepare_math.py
        Case("prepare_math: train source missing", [*MATH, "--splits", "train", "--train-dataset",
                                                     f"{ws}/nowhere.parquet", "--local-dir", f"{ws}/out_m1"],
             ["nowhere.parquet"]),
        Case("prepare_math: unknown split", [*MATH, "--splits", "bogus", "--local-dir", f"{ws}/out_m2"],
             ["--splits", "bogus"]),
        Case("prepare_math: csv", [*MATH, "--splits", "train", "--train-dataset", f"{ws}/d.csv", "--local-dir",
                                   f"{ws}/out_m3"], ["d.csv"]),
        Case("prepare_math: no problem column", [*MATH, "--splits", "train", "--train-dataset",
                                                 f"{ws}/math_no_problem.parquet", "--local-dir", f"{ws}/out_m4"],
             ["math_no_problem.parquet", "problem"]),
        Case("prepare_math: non-UTF-8", [*MATH, "--splits", "train", "--train-dataset", f"{ws}/latin1.jsonl",
                                         "--local-dir", f"{ws}/out_m5"], ["latin1.jsonl"]),
        Case("prepare_math: local dir is a file", [*MATH, "--splits", "train", "--train-dataset", f"{ws}/math.parquet",
                                                   "--local-dir", f"{ws}/a_file"], ["a_file"]),
        # merge_lora.py
        Case("merge_lora: adapter missing", [*MERGE, "--base", model, "--adapter", f"{ws}/nowhere", "--out",
                                             f"{ws}/merged1"], ["--adapter", "nowhere"]),
        Case("merge_lora: adapter is a data folder", [*MERGE, "--base", model, "--adapter", f"{ws}/data", "--out",
                                                      f"{ws}/merged2"], ["--adapter", f"{ws}/data"]),
        Case("merge_lora: base missing", [*MERGE, "--base", "/no/such/model", "--adapter", f"{ws}/adapter", "--out",
                                          f"{ws}/merged3"], ["--base", "/no/such/model"]),
        Case("merge_lora: base is a data folder", [*MERGE, "--base", f"{ws}/data", "--adapter", f"{ws}/adapter",
                                                   "--out", f"{ws}/merged4"], ["--base", f"{ws}/data"]),
        Case("merge_lora: out is a file", [*MERGE, "--base", model, "--adapter", f"{ws}/adapter", "--out",
                                           f"{ws}/a_file"], ["--out", "a_file"]),
        Case("merge_lora: unknown dtype", [*MERGE, "--base", model, "--adapter", f"{ws}/adapter", "--out",
                                           f"{ws}/merged5", "--dtype", "int8"], ["--dtype"]),
        # the verl entry point
        verl("unknown config name", "--config-name", "cepoo", expect=["cepoo"]),
        verl("misspelt key", "--config-name", "cepo", "cepo.eps=0.3", expect=["cepo.eps", "cepo.eps_w"]),
        verl("lam0 not a number", "--config-name", "cepo", "cepo.lam0=abc", expect=["cepo.lam0"]),
        verl("negative batch size", "--config-name", "cepo", "data.train_batch_size=-1",
             expect=["data.train_batch_size"]),
        verl("unknown method", "--config-name", "cepo", "cepo.method=ppo", expect=["ppo"]),
        verl("distill mode on cepo", "--config-name", "cepo", "cepo.distill.mode=topk", expect=["cepo.distill.mode"]),
        verl("unknown distill mode", "--config-name", "sdpo", "cepo.distill.mode=bogus", expect=["cepo.distill.mode"]),
        verl("--cfg jobs", "--config-name", "cepo", "--cfg", "jobs", expect=["--cfg"]),
        verl("one rollout per prompt", "--config-name", "cepo", "actor_rollout_ref.rollout.n=1",
             expect=["actor_rollout_ref.rollout.n"]),
        verl("ConSPO with an entropy bonus", "--config-name", "conspo", "actor_rollout_ref.actor.entropy_coeff=0.1",
             expect=["actor_rollout_ref.actor.entropy_coeff"]),
        verl("empty cepo.yaml", "--config-name", "cepo", expect=["cepo.yaml"],
             env={"CEPO_CONFIGS_DIR": str(ws / "configs_empty")}),
        verl("non-UTF-8 cepo.yaml", "--config-name", "cepo", expect=["cepo.yaml"],
             env={"CEPO_CONFIGS_DIR": str(ws / "configs_latin1")}),
        verl("data missing", "--config-name", "cepo", f"data.train_files={ws}/nowhere.parquet",
             expect=["data.train_files", "nowhere.parquet"]),
    ]


# -- running and classifying -----------------------------------------------------------------------------------------
def classify(rc: int | None, out: str, err: str, expect: list[str], left: list[str]) -> tuple[str, str, str]:
    """(class, reason, error line) of one outcome (module docstring)."""
    lines = [line for line in err.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    if "Traceback (most recent call last)" in err or "Traceback (most recent call last)" in out:
        return "traceback", "a traceback", line
    if rc is None:
        return "other", f"no exit within {TIMEOUT_S} s", line
    if rc == 0:
        return "silent", "exit status 0: the bad input was accepted", line
    if rc != 2:
        return "other", f"exit status {rc}", line
    if len(lines) != 1:
        return "other", f"{len(lines)} stderr lines, not one", line
    missing = [fragment for fragment in expect if fragment not in line]
    if missing:
        return "other", f"the line does not name {missing}", line
    if left:
        return "other", f"left {left[:5]} in the working directory", line
    return "good", "", line


def run_case(case: Case, ws: Path, env: dict[str, str]) -> dict[str, Any]:
    cwd = Path(tempfile.mkdtemp(prefix="cwd-", dir=ws))
    slug = "".join(c if c.isalnum() else "-" for c in case.name)
    command = [part.replace("{case}", slug) for part in case.command]
    tic = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=cwd, env={**env, **case.env}, capture_output=True, text=True,
                              timeout=TIMEOUT_S, errors="replace")
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as timeout:
        rc = None
        out = timeout.stdout.decode(errors="replace") if isinstance(timeout.stdout, bytes) else timeout.stdout or ""
        err = timeout.stderr.decode(errors="replace") if isinstance(timeout.stderr, bytes) else timeout.stderr or ""
    seconds = time.perf_counter() - tic
    left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    kind, reason, line = classify(rc, out, err, case.expect, left)
    shown = [str(part).replace(str(ws), "$WS").replace(PY, "python") for part in command]
    env_shown = {k: v.replace(str(ws), "$WS") for k, v in case.env.items()}
    return {"name": case.name, "command": shown, "env": env_shown, "exit_status": rc, "class": kind, "reason": reason,
            "error_line": line.replace(str(ws), "$WS"), "stderr_tail": err[-1500:].replace(str(ws), "$WS"),
            "seconds": round(seconds, 2), "left_in_cwd": left}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=None,
                        help="run only the cases whose name holds this text (repeat for several)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bad_input_trial.json"))
    parser.add_argument("--keep", action="store_true", help="keep the workspace (its path is printed)")
    parser.add_argument("--update", action="store_true",
                        help="with --only: replace those cases' results in --output (listed under 'rerun')")
    args = parser.parse_args(argv)

    ws = Path(tempfile.mkdtemp(prefix="cepo-bad-input-"))
    tic = time.perf_counter()
    try:
        make_workspace(ws)
        env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CEPO_CONFIGS_DIR")}
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
        selected = [c for c in cases(ws) if args.only is None or any(text in c.name for text in args.only)]
        results = []
        for i, case in enumerate(selected, 1):
            result = run_case(case, ws, env)
            results.append(result)
            note = f" ({result['reason']})" if result["reason"] else ""
            print(f"[{i:>2}/{len(selected)}] {result['class']:<9} {case.name}{note}: {result['error_line'][:160]}",
                  flush=True)
    finally:
        if args.keep:
            print(f"workspace kept: {ws}")
        else:
            shutil.rmtree(ws, ignore_errors=True)
    output = Path(args.output)
    report = {"wall_seconds": round(time.perf_counter() - tic, 1), "python": platform.python_version(),
              "machine": platform.machine(), "rerun": [], "cases": results}
    if args.only is not None:
        if not (args.update and output.is_file()):
            print(json.dumps(summarize(results)))
            return 0
        saved = json.loads(output.read_text())  # --update: these cases replace theirs in the saved trial
        fresh = {r["name"]: r for r in results}
        merged = [fresh.pop(r["name"], r) for r in saved["cases"]] + list(fresh.values())
        report = {**saved, "rerun": sorted({*saved.get("rerun", []), *(r["name"] for r in results)}),
                  "cases": merged}
    report = {**report, "summary": summarize(report["cases"])}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    print(json.dumps(report["summary"]))
    return 0


def summarize(results: list[dict[str, Any]]) -> dict[str, int]:
    """Counts of the outcome classes."""
    counts = Counter(r["class"] for r in results)
    return {"cases": len(results), **{k: counts.get(k, 0) for k in ("good", "traceback", "silent", "other")}}


if __name__ == "__main__":
    sys.exit(main())
