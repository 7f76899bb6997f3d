"""cepo credit-map (paper Fig. 5): the weights are cepo.algorithms' on the training code path; HTML, PNG, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cepo.cli import main

PROBLEM = "<image>Find x."
ANSWER = "75"
WRONG = "65"
RESPONSE = "The angles of a triangle sum to 180, so x = 180 - 50 - 55 = 75.\n\\boxed{75}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cepo.testing import save_tiny_qwen3vl

    return save_tiny_qwen3vl(tmp_path_factory.mktemp("credit-map") / "tiny")


@pytest.fixture(scope="module")
def figure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cepo.testing import render_problem, sample_geo3k_problems

    problem = next(p for p in sample_geo3k_problems(10, seed=5) if p.kind == "angle")
    path = tmp_path_factory.mktemp("figure") / "triangle.png"
    render_problem(problem).save(path)
    return path


def _run(tiny_model: Path, figure: Path, out: Path, *extra: str) -> int:
    return main(["credit-map", "--model", str(tiny_model), "--problem", PROBLEM, "--image", str(figure),
                 "--answer", ANSWER, "--wrong-answer", WRONG, "--output-dir", str(out), *extra])


def _student_logps(model: torch.nn.Module, processor: object, messages: list, image: object,
                   response: list[int]) -> torch.Tensor:
    """P_S by a plain forward of the student prompt + response (not through cepo.teacher)."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[text], images=[image], return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.tensor([response])], dim=1)
    kwargs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    mm = torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(response), dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm, **kwargs).logits
    p = enc["input_ids"].shape[1]
    logps = torch.log_softmax(logits[:, p - 1 : -1].float(), -1)
    return logps.gather(-1, torch.tensor([response]).unsqueeze(-1)).squeeze(-1)


def test_credit_map_weights_are_cepo_algorithms_on_the_training_path(
    tiny_model: Path, figure: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from cepo.algorithms import contrastive_delta, evidence_weights, rlsd_delta
    from cepo.data import student_prompt
    from cepo.teacher import build_teacher_inputs, teacher_logprobs

    out = tmp_path / "cm"
    assert _run(tiny_model, figure, out, "--response", RESPONSE) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "credit_map.json").read_text())
    rows = data["tokens"]
    assert set(rows[0]) == {"token", "id", "P_S", "P_T+", "P_T-", "w_RLSD", "w_CEPO"}
    assert data["correct"] is True and data["advantage_sign"] == 1  # the verifier grades the response correct

    model = AutoModelForImageTextToText.from_pretrained(tiny_model).eval()
    processor = AutoProcessor.from_pretrained(tiny_model)
    image = Image.open(figure).convert("RGB")
    response = processor.tokenizer(RESPONSE, add_special_tokens=False)["input_ids"]
    assert [r["id"] for r in rows] == response
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": student_prompt(PROBLEM)}]}]
    ids, mask = torch.tensor([response]), torch.ones(1, len(response), dtype=torch.long)
    teacher = {hint: teacher_logprobs(model, build_teacher_inputs(processor, [messages], [hint], ids, mask,
                                                                  images=[[image]]))
               for hint in (ANSWER, WRONG)}
    logp_s = _student_logps(model, processor, messages, image, response)
    torch.testing.assert_close(torch.tensor([[r["P_S"] for r in rows]]).log(), logp_s, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([[r["P_T+"] for r in rows]]).log(), teacher[ANSWER], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([[r["P_T-"] for r in rows]]).log(), teacher[WRONG], atol=1e-4, rtol=1e-4)
    adv = torch.tensor([1.0])
    w_rlsd = evidence_weights(adv, rlsd_delta(teacher[ANSWER], logp_s, mask))
    w_cepo = evidence_weights(adv, contrastive_delta(teacher[ANSWER], teacher[WRONG], logp_s, torch.tensor([True]),
                                                     mask))
    torch.testing.assert_close(torch.tensor([[r["w_RLSD"] for r in rows]]), w_rlsd, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(torch.tensor([[r["w_CEPO"] for r in rows]]), w_cepo, atol=1e-4, rtol=1e-3)
    for method, w in (("RLSD", w_rlsd), ("CEPO", w_cepo)):
        expected = float(((w < 0.5) | (w > 1.5)).float().mean())
        assert data["clip_rate"][method] == pytest.approx(expected)
        assert f"{method} {100 * expected:.1f}%" in printed

    page = (out / "credit_map.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "clip rate" in page
    assert page.count('<span style="background:#') == 2 * len(rows) + 5  # both panels, every token, the legend
    assert "<script" not in page and "http" not in page and "<link" not in page  # self-contained
    png = Image.open(out / "credit_map.png")
    assert png.format == "PNG" and png.size[0] > 500 and png.size[1] > 200


def test_credit_map_wrong_response_gets_negative_sign_and_sampling_works(
    tiny_model: Path, figure: Path, tmp_path: Path
) -> None:
    assert _run(tiny_model, figure, tmp_path / "wrong", "--response", "x = 65. \\boxed{65}") == 0
    data = json.loads((tmp_path / "wrong" / "credit_map.json").read_text())
    assert data["correct"] is False and data["advantage_sign"] == -1
    assert _run(tiny_model, figure, tmp_path / "sampled", "--sample", "--max-new-tokens", "8") == 0
    sampled = json.loads((tmp_path / "sampled" / "credit_map.json").read_text())
    assert 1 <= len(sampled["tokens"]) <= 8


def test_weight_colours_follow_fig5() -> None:
    from cepo.analysis.credit_map import GREEN, RED, weight_colour

    assert weight_colour(1.0, 0.5) == (255, 255, 255)
    assert weight_colour(1.5, 0.5) == GREEN and weight_colour(9.0, 0.5) == GREEN  # clipped at 1 + eps_w
    assert weight_colour(0.5, 0.5) == RED and weight_colour(0.01, 0.5) == RED
    light_green = weight_colour(1.25, 0.5)
    assert light_green[1] > light_green[0] and light_green != (255, 255, 255)


def test_credit_map_bad_input_is_one_line_exit_2(tiny_model: Path, figure: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def error() -> str:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("cepo credit-map: error: ") and "Traceback" not in err, err
        return lines[0]

    too_long = " ".join(["1"] * 5000)  # the tiny model's context is 4096 tokens
    assert _run(tiny_model, figure, tmp_path / "x", "--response", too_long) == 2
    assert "longer than the model's context of 4096" in error()
    fits_alone = " ".join(["1"] * 2045)  # 4089 tokens: only with the prompt is it too long
    assert _run(tiny_model, figure, tmp_path / "x", "--response", fits_alone) == 2
    assert "after the student prompt" in error()
    assert _run(tiny_model, figure, tmp_path / "x") == 2
    assert "exactly one of --response" in error()
    assert main(["credit-map", "--model", str(tmp_path / "missing"), "--problem", "p", "--answer", "1",
                 "--wrong-answer", "2", "--response", "r"]) == 2
    assert "does not exist" in error()
    assert _run(tiny_model, tmp_path / "no.png", tmp_path / "x", "--response", "r") == 2
    assert "--image" in error()
