"""``cepo smoke --text``: the CPU run on the tiny Qwen3 text LM with arithmetic problems, every method.

The default run checks CEPO through the command line; the other methods are slow (one warm-started model is shared
by the module, so each costs only its own few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cepo.algorithms import METHODS


@pytest.fixture(scope="module")
def text_smoke_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cepo.smoke import prepare_smoke_model

    return prepare_smoke_model(tmp_path_factory.mktemp("text_smoke") / "base-model-text", text=True)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_cli_text_smoke_runs_cepo_with_its_teacher_passes(tmp_path, text_smoke_model, capsys, monkeypatch):
    import cepo.smoke
    from cepo.cli import main

    captured = {}
    run_smoke = cepo.smoke.run_smoke

    def spy(**kwargs):  # the CLI's call, with the module's warm-started text model
        captured["result"] = run_smoke(**{**kwargs, "model_dir": text_smoke_model})
        return captured["result"]

    monkeypatch.setattr(cepo.smoke, "run_smoke", spy)
    out = tmp_path / "run"
    assert main(["smoke", "--text", "--steps", "2", "--output-dir", str(out)]) == 0
    assert "smoke run finished" in capsys.readouterr().out
    trainer = captured["result"].trainer
    assert trainer.chat_template_kwargs == {"enable_thinking": False}  # the text recipe's thinking switch
    assert type(trainer.model.get_base_model()).__name__ == "Qwen3ForCausalLM"  # LoRA on the text LM
    rows = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(0.0 <= r["reward"] <= 1.0 for r in rows) and any(r["reward_std"] > 0 for r in rows)
    assert all(r["cepo/teacher_seconds"] > 0 for r in rows)  # the r+ / r- teacher passes ran on text prompts
    assert (out / "final").is_dir()


def test_text_smoke_refuses_the_verl_engine(capsys):
    from cepo.cli import main

    assert main(["smoke", "--text", "--engine", "verl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--text runs on the TRL engine" in err[0]


def test_text_smoke_conspo_prints_a_number_that_moves(tmp_path: Path, text_smoke_model: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17 §3: ConSPO's step line shows 1-P+ (cepo/conspo_neg_prob), not TRL's loss, which is 0 at every step by
    construction; the number moves over a short run, and no λ is printed or logged (ConSPO has none)."""
    import re

    from cepo.smoke import run_smoke

    run_smoke(tmp_path / "run", method="conspo", steps=3, model_dir=text_smoke_model, echo=True, text=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if re.match(r"step +\d+ \|", line)]
    assert len(lines) == 3 and not any("loss" in line or "lambda" in line for line in lines), lines
    values = [float(re.search(r"1-P\+ ([0-9.]+)", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert any(v > 0 for v in values) and all(0 <= v < 1 for v in values), values
    assert "ConSPO: TRL's loss is 0 at every step by construction" in out
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert [round(r["cepo/conspo_neg_prob"], 4) for r in rows] == values
    assert all(abs(r["loss"]) < 1e-6 for r in rows)  # why it is not printed: TRL's surrogate is 0 at ratio 1
    assert not any("cepo/lambda" in r for r in rows)


@pytest.mark.parametrize("option", [["--steps", "3"], ["--base-model", "/tmp/somewhere"]])
def test_verl_smoke_refuses_trl_only_options(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The verl smoke run has its own steps and model: --steps / --base-model were ignored without a word."""
    from cepo.cli import VERL_SMOKE_STEPS, main
    from cepo.integrations.verl.smoke import SMOKE_STEPS

    assert VERL_SMOKE_STEPS == SMOKE_STEPS  # the message's number is the run's
    assert main(["smoke", "--engine", "verl", *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cepo smoke: error: {option[0]} applies to the TRL smoke run" in err[0], err


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"cepo"}))
def test_text_smoke_every_method(tmp_path, text_smoke_model, method):
    from cepo.smoke import run_smoke

    result = run_smoke(output_dir=tmp_path / method, method=method, steps=2, echo=False, model_dir=text_smoke_model,
                       text=True)
    rows = _rows(result.run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(0.0 <= r["reward"] <= 1.0 for r in rows)
    assert result.trainer.chat_template_kwargs == {"enable_thinking": False}
