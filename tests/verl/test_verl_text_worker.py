"""The verl worker path on a text-only causal LM with the text recipe (configs/text/cepo.yaml: Qwen3's thinking
switch off): ``CEPOTrainerSync._compute_old_log_prob`` + ``_compute_advantage`` through verl's real workers, as in
test_verl_trainer_cpu.py (what is real and what is doubled: its docstring), with a tiny Qwen3 text LM, no processor.

The teacher log-probs are checked against a forward over teacher contexts written out by hand here (the chat
template's text with the hint and the empty think block), not through ``cepo.teacher``."""

from __future__ import annotations

import types

import pytest
import torch

ray = pytest.importorskip("ray")
tq = pytest.importorskip("transfer_queue")

import _harness as h  # noqa: E402
from _harness import N  # noqa: E402

from cepo.algorithms import CreditInputs, compute_token_advantages, group_advantages  # noqa: E402
from cepo.integrations.verl.credit import HAS_NEG_KEY, NEG_KEY, POS_KEY  # noqa: E402
from cepo.integrations.verl.trainer import TEACHER_PARTITION  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory):
    from cepo.testing import save_tiny_text_lm

    return save_tiny_text_lm(tmp_path_factory.mktemp("tiny_text_lm"))


def _hand_teacher_logprobs(model, tokenizer, problem: str, hint: str, response_ids: torch.Tensor) -> torch.Tensor:
    """log P(y_t | teacher context, y<t) for one response, the context spelled out as Qwen3's template renders a
    user turn with the Appendix B hint and enable_thinking=false."""
    context = (f"<|im_start|>user\n{problem}\n\nHere is a sample answer: {hint}<|im_end|>\n"
               "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    prompt = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + response_ids.tolist()])
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    logp = torch.log_softmax(logits[0, len(prompt) - 1:-1], dim=-1)
    return logp.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)


def test_text_model_teacher_passes_and_advantages_through_verl_workers(verl_cpu, tiny_text_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cepo.testing.math_data import make_math_problems

    model = AutoModelForCausalLM.from_pretrained(tiny_text_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_text_dir)
    cfg = h.config(tiny_text_dir, method="text/cepo")
    assert cfg.data.apply_chat_template_kwargs == {"enable_thinking": False}
    rows_in = [(p.problem, None, p.answer) for p in make_math_problems(2)]
    wg = h.worker_group(cfg, model)
    meta, rows = h.put_rollouts(None, tokenizer, rows_in, "t", chat_template_kwargs={"enable_thinking": False})
    trainer = h.trainer(cfg, types.SimpleNamespace(tokenizer=tokenizer), wg, global_steps=1)
    trainer.processor = None  # verl's processor for a tokenizer-only model
    metrics: dict = {}
    meta = trainer._compute_old_log_prob(meta, metrics)
    meta = trainer._compute_advantage(meta, metrics)
    assert [partition for partition, _ in wg.log_prob_calls] == ["train", TEACHER_PARTITION]

    out = tq.kv_batch_get(keys=meta.keys, partition_id="train",
                          select_fields=["advantages", "old_log_probs", POS_KEY, NEG_KEY, HAS_NEG_KEY])
    resp = h.padded(r["response_ids"] for r in rows).long()
    mask = h.padded(torch.ones_like(r["response_ids"]) for r in rows).long()
    problems = {f"t{p}": problem for p, (problem, _, _) in enumerate(rows_in)}
    pos = [h.padded([_hand_teacher_logprobs(model, tokenizer, problems[r["uid"]], r["answer"], r["response_ids"])])[0]
           for r in rows]
    got_pos = h.padded(out[POS_KEY].unbind())
    for i, expected in enumerate(pos):
        torch.testing.assert_close(got_pos[i, :len(expected)].double(), expected, rtol=1e-4, atol=1e-4)
    # group 0's r- is "7" (harness RESPONSES: the lowest-reward rejected rollout with a boxed answer)
    got_neg = h.padded(out[NEG_KEY].unbind())
    for i in range(N):
        expected = _hand_teacher_logprobs(model, tokenizer, problems["t0"], "7", rows[i]["response_ids"])
        torch.testing.assert_close(got_neg[i, :len(expected)].double(), expected, rtol=1e-4, atol=1e-4)
    assert out[HAS_NEG_KEY].tolist() == [True] * N + [False] * N

    scores = torch.tensor([r["score"] for r in rows])
    inputs = CreditInputs(advantages=group_advantages(scores, [r["uid"] for r in rows]), response_mask=mask,
                          lam=0.5, eps_w=trainer.cepo.eps_w, logp_student=h.padded(out["old_log_probs"].unbind()),
                          logp_pos=got_pos, logp_neg=got_neg, has_negative=out[HAS_NEG_KEY])
    expected_adv, _ = compute_token_advantages("cepo", inputs)
    torch.testing.assert_close(h.padded(out["advantages"].unbind()), expected_adv.float(), rtol=1e-5, atol=1e-6)
    assert resp.shape == mask.shape
