"""Sampling responses with the paper's settings: Hugging Face ``generate`` (any device) or vLLM (GPU, when installed).

Hugging Face ``generate`` has no presence penalty, and applies custom logits processors *after* its own
temperature / top-k / top-p warpers. To sample as vLLM does (penalties, then temperature, then top-k, then top-p)
:func:`hf_generate` turns the built-in warpers off and passes its own chain:
:class:`PresencePenaltyLogitsProcessor` (vLLM's ``presence_penalty``: subtract the penalty from the logit of every
token that already occurs in the *generated* text, once per token), then temperature, top-k and top-p. So the HF
path here honours every setting of :class:`~cepo.evaluation.benchmarks.SamplingSettings`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cepo.evaluation.benchmarks import SamplingSettings

Message = dict[str, Any]


class PresencePenaltyLogitsProcessor:
    """vLLM/OpenAI presence penalty: ``logits[v] -= penalty`` for every token ``v`` already generated (prompt tokens
    do not count). A ``transformers`` logits processor (``__call__(input_ids, scores) -> scores``)."""

    def __init__(self, penalty: float, prompt_length: int) -> None:
        self.penalty = float(penalty)
        self.prompt_length = int(prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0 or self.penalty == 0:
            return scores
        present = torch.zeros_like(scores, dtype=torch.bool)
        present.scatter_(1, generated.clamp(max=scores.shape[1] - 1), True)
        return scores - self.penalty * present.to(scores.dtype)


def sampling_processors(sampling: SamplingSettings, prompt_length: int) -> list[Any]:
    """The logits-processor chain of :func:`hf_generate`: presence penalty, temperature, top-k, top-p (vLLM's order);
    the temperature and the filters only when sampling (``temperature > 0``)."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    chain: list[Any] = []
    if sampling.presence_penalty:
        chain.append(PresencePenaltyLogitsProcessor(sampling.presence_penalty, prompt_length))
    if sampling.temperature > 0:
        if sampling.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k > 0:
            chain.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            chain.append(TopPLogitsWarper(sampling.top_p))
    return chain


@dataclass
class Generated:
    """One sampled response: its token ids (up to and including the end-of-turn token) and its text."""

    token_ids: list[int]
    text: str


def _is_processor(processing_class: Any) -> bool:
    return getattr(processing_class, "image_processor", None) is not None


def tokenizer_of(processing_class: Any) -> Any:
    return getattr(processing_class, "tokenizer", processing_class)


def encode_prompts(
    processing_class: Any, conversations: Sequence[Sequence[Message]], images: Sequence[Sequence[Any]] | None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for ``conversations`` (chat template + generation prompt), images included;
    ``chat_template_kwargs`` are extra chat-template variables (Qwen3's ``enable_thinking``)."""
    tokenizer = tokenizer_of(processing_class)
    texts = [processing_class.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False,
                                                  **(chat_template_kwargs or {}))
             for c in conversations]
    if _is_processor(processing_class):
        rows = [list(r) for r in images] if images is not None else [[] for _ in texts]
        flat = [img for r in rows for img in r]
        return dict(processing_class(text=texts, images=flat or None, padding=True, padding_side="left",
                                     return_tensors="pt"))
    if images is not None and any(images):
        raise ValueError("this model has a tokenizer, not an image processor: it cannot take the rows' images")
    return dict(tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt"))


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, list | tuple) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return {int(i) for i in ids}


def hf_generate(
    model: Any,
    processing_class: Any,
    conversations: Sequence[Sequence[Message]],
    images: Sequence[Sequence[Any]] | None,
    sampling: SamplingSettings,
    context: int | None = None,
    seed: int | None = 0,
    batch_size: int = 8,
    warn: Any = None,
    progress: bool = False,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[Generated]:
    """Sample one response per conversation with ``model.generate`` and the chain of :func:`sampling_processors`;
    ``progress`` shows a progress bar (responses done) on stderr.

    ``context`` (the model's maximum length) caps the new tokens per batch at ``context - prompt width``, with one
    warning through ``warn`` (default: a line on stderr)."""
    from transformers import LogitsProcessorList

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    tokenizer = tokenizer_of(processing_class)
    device = next(model.parameters()).device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    if seed is not None:
        torch.manual_seed(seed)
    out: list[Generated] = []
    warned = False
    from tqdm.auto import tqdm

    bar = tqdm(total=len(conversations), desc="generating", unit="response", disable=not progress, file=sys.stderr)
    for start in range(0, len(conversations), max(1, batch_size)):
        stop = min(len(conversations), start + max(1, batch_size))
        batch = encode_prompts(processing_class, conversations[start:stop],
                               images[start:stop] if images is not None else None, chat_template_kwargs)
        width = int(batch["input_ids"].shape[1])
        new_tokens = sampling.max_new_tokens
        if context is not None and width + new_tokens > context:
            new_tokens = context - width
            if new_tokens <= 0:
                raise ValueError(f"the prompt is {width} tokens, the model's whole context ({context})")
            if not warned:
                warn(f"max_new_tokens={sampling.max_new_tokens} does not fit the model's context of {context} tokens "
                     f"after a {width}-token prompt; generating at most {new_tokens}")
                warned = True
        kwargs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        if sampling.temperature > 0:  # the built-in warpers off: ours run in vLLM's order
            kwargs.update(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False)
        with torch.no_grad():
            ids = model.generate(
                **kwargs,
                max_new_tokens=new_tokens,
                logits_processor=LogitsProcessorList(sampling_processors(sampling, width)),
                pad_token_id=pad,
            )
        for row in ids[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            tokens = row[:cut]
            out.append(Generated(tokens, tokenizer.decode(tokens, skip_special_tokens=True)))
        bar.update(stop - start)
    bar.close()
    return out


def vllm_available() -> bool:
    """Whether vLLM is importable and a CUDA device is present."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_generate(
    model_path: str,
    processing_class: Any,
    conversations: Sequence[Sequence[Message]],
    images: Sequence[Sequence[Any]] | None,
    sampling: SamplingSettings,
    seed: int | None = 0,
    max_model_len: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> list[Generated]:
    """Sample with vLLM's offline ``LLM.generate`` (prompts rendered with the model's chat template, images as
    ``multi_modal_data``). Not exercised by the CPU test suite (no vLLM there)."""
    from vllm import LLM, SamplingParams

    tokenizer = tokenizer_of(processing_class)
    rows = [list(r) for r in images] if images is not None else [[] for _ in conversations]
    most = max((len(r) for r in rows), default=0)
    llm_kwargs: dict[str, Any] = {"model": model_path, "seed": 0 if seed is None else seed}
    if most:
        llm_kwargs["limit_mm_per_prompt"] = {"image": most}
    if max_model_len:
        llm_kwargs["max_model_len"] = max_model_len
    llm = LLM(**llm_kwargs)
    params: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p,
                              "presence_penalty": sampling.presence_penalty, "max_tokens": sampling.max_new_tokens}
    if sampling.top_k > 0:
        params["top_k"] = sampling.top_k
    prompts = []
    for conv, imgs in zip(conversations, rows, strict=True):
        text = processing_class.apply_chat_template(list(conv), add_generation_prompt=True, tokenize=False,
                                                    **(chat_template_kwargs or {}))
        prompt: dict[str, Any] = {"prompt": text}
        if imgs:
            prompt["multi_modal_data"] = {"image": imgs if len(imgs) > 1 else imgs[0]}
        prompts.append(prompt)
    outputs = llm.generate(prompts, SamplingParams(**params))
    result = []
    for o in outputs:
        ids = list(o.outputs[0].token_ids)
        result.append(Generated(ids, o.outputs[0].text if o.outputs[0].text is not None else tokenizer.decode(ids)))
    return result
