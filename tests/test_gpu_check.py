"""``benchmarks/gpu_check.py``, the GPU check, on CPU: the whole command at the tiny size (both stages, JSON and
Markdown), its trainer settings against ``cepo train``'s own mapping of the method YAMLs, the Qwen3-VL-2B
configuration and prompt lengths, a spent time budget, and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


@pytest.fixture
def gpu_check(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # importing overhead.py must not re-exec pytest
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    return gpu_check


def _table(markdown: str, header_start: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with ``header_start``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_gpu_check_runs_on_cpu_at_the_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--size", "tiny",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "stage 1" in proc.stdout and "stage 2" in proc.stdout  # progress is printed
    payload = json.loads((out / "gpu_check.json").read_text())
    markdown = (out / "gpu_check.md").read_text()
    trl, settings = payload["trl"], payload["settings"]
    assert settings["device"] == "cpu" and settings["size"] == "tiny" and payload["machine"]["device"] == "cpu"

    # stage 1: both methods trained and were timed; every phase record sums to its round (PhaseTimer is exclusive)
    methods = trl["methods"]
    assert list(methods) == ["grpo", "cepo"]
    rows = trl["rows_per_round"]
    assert rows == settings["prompts"] * settings["group"]
    for result in methods.values():
        assert result["status"] == "ok", result
        phases = result["phases_per_round"]
        assert phases["total"] > 0 and result["rounds_timed"] == settings["rounds"]
        assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(phases["total"], rel=1e-6)
        assert phases["update"] > 0 and result["peak_bytes"] > 0 and "peak_delta_bytes" in result
        assert len(result["wall_seconds"]) == 1 and result["wall_seconds"][0] >= phases["total"]
    # GRPO has no teacher; CEPO scores every row under r+ and under r- (Replay: every group has both), Eq. 5
    assert "teacher_forward" not in methods["grpo"]["phases_per_round"]
    assert methods["grpo"]["teacher_rows_per_round"] == 0
    assert methods["cepo"]["phases_per_round"]["teacher_forward"] > 0
    assert methods["cepo"]["phases_per_round"]["teacher_build"] > 0
    assert methods["cepo"]["teacher_rows_per_round"] == 2 * rows
    totals = {m: methods[m]["phases_per_round"]["total"] for m in methods}
    assert trl["ratios"]["cepo_over_grpo_step"] == pytest.approx(totals["cepo"] / totals["grpo"])
    peaks = {m: methods[m]["peak_bytes"] for m in methods}
    assert trl["ratios"]["cepo_over_grpo_peak_memory"] == pytest.approx(peaks["cepo"] / peaks["grpo"])
    assert all(settings["prompt_tokens"] - 4 <= n <= settings["prompt_tokens"] for n in trl["prompt_tokens"])

    # stage 2: overhead.py ran at the tiny size, all three methods
    (entry,) = payload["overhead"]
    assert entry["status"] == "ok" and entry["size"] == "S" and "--device cpu" in entry["command"]
    (config,) = entry["configs"]
    assert list(config["methods"]) == ["grpo", "rlsd", "cepo"]
    assert config["config"]["length"] == settings["overhead_lengths"][0]
    assert (out / entry["file"]).is_file()
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "overhead_S.json"]

    # the Markdown tables hold the JSON's numbers, one row per run
    assert payload["machine"]["cpu"] in markdown and f"torch {torch.__version__}" in markdown
    table = _table(markdown, "| method | status |")
    assert [row[0] for row in table] == list(methods)
    for row in table:
        result = methods[row[0]]
        assert row[1] == "ok"
        assert row[2] == f"{result['phases_per_round']['total']:.2f}"
        assert row[6] == f"{result['phases_per_round'].get('teacher_forward', 0.0):.2f}"
        assert row[9] == f"{result['teacher_rows_per_round']:.0f}"
        assert row[10] == f"{result['peak_bytes'] / 1024**3:.2f}"
    assert table[1][11] == f"{trl['ratios']['cepo_over_grpo_step']:.2f}x"
    overhead = _table(markdown, "| size | parameters |")
    assert [(row[0], row[3]) for row in overhead] == [("S", m) for m in config["methods"]]
    for row in overhead:
        assert row[5] == f"{config['methods'][row[3]]['phases_per_round']['total']:.2f}"


@pytest.mark.parametrize("method", ["grpo", "cepo"])
def test_trainer_settings_are_what_cepo_train_maps_the_method_yaml_to(gpu_check: Any, method: str) -> None:
    from omegaconf import OmegaConf

    from cepo.integrations.trl.from_config import compose, trl_args

    prompts, group, response, micro = 4, 8, 2048, 4
    cfg = compose(REPO / "configs" / f"{method}.yaml", [
        f"data.train_batch_size={prompts}", f"actor_rollout_ref.actor.ppo_mini_batch_size={prompts // 2}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}", f"actor_rollout_ref.rollout.n={group}",
        f"data.max_response_length={response}",
    ])
    expected = trl_args(cfg, num_processes=1, use_cpu=True, bf16=False)
    ours = gpu_check.trainer_settings(method, prompts, group, response, micro, rounds=2, device="cpu",
                                      dtype=torch.float32, output_dir="/tmp/x")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
                "num_iterations", "num_generations", "max_completion_length", "gradient_checkpointing",
                "learning_rate", "weight_decay", "epsilon", "epsilon_high", "temperature", "cepo_method"):
        assert ours[key] == getattr(expected, key), key
    assert str(getattr(expected.lr_scheduler_type, "value", expected.lr_scheduler_type)) == ours["lr_scheduler_type"]
    steps_per_round = expected.max_steps // OmegaConf.select(cfg, "trainer.total_training_steps")
    assert ours["max_steps"] == 2 * steps_per_round
    model = OmegaConf.select(cfg, "actor_rollout_ref.model")
    assert (model.lora_rank, model.lora_alpha) == (gpu_check.LORA_RANK, gpu_check.LORA_ALPHA)


def test_qwen3vl_2b_configuration_and_its_prompts(gpu_check: Any) -> None:
    from transformers import Qwen3VLForConditionalGeneration

    from cepo.testing import build_qwen_tokenizer
    from cepo.testing.tokenizer import IMAGE_PAD

    tokenizer = build_qwen_tokenizer()
    config = gpu_check.qwen3vl_2b_config(tokenizer)
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.intermediate_size, text.vocab_size) == (2048, 28, 6144,
                                                                                                    151936)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (16, 8, 128)
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and text.rope_parameters["rope_theta"] == 5e6
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.deepstack_visual_indexes) == (
        24, 1024, 2048, [5, 11, 17])
    assert config.image_token_id == tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    assert 2.1e9 < sum(p.numel() for p in model.parameters()) < 2.2e9  # 2.13B: the 2B of Qwen3-VL-2B

    # a 512 x 512 image is (512 / 16)^2 patches merged 2 x 2: 256 image tokens; prompts fill up to 768 tokens
    processor = gpu_check.build_processor("2b", tokenizer)
    data, lengths = gpu_check.make_dataset(processor, 2, 768, 512)
    image = processor.image_processor(images=data[0]["images"], return_tensors="pt")
    assert int(image["image_grid_thw"].prod()) // 4 == (512 // 16) ** 2 // 4 == 256
    rendered = processor.apply_chat_template([[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": data[0]["prompt"][0]["content"]}]}]], add_generation_prompt=True,
        tokenize=False)[0]
    ids = processor(text=[rendered], images=data[0]["images"], return_tensors="pt")["input_ids"][0]
    assert int((ids == config.image_token_id).sum()) == 256
    assert len(ids) == lengths[0] and 740 <= lengths[0] <= 768 and 740 <= lengths[1] <= 768


@pytest.mark.parametrize(("args", "message"), [
    (["--prompts", "3"], "--prompts 3: must be even"),
    (["--micro-batch", "3"], "--micro-batch 3 must divide"),
    (["--methods", "cepo"], "--methods must include grpo"),
    (["--overhead-sizes", "XXL"], "--overhead-sizes XXL: unknown"),
    (["--device", "cuda"], "--device cuda: this torch sees no CUDA device"),
])
def test_bad_settings_are_one_line_and_exit_2(gpu_check: Any, tmp_path: Path, capsys: pytest.CaptureFixture,
                                              args: list[str], message: str) -> None:
    if args[0] == "--device" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    device = [] if args[0] == "--device" else ["--device", "cpu"]
    assert gpu_check.main(["--out", str(tmp_path), *device, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "gpu_check.json").exists()


def test_a_spent_budget_is_recorded_per_run_and_the_check_still_reports(gpu_check: Any, tmp_path: Path) -> None:
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cpu", "--size", "tiny", "--budget-s", "1"]) == 0
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {m: r["status"] for m, r in payload["trl"]["methods"].items()} == {"grpo": "timeout", "cepo": "timeout"}
    assert payload["trl"]["ratios"] == {}
    assert [(e["size"], e["status"]) for e in payload["overhead"]] == [("S", "skipped")]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert [row[:2] for row in _table(markdown, "| method | status |")] == [["grpo", "timeout"], ["cepo", "timeout"]]
    assert [(row[0], row[4]) for row in _table(markdown, "| size | parameters |")] == [("S", "skipped")]
