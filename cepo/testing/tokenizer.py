"""A tiny, locally trained, Qwen-style byte-level BPE tokenizer for offline tests.

The tokenizer is trained with the ``tokenizers`` library on a small corpus of English math/geometry text that
is generated deterministically inside this module, so no file or network access is needed.  It carries the
Qwen special tokens with Qwen's exact strings (``<|im_start|>``, ``<|image_pad|>``, ...) and a ChatML chat
template of our own (:data:`CHAT_TEMPLATE`), so code written against a real Qwen2.5-VL / Qwen3-VL tokenizer
behaves the same way against it, while a model built on it stays tiny (``len(tokenizer)`` is about 1.5k).

The normalizer / pre-tokenizer / decoder pipeline matches the one ``transformers.Qwen2Tokenizer`` builds
(NFC, the Qwen split regex with single digits, byte-level), so the saved tokenizer encodes identically whether
``AutoTokenizer`` reloads it as ``TokenizersBackend`` or as ``Qwen2Tokenizer``.
"""

from __future__ import annotations

import functools
import itertools
import random
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE",
    "ENDOFTEXT",
    "IMAGE_PAD",
    "IM_END",
    "IM_START",
    "QWEN_SPECIAL_TOKENS",
    "VIDEO_PAD",
    "VISION_END",
    "VISION_PAD",
    "VISION_START",
    "build_qwen_tokenizer",
    "training_corpus",
]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

#: Special tokens, in the same relative order as in Qwen's vocabulary; they get the ids right after the BPE
#: vocabulary (``<|endoftext|>`` first), like Qwen's added tokens.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    VISION_PAD,
    IMAGE_PAD,
    VIDEO_PAD,
)

#: Number of entries of the trained BPE vocabulary (256 byte symbols + merges), before the special tokens.
BPE_VOCAB_SIZE = 1500

# Same split rule as Qwen2's tokenizer: contractions, letter runs, single digits, punctuation runs, whitespace.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

#: ChatML chat template (written for this project).  ``content`` is a string or a list of items:
#: ``{"type": "text", "text": ...}``, ``{"type": "image"}`` / ``{"type": "image", "image": ...}`` (rendered as
#: ``<|vision_start|><|image_pad|><|vision_end|>``) and ``{"type": "video", ...}`` (rendered as a bare
#: ``<|video_pad|>``: transformers 5.x' ``Qwen3VLProcessor`` replaces that token with per-frame
#: ``<t seconds><|vision_start|><|video_pad|>...<|vision_end|>`` groups itself, so wrapping it would nest the
#: vision markers).  Each message renders as ``<|im_start|>{role}\n{content}<|im_end|>\n``; no default system
#: message is inserted; ``add_generation_prompt`` appends ``<|im_start|>assistant\n`` and, with the chat-template
#: variable ``enable_thinking=False`` (as Qwen3's template), an empty ``<think>\n\n</think>\n\n`` block.
CHAT_TEMPLATE = (
    "{%- macro render_content(content) -%}"
    "{%- if content is string -%}"
    "{{- content -}}"
    "{%- elif content is iterable -%}"
    "{%- for part in content -%}"
    "{%- if part is string -%}"
    "{{- part -}}"
    "{%- elif part.type == 'image' or part.type == 'image_url' or (part.type is not defined and 'image' in part) -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part.type == 'video' or (part.type is not defined and 'video' in part) -%}"
    "{{- '<|video_pad|>' -}}"
    "{%- elif part.text is defined -%}"
    "{{- part.text -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message.role + '\\n' -}}"
    "{%- if message.content is defined and message.content is not none -%}"
    "{{- render_content(message.content) -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

_WORD_TEXT = (
    "the a an of to in is are and or for with from by on at as be this that these it its we let find "
    "solve step steps answer final therefore thus so since because given if then use using compute "
    "calculate determine show prove value values length lengths measure measures area perimeter "
    "volume side sides leg legs hypotenuse base height width radius diameter circumference circle "
    "circles triangle triangles right acute obtuse isosceles equilateral scalene angle angles degree "
    "degrees rectangle square squares parallelogram rhombus trapezoid polygon pentagon hexagon "
    "quadrilateral vertex vertices edge edges diagonal diagonals line lines segment segments ray point "
    "points midpoint bisector perpendicular parallel tangent chord arc sector inscribed central "
    "opposite adjacent complementary supplementary vertical congruent similar ratio proportion scale "
    "figure shown below above label labeled round nearest tenth hundredth whole number integer "
    "integers equation equations expression variable variables unknown sum difference product "
    "quotient twice half third quarter total each other one two three four five six seven eight nine "
    "ten hundred theorem pythagorean formula law sine cosine tangent trigonometry sin cos tan "
    "coordinate coordinates plane axis slope distance units unit cm meters inches feet "
    "x y z a b c h r theta pi equals equal greater less than not what which how many much "
    "substitute simplify multiply divide add subtract square root both sides gives get have has "
    "first second next last now then check correct so the answer is think reasoning image picture "
    "diagram problem question solution assume note recall know known need must can will would "
    "user assistant system you are helpful careful tutor please reason put your within"
)
_WORDS = tuple(dict.fromkeys(_WORD_TEXT.split()))

_LATEX = (
    r"\boxed{{{a}}}",
    r"\frac{{{a}}}{{{b}}}",
    r"\sqrt{{{a}}}",
    r"{a}\sqrt{{{b}}}",
    r"x^2 + {a}x + {b} = 0",
    r"{a}^2 + {b}^2 = c^2",
    r"\angle ABC = {a}^\circ",
    r"m\angle {a} = {b}",
    r"\triangle ABC",
    r"\pi r^2",
    r"2\pi r",
    r"\cdot",
    r"\times",
    r"\left( {a} \right)",
    r"\sin({a}^\circ)",
    r"\cos \theta = \frac{{{a}}}{{{b}}}",
    r"\tan x",
    r"$x = {a}$",
    r"$y = {a}x + {b}$",
    r"\overline{{AB}} = {a}",
    r"\approx {a}.{b}",
    r"\le {a}",
    r"\ge {b}",
    r"\neq {a}",
)

_SENTENCES = (
    "Find x.",
    "Find y.",
    "Find the area of the triangle.",
    "Find the perimeter of the rectangle.",
    "Find the length of the hypotenuse.",
    "Find the measure of the angle.",
    "Solve for x.",
    "Round to the nearest tenth.",
    "Let's think step by step.",
    "Step {a}: Use the Pythagorean theorem.",
    "The legs are {a} and {b}, so the hypotenuse is {c}.",
    "The area is {a} times {b} divided by 2, which is {c}.",
    "The perimeter is 2 times ({a} + {b}) = {c}.",
    "Therefore, the answer is \\boxed{{{c}}}.",
    "The final answer is {c}.",
    "In the figure shown, the triangle has sides {a}, {b} and {c}.",
    "The angle measures {a} degrees.",
    "Since the angles of a triangle sum to 180, x = {c}.",
    "A rectangle has width {a} and height {b}.",
    "Substitute {a} for x in the equation.",
    "<image>Find x.",
    "<image>Find the area of the figure.",
    "<think>\nThe triangle is right, so use a^2 + b^2 = c^2.\n</think>\nThe answer is {c}.",
)


@functools.lru_cache(maxsize=1)
def training_corpus() -> tuple[str, ...]:
    """Return the deterministic English math/geometry corpus the tokenizer is trained on (~4k lines)."""
    rng = random.Random(1234)
    lines: list[str] = []
    for _ in range(1500):
        a, b = rng.randint(0, 99), rng.randint(1, 99)
        c = a + b
        lines.append(rng.choice(_SENTENCES).format(a=a, b=b, c=c))
        lines.append(rng.choice(_LATEX).format(a=a, b=b))
    for _ in range(1200):
        words = rng.sample(_WORDS, k=rng.randint(4, 12))
        text = " ".join(words)
        lines.append(text[0].upper() + text[1:] + rng.choice((".", "?", ",", ":", ";")))
    # ChatML role headers as they appear right after ``<|im_start|>``.
    lines.extend(
        f"{role}\n{rng.choice(_SENTENCES).format(a=1, b=2, c=3)}"
        for role in ("system", "user", "assistant")
        for _ in range(20)
    )
    # Every word, capitalised and not, a few times, so each gets merged into a single token if possible.
    for word, cap in itertools.product(_WORDS, (False, True)):
        lines.append(" ".join([word.capitalize() if cap else word] * 3))
    return tuple(lines)


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the BPE once and return its ``tokenizer.json`` serialization (special tokens included)."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return tok.to_str()


def build_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Build the tiny Qwen-style tokenizer.

    Training happens once per process (cached); every call returns a *new*, independent tokenizer object, so
    callers may freely change e.g. ``padding_side`` or add tokens.

    Special tokens: ``pad_token = <|endoftext|>``, ``eos_token = <|im_end|>``, no BOS, no UNK (byte-level BPE
    never needs one).  ``padding_side`` is left at the default (right).  The chat template is
    :data:`CHAT_TEMPLATE`.  Like Qwen's, it has no ``image_token`` attribute: Qwen's processors then fall back
    to the literal ``<|image_pad|>`` / ``<|video_pad|>`` / ``<|vision_start|>`` / ``<|vision_end|>`` strings.
    """
    return wrap_backend(Tokenizer.from_str(_tokenizer_json()), CHAT_TEMPLATE)


def wrap_backend(backend: Tokenizer, chat_template: str, **extra: Any) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over ``backend`` with the Qwen special-token roles (``eos = <|im_end|>``,
    ``pad = <|endoftext|>``, no BOS / UNK, the other Qwen tokens as extra special tokens) and ``chat_template``;
    ``extra`` adds constructor arguments (e.g. a family's ``model_specific_special_tokens``)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in (IM_END, ENDOFTEXT)],
        chat_template=chat_template,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        **extra,
    )
