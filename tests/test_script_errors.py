"""The scripts under ``scripts/`` as a new user runs them with bad input: one stderr line naming the option and the
fix, exit status 2, no traceback, no usage block (issue 17's bad-input trial: ``benchmarks/bad_input_trial.py``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from cepo.testing.cli_checks import one_error_line

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exit_status(main: Any, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.mark.parametrize(("script", "argv", "fragments"), [
    ("prepare_math", ["--splits", "bogus"], ["argument --splits: invalid choice: 'bogus'"]),
    ("prepare_geo3k", ["--on-bad-image", "maybe"], ["argument --on-bad-image: invalid choice: 'maybe'"]),
    ("merge_lora", ["--base", "b", "--adapter", "a", "--out", "o", "--dtype", "int8"],
     ["argument --dtype: invalid choice: 'int8'"]),
    ("merge_lora", [], ["the following arguments are required: --base, --adapter, --out"]),
])
def test_usage_errors_are_one_line(script: str, argv: list[str], fragments: list[str],
                                   capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [f"{script}.py"])
    assert _exit_status(_script(script).main, argv) == 2
    err = capsys.readouterr().err
    assert "usage:" not in err
    line = one_error_line(err, f"[{script}] error:")
    for fragment in fragments:
        assert fragment in line, line
    assert line.endswith(f"(see {script}.py --help)"), line


# -- merge_lora.py ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny Qwen3-VL and a LoRA adapter of it (the paper's LoRA, as a TRL run's final/ holds)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from cepo.integrations.trl.run import lora_config
    from cepo.testing import save_tiny_qwen3vl

    base = save_tiny_qwen3vl(tmp_path_factory.mktemp("merge") / "base")
    adapter = base.parent / "adapter"
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(base), lora_config())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter: merging it changes the logits
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(adapter)
    return base, adapter


def _merge(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = _exit_status(_script("merge_lora").main, argv)
    out = capsys.readouterr()
    return code, out.err


def test_merge_lora_bad_paths_are_named(tiny_adapter: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base, adapter = tiny_adapter
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes(b"x")
    cases = [
        (["--base", str(base), "--adapter", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m1")],
         f"--adapter {str(tmp_path / 'nowhere')!r} does not exist"),
        (["--base", str(base), "--adapter", str(tmp_path / "data"), "--out", str(tmp_path / "m2")],
         f"--adapter {str(tmp_path / 'data')!r} has no adapter_config.json"),
        (["--base", "/no/such/model", "--adapter", str(adapter), "--out", str(tmp_path / "m3")],
         "--base '/no/such/model' does not exist"),
        (["--base", str(tmp_path / "data"), "--adapter", str(adapter), "--out", str(tmp_path / "m4")],
         f"cannot load --base {str(tmp_path / 'data')!r}"),
        (["--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "a_file")],
         f"--out {str(tmp_path / 'a_file')!r} is a file, not a directory"),
    ]
    for argv, fragment in cases:
        code, err = _merge(argv, capsys)
        line = one_error_line(err, "[merge_lora] error:")
        assert code == 2 and fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "data"]  # no output folder was created


def test_merge_lora_adapter_of_another_model(tiny_adapter: tuple[Path, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """An adapter whose target modules the base does not have (here: a text LM's adapter on the VLM's LoRA pattern
    is fine, so a hand-made one naming a module the base lacks) is one line naming both."""
    import json

    base, adapter = tiny_adapter
    other = tmp_path / "other-adapter"
    other.mkdir()
    for path in adapter.iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_module"]
    (other / "adapter_config.json").write_text(json.dumps(config))
    code, err = _merge(["--base", str(base), "--adapter", str(other), "--out", str(tmp_path / "m")], capsys)
    line = one_error_line(err, "[merge_lora] error:")
    assert code == 2 and f"--adapter {str(other)!r} does not fit --base {str(base)!r}" in line, line
    assert not (tmp_path / "m").exists()


def test_merge_lora_merges(tiny_adapter: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The good path still works: the merged folder loads and gives the adapter model's logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base, adapter = tiny_adapter
    code, err = _merge(["--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "m"),
                        "--dtype", "float32"], capsys)
    assert code == 0, err
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    with_adapter = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), adapter)
    plain = AutoModelForImageTextToText.from_pretrained(base)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-4)  # the adapter does something
