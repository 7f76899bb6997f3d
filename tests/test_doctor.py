"""``cepo doctor`` on this machine (no GPU, no vLLM): the GPU rows say so, every other row is still checked.

A tiny Qwen3-VL folder (cepo.testing) and a tiny parquet in verl's layout (scripts/prepare_geo3k.py's converter)
pass; a parquet with a row without an answer, a missing MODEL_PATH, an excluded verl plugin fail with their fix.
The tested stack is read from the installed metadata and must match docs/install.md's table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from test_ray_submission import RayHead, ray_head  # noqa: F401  (the Ray head fixture of the submission tests)

from cepo import cli, doctor
from cepo.doctor import FAIL, OK, SKIP, WARN, Expected, check_package, check_plugin

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cepo.integrations.verl.smoke import write_verl_geo3k
    from cepo.testing import save_tiny_qwen3vl

    root = tmp_path_factory.mktemp("doctor")
    return {"model": save_tiny_qwen3vl(root / "model"), "data": write_verl_geo3k(root / "data", n_train=4, n_test=2),
            "root": root}


def _doctor(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: Path, data: Path,
            *args: str) -> tuple[int, dict]:
    monkeypatch.setenv("MODEL_PATH", str(model))
    monkeypatch.setenv("DATA_DIR", str(data))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("VERL_USE_EXTERNAL_PLUGINS", raising=False)
    code = cli.main(["doctor", "--json", *args])
    report = json.loads(capsys.readouterr().out)
    return code, report


def _rows(report: dict) -> dict[str, dict]:
    return {row["check"]: row for row in report["rows"]}


def test_ready_parts_pass_and_gpu_rows_say_no_gpu(node, monkeypatch, capsys, tmp_path) -> None:
    code, report = _doctor(monkeypatch, capsys, node["model"], node["data"],
                           f"trainer.default_local_dir={tmp_path / 'run'}")
    rows = _rows(report)
    # the --json schema: ready + rows of check / verdict / detail / fix
    assert set(report) == {"ready", "rows"} and isinstance(report["ready"], bool)
    for row in report["rows"]:
        assert set(row) == {"check", "verdict", "detail", "fix"} and row["verdict"] in {OK, WARN, FAIL, SKIP}
        assert row["verdict"] in (OK, SKIP) or row["fix"], row
    assert {"python", "torch", "vllm", "verl", "transformers", "trl", "peft", "ray", "CUDA", "GPUs", "driver CUDA",
            "flash-attn", "verl plugin", "Ray cluster", "MODEL_PATH", "data.train_files", "data.val_files",
            "disk"} == set(rows)
    import torch

    assert not torch.cuda.is_available()  # this machine: the GPU rows say so
    assert rows["CUDA"]["verdict"] == FAIL and "no GPU" in rows["CUDA"]["detail"] and "TRL" in rows["CUDA"]["fix"]
    assert rows["GPUs"]["verdict"] == SKIP and rows["driver CUDA"]["verdict"] == SKIP
    assert code == 1 and report["ready"] is False
    # ... and still checks the rest
    assert rows["MODEL_PATH"]["verdict"] == OK and "Qwen3VLProcessor" in rows["MODEL_PATH"]["detail"]
    assert rows["data.train_files"]["verdict"] == OK and "first 4 rows" in rows["data.train_files"]["detail"]
    assert rows["data.val_files"]["verdict"] == OK and "first 2 rows" in rows["data.val_files"]["detail"]
    assert rows["verl plugin"]["verdict"] == OK and rows["python"]["verdict"] == OK
    assert rows["Ray cluster"]["verdict"] == SKIP and rows["flash-attn"]["verdict"] == SKIP
    assert rows["disk"]["verdict"] == OK and str(tmp_path) in rows["disk"]["detail"]
    assert rows["verl"]["verdict"] == OK  # 0.9.1, the gpu extra's pin, is installed here
    assert rows["vllm"]["verdict"] == FAIL and '.[gpu,trl]' in rows["vllm"]["fix"]


def test_table_names_verdicts_and_fixes(node, monkeypatch, capsys) -> None:
    monkeypatch.setenv("MODEL_PATH", str(node["root"] / "no-such-model"))
    monkeypatch.setenv("DATA_DIR", str(node["data"]))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = cli.main(["doctor"])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["check", "verdict", "found"]
    model = next(i for i, line in enumerate(lines) if line.startswith("MODEL_PATH"))
    assert " FAIL " in lines[model] and "no-such-model" in lines[model] and "does not exist" in lines[model]
    assert lines[model + 1].strip().startswith("fix: set MODEL_PATH")
    assert lines[-1].startswith("not ready:") and "MODEL_PATH" in lines[-1] and "CUDA" in lines[-1]


def test_bad_parquet_names_file_and_row(node, monkeypatch, capsys, tmp_path) -> None:
    import pandas as pd

    data = tmp_path / "bad"
    data.mkdir()
    frame = pd.read_parquet(node["data"] / "train.parquet")
    frame.at[1, "reward_model"] = {"style": "rule", "ground_truth": ""}
    frame.to_parquet(data / "train.parquet")
    (data / "test.parquet").write_bytes(b"not a parquet")
    _, report = _doctor(monkeypatch, capsys, node["model"], data)
    rows = _rows(report)
    train, test = rows["data.train_files"], rows["data.val_files"]
    assert train["verdict"] == FAIL and str(data / "train.parquet") in train["detail"] and "row 1" in train["detail"]
    assert "cepo-doctor-" not in train["detail"]  # the user's file is named, not the temporary copy
    assert test["verdict"] == FAIL and "not a readable parquet" in test["detail"]


def test_bad_config_override_is_one_line_exit_2(monkeypatch, capsys) -> None:
    code = cli.main(["doctor", "cepo.lam0=1.5"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cepo.lam0" in err


def test_package_verdicts() -> None:
    found = check_package("pytest", Expected(SpecifierSet(">=1"), None, True))
    assert found.verdict == OK
    assert check_package("pytest", Expected(SpecifierSet(">=999"), None, True)).verdict == FAIL
    assert check_package("pytest", Expected(SpecifierSet(), "0.0.1", True)).verdict == WARN
    assert check_package("no-such-dist-cepo", Expected(SpecifierSet(), None, True)).verdict == FAIL
    assert check_package("no-such-dist-cepo", Expected(SpecifierSet(), None, False)).verdict == WARN


@pytest.mark.parametrize(("policy", "external_lib", "verdict"), [
    ("auto", True, OK), ("cepo,other", True, OK), ("none", True, WARN), ("other", True, WARN),
    ("none", False, FAIL)])
def test_plugin_row(monkeypatch, policy: str, external_lib: bool, verdict: str) -> None:
    """Excluded from verl's discovery, the fix still reaches the workers through external_lib (cepo's configs add
    it): a warning; with neither path, a failure naming both fixes."""
    from omegaconf import OmegaConf

    from cepo.recipes import PLUGIN_MODULE

    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", policy)
    cfg = OmegaConf.create({"actor_rollout_ref": {"model": {"external_lib": PLUGIN_MODULE if external_lib else None}}})
    row = check_plugin(cfg)
    assert row.verdict == verdict, row
    if verdict != OK:
        assert f"VERL_USE_EXTERNAL_PLUGINS={policy}" in row.detail and "VERL_USE_EXTERNAL_PLUGINS" in row.fix
    if verdict == FAIL:
        assert f"external_lib={PLUGIN_MODULE}" in row.fix


def test_tested_stack_is_the_one_docs_install_states() -> None:
    """docs/install.md's table and the stack doctor reads from the installed metadata name the same versions."""
    stack = doctor.tested_stack()
    table = {}
    for line in (ROOT / "docs" / "install.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and re.match(r"^\d", cells[1]):
            for name, value in zip(cells[0].split(" / "), cells[1].split(" / "), strict=True):
                table[name] = value
    for name in ("verl", "vllm", "torch", "transformers"):
        assert stack[name].tested == table[name], (name, stack[name], table[name])
    assert table["trl"] in stack["trl"].spec and table["peft"] in stack["peft"].spec
    assert table["ray"] in stack["ray"].spec
    assert f"flash-attn=={stack['flash-attn'].tested}" in (ROOT / "docs" / "install.md").read_text()


@pytest.mark.slow
def test_ray_row_reads_a_real_cluster(ray_head: RayHead, node, monkeypatch, capsys) -> None:  # noqa: F811
    """RAY_ADDRESS = a real head on 127.0.0.1 (0 GPUs), through its job server as submit_ray_job.sh uses it:
    reachable, and short of the job's GPUs with the resource module's refusal as the fix."""
    for key, value in ray_head.env.items():
        if key.startswith("RAY_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("MODEL_PATH", str(node["model"]))
    monkeypatch.setenv("DATA_DIR", str(node["data"]))
    assert cli.main(["doctor", "--json", "trainer.n_gpus_per_node=2"]) == 1
    row = _rows(json.loads(capsys.readouterr().out))["Ray cluster"]
    assert row["verdict"] == FAIL and row["detail"] == f"{ray_head.address}: 0 GPUs on 1 node", row
    assert "needs 2 GPUs (trainer.n_gpus_per_node=2 x trainer.nnodes=1)" in row["fix"]
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:9")  # nothing listens there
    cli.main(["doctor", "--json"])
    row = _rows(json.loads(capsys.readouterr().out))["Ray cluster"]
    assert row["verdict"] == FAIL and "cannot reach RAY_ADDRESS=http://127.0.0.1:9" in row["detail"]
