"""Token credit of RLSD and CEPO on one response, side by side (paper Fig. 5): numbers, HTML and PNG.

One response ``y`` to a problem ``x`` is scored three times with the same weights, exactly as training does
(``cepo.teacher.build_teacher_inputs`` + ``cepo.teacher.teacher_logprobs``; the student pass is the teacher
builder with an empty hint and ``STUDENT_TEMPLATE``, which renders the student prompt unchanged):

* ``P_S(y_t)``: no hint; ``P_T+(y_t)``: hint r+ (the ground-truth answer); ``P_T-(y_t)``: hint r- (a wrong answer).

The weights are ``cepo.algorithms``' own: ``w_t = exp(sign(A) * D_t)`` (``evidence_weights``, Eq. 7) with the RLSD
delta ``D_t = log P_T+ - log P_S`` (``rlsd_delta``, Eq. 4) and the CEPO delta ``D_t = log P_T+ - log P_T-``
(``contrastive_delta``, Eq. 5). ``sign(A)`` is the sign of the response's advantage: + for a response the verifier
grades correct, - for a wrong one (in training it is the sign of the reward minus its group's mean), or given.
Each method's clip rate is ``credit_metrics``' ``clip_rate``: the fraction of tokens whose weight lies outside
``[1 - eps_w, 1 + eps_w]`` (Fig. 5 reports 71.3 % for RLSD and 49.5 % for CEPO on its example).

Colours follow Fig. 5: green above 1, red below 1, white at 1, the intensity proportional to the clipped weight's
distance from 1 (full colour at the clip bound).
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cepo.algorithms import contrastive_delta, credit_metrics, evidence_weights, modulate_advantages, rlsd_delta
from cepo.teacher import (
    DEFAULT_TEACHER_TEMPLATE,
    STUDENT_TEMPLATE,
    build_teacher_inputs,
    teacher_logprobs,
    tokenizer_of,
)

METHODS = ("RLSD", "CEPO")
GREEN = (26, 152, 80)
RED = (215, 48, 39)


@dataclass
class CreditMap:
    """Per-token numbers of one response (``rows``) and the clip rate of each method."""

    token_ids: list[int]
    tokens: list[str]
    logp_student: list[float]
    logp_pos: list[float]
    logp_neg: list[float]
    w_rlsd: list[float]
    w_cepo: list[float]
    eps_w: float
    advantage_sign: int
    clip_rate: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """``{"token", "id", "P_S", "P_T+", "P_T-", "w_RLSD", "w_CEPO"}`` per response token (probabilities, and
        the unclipped weights of Eq. 7)."""
        return [
            {"token": tok, "id": tid, "P_S": math.exp(s), "P_T+": math.exp(p), "P_T-": math.exp(n),
             "w_RLSD": wr, "w_CEPO": wc}
            for tok, tid, s, p, n, wr, wc in zip(self.tokens, self.token_ids, self.logp_student, self.logp_pos,
                                                 self.logp_neg, self.w_rlsd, self.w_cepo, strict=True)
        ]

    def as_dict(self) -> dict[str, Any]:
        return {**self.meta, "eps_w": self.eps_w, "advantage_sign": self.advantage_sign,
                "clip_rate": dict(self.clip_rate), "tokens": self.rows()}

    def weights(self, method: str) -> list[float]:
        return self.w_rlsd if method == "RLSD" else self.w_cepo


def _check_fits(inputs: Any, context: int | None, what: str) -> None:
    if context is None:
        return
    total = int(inputs.input_ids.shape[1])
    if total > context:
        raise ValueError(
            f"the response ({inputs.response_length} tokens) after the {what} prompt ({inputs.prompt_length} tokens) "
            f"is {total} tokens, longer than the model's context of {context}; shorten the response"
        )


def compute_credit_map(
    model: torch.nn.Module,
    processing_class: Any,
    messages: Sequence[Mapping[str, Any]],
    response_ids: Sequence[int],
    ground_truth: str,
    wrong_answer: str,
    *,
    images: Sequence[Any] | None = None,
    advantage_sign: int = 1,
    eps_w: float = 0.5,
    template: str = DEFAULT_TEACHER_TEMPLATE,
    teacher_sees_image: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    context: int | None = None,
) -> CreditMap:
    """Score ``response_ids`` under the student, r+ and r- contexts and compute both methods' token weights.

    Args:
        model, processing_class: the policy (it is also the teacher) and its processor or tokenizer.
        messages: the student's conversation (prompt only), with ``{"type": "image"}`` items for ``images``.
        response_ids: the response tokens, as sampled (no padding).
        ground_truth, wrong_answer: the hints r+ and r-.
        advantage_sign: +1 or -1, ``sign(A)`` of the response.
        eps_w: clip half-width (``cepo.eps_w``), for the clip rates and the colours.
        template, teacher_sees_image, chat_template_kwargs, temperature: as in training (``cepo.teacher_template``,
            ``cepo.teacher_sees_image``, the chat-template variables of the student prompt, the rollout temperature).
        context: the model's maximum length; a longer teacher/student row raises ``ValueError``.
    """
    if advantage_sign not in (1, -1):
        raise ValueError(f"advantage_sign must be +1 or -1, got {advantage_sign}")
    if not 0 < eps_w < 1:
        raise ValueError(f"eps_w must be in (0, 1), got {eps_w}")
    ids = torch.tensor([list(response_ids)], dtype=torch.long)
    if ids.shape[1] == 0:
        raise ValueError("the response is empty")
    mask = torch.ones_like(ids)
    row_images = [list(images or [])]
    common = {"images": row_images, "chat_template_kwargs": chat_template_kwargs}
    student = build_teacher_inputs(processing_class, [list(messages)], [""], ids, mask, template=STUDENT_TEMPLATE,
                                   include_image=True, **common)
    pos = build_teacher_inputs(processing_class, [list(messages)], [str(ground_truth)], ids, mask, template=template,
                               include_image=teacher_sees_image, **common)
    neg = build_teacher_inputs(processing_class, [list(messages)], [str(wrong_answer)], ids, mask, template=template,
                               include_image=teacher_sees_image, **common)
    for inputs, what in ((student, "student"), (pos, "r+ teacher"), (neg, "r- teacher")):
        _check_fits(inputs, context, what)
    logp_s = teacher_logprobs(model, student, temperature=temperature).cpu()
    logp_pos = teacher_logprobs(model, pos, temperature=temperature).cpu()
    logp_neg = teacher_logprobs(model, neg, temperature=temperature).cpu()
    adv = torch.tensor([float(advantage_sign)])
    deltas = {
        "RLSD": rlsd_delta(logp_pos, logp_s, mask),
        "CEPO": contrastive_delta(logp_pos, logp_neg, logp_s, torch.tensor([True]), mask),
    }
    weights = {name: evidence_weights(adv, delta) for name, delta in deltas.items()}
    clip_rate = {
        name: credit_metrics(adv, delta, mask, modulate_advantages(adv, delta, mask, lam=1.0, eps_w=eps_w),
                             eps_w)["clip_rate"]
        for name, delta in deltas.items()
    }
    tokenizer = tokenizer_of(processing_class)
    token_ids = ids[0].tolist()
    return CreditMap(
        token_ids=token_ids,
        tokens=[tokenizer.decode([t]) for t in token_ids],
        logp_student=logp_s[0].tolist(),
        logp_pos=logp_pos[0].tolist(),
        logp_neg=logp_neg[0].tolist(),
        w_rlsd=weights["RLSD"][0].tolist(),
        w_cepo=weights["CEPO"][0].tolist(),
        eps_w=float(eps_w),
        advantage_sign=int(advantage_sign),
        clip_rate=clip_rate,
    )


# -- colours ----------------------------------------------------------------------------------------------------
def weight_colour(weight: float, eps_w: float) -> tuple[int, int, int]:
    """RGB of a token weight: white at 1, green above, red below, full colour at the clip bound ``1 +- eps_w``."""
    clipped = min(max(weight, 1.0 - eps_w), 1.0 + eps_w)
    t = (clipped - 1.0) / eps_w
    target = GREEN if t > 0 else RED
    a = abs(t)
    return tuple(round(255 + (c - 255) * a) for c in target)  # type: ignore[return-value]


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _display(token: str) -> str:
    return token.replace("\n", "⏎\n").replace("\t", "⇥")


# -- HTML -------------------------------------------------------------------------------------------------------
def render_html(cmap: CreditMap, title: str = "Token credit: RLSD vs CEPO") -> str:
    """A self-contained HTML page (inline CSS, no scripts or external files): both methods' panels, each token
    coloured by its weight, its numbers in a tooltip."""
    meta = cmap.meta
    esc = html.escape
    sign = "+" if cmap.advantage_sign > 0 else "−"
    info = []
    for key, name in (("model", "model"), ("problem", "problem"), ("answer", "r+ (ground truth)"),
                      ("wrong_answer", "r− (wrong answer)")):
        if meta.get(key) is not None:
            info.append(f"<tr><th>{esc(name)}</th><td>{esc(str(meta[key]))}</td></tr>")
    correct = meta.get("correct")
    verdict = "" if correct is None else (" (verifier: correct)" if correct else " (verifier: wrong)")
    info.append(f"<tr><th>sign(A)</th><td>{sign}{esc(verdict)}; ε_w = {cmap.eps_w:g}</td></tr>")
    panels = []
    formulas = {"RLSD": "w = exp(sign(A)·(log P<sub>T+</sub> − log P<sub>S</sub>))",
                "CEPO": "w = exp(sign(A)·(log P<sub>T+</sub> − log P<sub>T−</sub>))"}
    for method in METHODS:
        spans = []
        for row, w in zip(cmap.rows(), cmap.weights(method), strict=True):
            tip = (f"w={w:.3f} | P_S={row['P_S']:.3g} P_T+={row['P_T+']:.3g} P_T-={row['P_T-']:.3g} | "
                   f"id {row['id']}")
            spans.append(f'<span style="background:{_hex(weight_colour(w, cmap.eps_w))}" title="{esc(tip)}">'
                         f"{esc(_display(row['token']))}</span>")
        rate = 100.0 * cmap.clip_rate[method]
        panels.append(f'<section><h2>{method} <small>{formulas[method]} · clip rate {rate:.1f}%</small></h2>'
                      f'<div class="tokens">{"".join(spans)}</div></section>')
    legend = "".join(
        f'<span style="background:{_hex(weight_colour(w, cmap.eps_w))}">{w:.2f}</span>'
        for w in (1 - cmap.eps_w, 1 - cmap.eps_w / 2, 1.0, 1 + cmap.eps_w / 2, 1 + cmap.eps_w)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 70em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th {{ text-align: left; padding-right: 1em; vertical-align: top; }}
td {{ white-space: pre-wrap; }}
.tokens {{ font-family: monospace; white-space: pre-wrap; line-height: 1.9; border: 1px solid #ccc; padding: .6em; }}
.tokens span {{ border-radius: 2px; }}
.legend span {{ font-family: monospace; padding: 0 .6em; border: 1px solid #ccc; }}
h2 small {{ font-weight: normal; color: #555; font-size: 60%; }}
</style></head><body>
<h1>{esc(title)}</h1>
<table>{''.join(info)}</table>
<p class="legend">weight (clipped to [1 − ε_w, 1 + ε_w]): {legend} — green above 1, red below, white at 1</p>
{''.join(panels)}
</body></html>
"""


# -- PNG --------------------------------------------------------------------------------------------------------
def _layout(tokens: Sequence[str], width: int) -> list[tuple[int, int, int, str]]:
    """``(token index, line, column, text)`` of every piece of every token in a monospace grid ``width`` characters
    wide: a token wraps to the next line when it does not fit, ``\\n`` ends a line, a token longer than a line
    is split."""
    placed: list[tuple[int, int, int, str]] = []
    line, col = 0, 0
    for index, token in enumerate(tokens):
        for j, piece in enumerate(_display(token).split("\n")):
            if j > 0:
                line, col = line + 1, 0
            if col + len(piece) > width and col > 0:
                line, col = line + 1, 0
            while len(piece) > width:
                placed.append((index, line, 0, piece[:width]))
                piece = piece[width:]
                line += 1
            placed.append((index, line, col, piece))
            col += len(piece)
    return placed


def render_png(cmap: CreditMap, path: str | Path, width: int = 100, title: str | None = None) -> Path:
    """Both methods' panels as one PNG (matplotlib, Agg backend): tokens in a monospace grid coloured by weight,
    each panel titled with its clip rate, and a colour bar."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.patches import Rectangle

    pieces = _layout(cmap.tokens, width)
    lines = max((line for _, line, _, _ in pieces), default=0) + 1
    char_w, line_h, pad = 0.1, 0.24, 0.2  # inches: one grid character, one line, margins
    font = char_w * 72 / 0.602  # points: a monospace glyph advances 0.602 em (DejaVu Sans Mono)
    head, panel, bar_h = 0.4, lines * line_h + 0.1, 0.2
    top = 0.1 + (0.4 if title else 0.0)
    fig_w, fig_h = width * char_w + 2 * pad, top + 2 * (head + panel) + 0.2 + bar_h + 0.5
    fig = plt.figure(figsize=(fig_w, fig_h))
    y = fig_h - top
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs the font lacks
        for method in METHODS:
            y -= head + panel
            ax = fig.add_axes((pad / fig_w, y / fig_h, width * char_w / fig_w, panel / fig_h))
            ax.set_xlim(0, width)
            ax.set_ylim(lines + 0.2, -0.2)
            ax.axis("off")
            weights = cmap.weights(method)
            for index, line, col, text in pieces:
                if not text:
                    continue
                colour = [c / 255 for c in weight_colour(weights[index], cmap.eps_w)]
                ax.add_patch(Rectangle((col, line + 0.05), len(text), 0.9, facecolor=colour, edgecolor="none"))
                ax.text(col, line + 0.5, text, family="monospace", fontsize=font, va="center", ha="left")
            ax.set_title(f"{method}: clip rate {100 * cmap.clip_rate[method]:.1f}%  (ε_w = {cmap.eps_w:g}, "
                         f"sign(A) = {'+' if cmap.advantage_sign > 0 else '−'})", loc="left", fontsize=11)
    cm = LinearSegmentedColormap.from_list("credit", [[c / 255 for c in RED], (1, 1, 1), [c / 255 for c in GREEN]])
    sm = plt.cm.ScalarMappable(norm=Normalize(1 - cmap.eps_w, 1 + cmap.eps_w), cmap=cm)
    cax = fig.add_axes((pad / fig_w, 0.5 / fig_h, width * char_w / fig_w, bar_h / fig_h))
    bar = fig.colorbar(sm, cax=cax, orientation="horizontal")
    bar.set_label("token weight w (clipped to [1 − ε_w, 1 + ε_w])")
    if title:
        fig.text(pad / fig_w, (fig_h - 0.1) / fig_h, title, fontsize=12, ha="left", va="top")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(
    cmap: CreditMap, output_dir: str | Path, stem: str = "credit_map", title: str | None = None
) -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.html`` and ``<stem>.png`` in ``output_dir`` (``title`` heads the HTML and PNG)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "html": out / f"{stem}.html", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(cmap.as_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["html"].write_text(render_html(cmap, title or "Token credit: RLSD vs CEPO"), encoding="utf-8")
    render_png(cmap, paths["png"], title=title)
    return paths
