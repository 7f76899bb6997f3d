"""Two real TRL processes (``accelerate launch``, gloo on 127.0.0.1) training CEPO on a group that spans both:
r- crosses processes, both processes run the same number of forward chunks, and the token advantages equal a
single-process computation (``cepo.teacher`` + ``cepo.algorithms``) on the same rollouts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from cepo.algorithms import CreditInputs, compute_token_advantages, group_advantages, negative_hints
from cepo.rewards import extract_answer
from cepo.teacher import STUDENT_TEMPLATE, build_teacher_inputs, teacher_logprobs

WORKER = Path(__file__).with_name("_two_process_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_share_a_group(smoke_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    command = [
        # --multi_gpu selects accelerate's torchrun launcher; with use_cpu=True the processes form a gloo group
        # (accelerate's --cpu alone starts a single process unless an MPI hostfile is given)
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(_free_port()), str(WORKER), str(smoke_model), str(tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    dumps = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    assert [d["rank"] for d in dumps] == [0, 1]

    # one group of 4 rollouts, rows 0-1 on rank 0 and rows 2-3 on rank 1, every process sees all rewards
    rewards = dumps[0]["rewards_per_func"][:, 0]
    torch.testing.assert_close(rewards, dumps[1]["rewards_per_func"][:, 0], equal_nan=True)
    torch.testing.assert_close(rewards[:3], torch.tensor([1.0, 1.0, 0.1]))
    assert torch.isnan(rewards[3])
    assert dumps[0]["answers"] == dumps[1]["answers"] and len(set(dumps[0]["answers"])) == 1

    # r- of rank 0's rows is the answer of the rejected rollout that lives on rank 1
    wrong = extract_answer(dumps[1]["completions"][0])
    assert wrong is not None, f"rank 1's rejected rollout has no boxed answer: {dumps[1]['completions'][0]!r}"
    assert [c["hint"] for c in dumps[0]["teacher_calls"] if c["kind"] == "neg"] == [wrong, wrong]
    assert [c["row"] for c in dumps[1]["teacher_calls"]] == [0, 0]  # rank 1: r+ and r- of row 0 (row 1 is A = 0)

    # different numbers of teacher rows (4 vs 2), the same padded call on both ranks: equal forward chunks
    assert [e["rows"] for e in dumps[0]["forward_log"]] == [4]
    assert [e["rows"] for e in dumps[1]["forward_log"]] == [2]
    shape = [[(e["kind"], e["padded_rows"], e["chunks"]) for e in d["forward_log"]] for d in dumps]
    assert shape[0] == shape[1] == [("teacher", 4, 2)]

    # the token advantages equal one single-process computation over the whole group (initial weights: the
    # first generation round precedes every optimizer step)
    model = AutoModelForImageTextToText.from_pretrained(smoke_model).eval()
    processor = AutoProcessor.from_pretrained(smoke_model)
    group = [0, 0, 0, 0]
    advantages = group_advantages(rewards, group, skip_nan=True)
    answers = [extract_answer(text) for d in dumps for text in d["completions"]]
    neg, has_neg = negative_hints(answers, rewards, group)
    assert has_neg == [True] * 4 and advantages[3] == 0 and bool((advantages[:3] != 0).all())
    for rank, dump in enumerate(dumps):
        rows = slice(2 * rank, 2 * rank + 2)
        ids, mask, prompts, images = dump["completion_ids"], dump["completion_mask"], dump["prompts"], dump["images"]

        def score(hints: list[str], template: str | None = None, prompts=prompts, images=images, ids=ids, mask=mask):
            extra = {"template": template} if template else {}
            return teacher_logprobs(model, build_teacher_inputs(processor, prompts, hints, ids, mask, images, **extra))

        credit = CreditInputs(
            advantages=advantages[rows], response_mask=mask, lam=0.5, eps_w=0.5,
            logp_student=score(["", ""], STUDENT_TEMPLATE), logp_pos=score(dump["answers"]),
            logp_neg=score(list(neg[rows])), has_negative=torch.tensor(has_neg[rows]),
        )
        expected, _ = compute_token_advantages("cepo", credit)
        torch.testing.assert_close(dump["advantages"], expected, rtol=1e-4, atol=1e-5)
