"""A few supervised steps that teach a tiny random model the answer format.

A randomly initialised model never writes ``\\boxed{...}``, so every rollout scores 0, every
GRPO advantage is 0 and an RL smoke run would update nothing. A short teacher-forced warm start
on ``"\\boxed{<answer>}"`` completions teaches the format; the numbers stay mostly guesses, so
rollouts get a mix of rewards 0.0 / 0.1 / 1.0 and the RL step has real signal.
"""

from __future__ import annotations

from typing import Any

import torch


def _sft_batch(processor: Any, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    tokenizer = processor.tokenizer
    texts, images, answer_lengths = [], [], []
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in rows:
        text = row["prompt"][0]["content"]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        answer = f"\\boxed{{{row['answer']}}}"
        texts.append(prompt + answer + "<|im_end|>")
        images.extend(row["images"])
        answer_lengths.append(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1)
    batch = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], -100)
    for i, n in enumerate(answer_lengths):
        labels[i, -n:] = batch["input_ids"][i, -n:]
    assert bool((labels[:, -1] == end).all()), "the SFT target must end with <|im_end|>"
    batch["labels"] = labels
    return dict(batch)


def warm_start(
    model: torch.nn.Module,
    processor: Any,
    dataset: Any,
    steps: int = 60,
    batch_size: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Teacher-forced SFT on ``\\boxed{answer}`` for ``steps`` steps; returns the loss per step.

    ``dataset`` is the conversational layout of ``cepo.data.to_conversational`` (``prompt``,
    ``images``, ``answer``). ``progress`` shows a tqdm bar (on stderr) with the current loss.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="warm start", unit="step", disable=not progress)
    for _ in bar:
        index = torch.randint(0, len(dataset), (batch_size,), generator=gen).tolist()
        batch = _sft_batch(processor, [dataset[i] for i in index])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    return losses
