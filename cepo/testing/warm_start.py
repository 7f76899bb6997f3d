"""A few supervised steps that teach a tiny random model the answer format.

A randomly initialised model never writes ``\\boxed{...}``, so every rollout scores 0, every
GRPO advantage is 0 and an RL smoke run would update nothing. A short teacher-forced warm start
on ``"\\boxed{<answer>}"`` completions teaches the format; the numbers stay mostly guesses, so
rollouts get a mix of rewards 0.0 / 0.1 / 1.0 and the RL step has real signal.
"""

from __future__ import annotations

from typing import Any

import torch


def _sft_batch(
    processor: Any, rows: list[dict[str, Any]], chat_template_kwargs: dict[str, Any] | None = None
) -> dict[str, torch.Tensor]:
    """Left-padded prompts + ``\\boxed{answer}<|im_end|>`` targets (labels -100 elsewhere). ``processor`` is a
    vision-language processor for rows with ``images``, or a tokenizer for text rows (no ``images`` column)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    texts, images, answer_lengths = [], [], []
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in rows:
        text = row["prompt"][0]["content"]
        content: Any = [{"type": "image"}, {"type": "text", "text": text}] if "images" in row else text
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False, **(chat_template_kwargs or {}))
        answer = f"\\boxed{{{row['answer']}}}"
        texts.append(prompt + answer + "<|im_end|>")
        images.extend(row.get("images") or [])
        answer_lengths.append(len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1)
    if images:
        batch = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    else:
        batch = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
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
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[float]:
    """Teacher-forced SFT on ``\\boxed{answer}`` for ``steps`` steps; returns the loss per step.

    ``dataset`` is the conversational layout of ``cepo.data.to_conversational`` (``prompt``,
    ``images``, ``answer``), or the same without ``images`` for a text model (``processor`` is then its
    tokenizer). ``chat_template_kwargs`` are the chat-template variables the RL run renders prompts with (e.g.
    ``enable_thinking``). ``progress`` shows a tqdm bar (on stderr) with the current loss.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="warm start", unit="step", disable=not progress)
    for _ in bar:
        index = torch.randint(0, len(dataset), (batch_size,), generator=gen).tolist()
        batch = _sft_batch(processor, [dataset[i] for i in index], chat_template_kwargs)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    return losses
