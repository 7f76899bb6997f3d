"""Checkpoints are complete or absent; --resume skips broken ones (saying why) and refuses to extend a finished
run; Ctrl-C names the last checkpoint and the --resume command; the warm start shows progress; step lines are
their own lines beside the tqdm bar."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from cepo.cli import main as cli_main
from cepo.integrations.trl.checkpoints import checkpoint_problems, find_resumable_checkpoint
from cepo.integrations.trl.trainer import CEPOTrainer


@pytest.fixture(scope="module")
def fast_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke model with a 2-step warm start: its rewards are mostly 0, which is fine for checkpoint tests."""
    import cepo.smoke

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cepo.smoke, "SMOKE_WARM_START_STEPS", 2)
        return cepo.smoke.prepare_smoke_model(tmp_path_factory.mktemp("fast") / "base-model")


def _run_dir(tmp_path: Path, model: Path, name: str = "run") -> Path:
    run = tmp_path / name
    run.mkdir()
    (run / "base-model").symlink_to(model)
    return run


def _smoke(run: Path, *args: str) -> int:
    return cli_main(["smoke", "--output-dir", str(run), *args])


def _error_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("cepo smoke:")]
    assert len(lines) == 1, err
    return lines[0]


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _fake_checkpoint(path: Path, step: int) -> Path:
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 4, "log_history": []}))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    save_file({"lora_A": torch.ones(8, 8), "lora_B": torch.zeros(8, 8)}, str(path / "adapter_model.safetensors"))
    return path


def test_checkpoint_problems_name_each_broken_file(tmp_path: Path) -> None:
    good = _fake_checkpoint(tmp_path / "checkpoint-1", 1)
    assert checkpoint_problems(good) == []
    for name, expected in [
        ("trainer_state.json", r"trainer_state\.json is not valid JSON, truncated or corrupt \(Unterminated|Expecting"),
        ("optimizer.pt", r"optimizer\.pt is truncated or corrupt"),
        ("adapter_model.safetensors", r"adapter_model\.safetensors is truncated \(\d+ of \d+ bytes\)"),
    ]:
        broken = _fake_checkpoint(tmp_path / name / "checkpoint-2", 2)
        _truncate(broken / name)
        problems = checkpoint_problems(broken)
        assert len(problems) == 1 and re.match(expected, problems[0]), problems
    bare = tmp_path / "bare" / "checkpoint-3"
    bare.mkdir(parents=True)
    assert checkpoint_problems(bare) == [
        "trainer_state.json is missing", "optimizer.pt is missing", "scheduler.pt is missing",
        "no model weights (adapter_model.safetensors or model.safetensors) are there",
    ]
    # the newest complete checkpoint wins; newer broken ones and staging directories are skipped
    run = tmp_path / "run"
    _fake_checkpoint(run / "checkpoint-1", 1)
    _fake_checkpoint(run / "checkpoint-2", 2)
    _truncate(run / "checkpoint-2" / "optimizer.pt")
    _fake_checkpoint(run / "tmp-checkpoint-3", 3)
    choice = find_resumable_checkpoint(run)
    assert choice.checkpoint == run / "checkpoint-1"
    assert [p.name for p, _ in choice.skipped] == ["checkpoint-2"]


def test_crash_mid_save_leaves_no_checkpoint_then_resume(
    fast_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, fast_model)
    original = CEPOTrainer._save_rng_state

    def crash_at_step_2(self: Any, output_dir: str) -> None:
        if self.state.global_step == 2:
            raise RuntimeError("disk full (simulated crash mid-save)")
        original(self, output_dir)

    monkeypatch.setattr(CEPOTrainer, "_save_rng_state", crash_at_step_2)
    assert _smoke(run, "--steps", "2") == 1  # the model and optimizer of step 2 were written, the rest was not
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]
    assert checkpoint_problems(run / "checkpoint-1") == []
    assert (run / "tmp-checkpoint-2").is_dir()  # the interrupted save, never renamed into place
    monkeypatch.setattr(CEPOTrainer, "_save_rng_state", original)

    assert _smoke(run, "--steps", "2", "--resume") == 0
    assert not (run / "tmp-checkpoint-2").exists()
    assert checkpoint_problems(run / "checkpoint-2") == []
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()

    # a truncated trainer_state.json in the newest checkpoint: skipped, named, and the run resumes from the previous
    _truncate(run / "checkpoint-2" / "trainer_state.json")
    assert _smoke(run, "--steps", "2", "--resume") == 0
    err = capsys.readouterr().err
    assert "resume: skipping checkpoint-2 (incomplete: trainer_state.json is not valid JSON" in err
    assert "resume: continuing from checkpoint-1" in err
    assert checkpoint_problems(run / "checkpoint-2") == []  # step 2 trained again and saved whole

    # no complete checkpoint at all: one line naming each broken file, exit 2
    _truncate(run / "checkpoint-1" / "optimizer.pt")
    _truncate(run / "checkpoint-2" / "adapter_model.safetensors")
    assert _smoke(run, "--steps", "2", "--resume") == 2
    line = _error_line(capsys.readouterr().err)
    assert "no complete checkpoint (checkpoint-2 (adapter_model.safetensors is truncated" in line
    assert "checkpoint-1 (optimizer.pt is truncated or corrupt" in line
    assert line.endswith("start the run again with --overwrite")


def test_extending_a_finished_run_is_refused(
    fast_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, fast_model)
    assert _smoke(run, "--steps", "1") == 0
    capsys.readouterr()
    assert _smoke(run, "--steps", "3", "--resume") == 2
    line = _error_line(capsys.readouterr().err)
    assert "checkpoint-1 ends a finished run (--steps 1): its cosine learning-rate schedule has ended" in line
    assert "Train it as a new run (--overwrite --steps 3, or --output-dir <another dir>)" in line
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    # resuming a finished run with its own step count: nothing to resume (transformers would train one more step)
    assert _smoke(run, "--steps", "1", "--resume") == 2
    line = _error_line(capsys.readouterr().err)
    assert "checkpoint-1 is step 1: the run is already at or past the requested --steps 1 and nothing is left to " \
           "resume (final/ holds the result)" in line
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(
    fast_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_dir(tmp_path, fast_model)
    original = CEPOTrainer.training_step

    def interrupt_second_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step >= 1:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CEPOTrainer, "training_step", interrupt_second_step)
    assert _smoke(run, "--steps", "2", "--overwrite") == 130
    line = _error_line(capsys.readouterr().err)
    assert line == (f"cepo smoke: interrupted at step 1; last checkpoint: {run / 'checkpoint-1'}; resume with: "
                    f"cepo smoke --output-dir {run} --steps 2 --resume")


def test_step_lines_are_their_own_lines_beside_the_progress_bar(fast_model: Path, tmp_path: Path) -> None:
    """stdout and stderr into one stream, as in a terminal: each step line must start a line of its own."""
    run = _run_dir(tmp_path, fast_model)
    merged = io.StringIO()
    with contextlib.redirect_stdout(merged), contextlib.redirect_stderr(merged):
        assert _smoke(run, "--steps", "2") == 0
    text = merged.getvalue()
    assert "%|" in text  # the progress bar was drawn into the same stream
    step_lines = [line for line in text.splitlines() if re.search(r"step +\d+ \| reward", line)]
    assert len(step_lines) == 2 and all(re.match(r"step +\d+ \| reward", line) for line in step_lines), step_lines


def test_warm_start_shows_progress_and_where_it_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import cepo.smoke

    monkeypatch.setattr(cepo.smoke, "SMOKE_WARM_START_STEPS", 2)
    model_dir = tmp_path / "base-model"
    cepo.smoke.prepare_smoke_model(model_dir, echo=True)
    captured = capsys.readouterr()
    assert f"done once and cached in {model_dir} for the next run" in captured.out
    assert "warm start" in captured.err and "2/2" in captured.err  # the tqdm bar
    cepo.smoke.prepare_smoke_model(model_dir, echo=True)  # cached: nothing to do, nothing printed
    assert capsys.readouterr().out == ""

    # an interrupted warm start leaves no half-saved model that the next run would reuse
    def interrupted(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("cepo.testing.warm_start.warm_start", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cepo.smoke.prepare_smoke_model(tmp_path / "other", echo=False)
    assert not (tmp_path / "other").exists()
