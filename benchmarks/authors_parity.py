"""Parity of cepo's OPSD and SDPO losses with the authors' own loss functions, run on the same inputs.

The authors' code is read at run time from checkouts the user passes; nothing of it is copied here.

* SDPO (lasgroup/SDPO, ``--sdpo-repo``): ``compute_self_distillation_loss`` and ``agg_loss`` from
  ``verl/trainer/ppo/core_algos.py`` and ``masked_sum`` from ``verl/utils/torch_functional.py`` (their verl fork).
* OPSD (siyan-zhao/OPSD, ``--opsd-repo``): the static method ``OPSDTrainer.generalized_jsd_loss`` from
  ``opsd_trainer.py``.

How they are loaded: both modules import heavy things (their verl fork; TRL, accelerate, vLLM), so the modules are
not imported. The file's text is read (``git --git-dir=REPO show HEAD:PATH`` when REPO is a bare git directory such as
the ``fetch`` tool's ``/work/.mirror/owner+name/repo``; ``REPO/PATH`` when it is a work tree), parsed with ``ast``,
and only the named ``def`` nodes are kept (for the OPSD one, the method inside ``class OPSDTrainer``, with its
``@staticmethod`` decorator dropped). Those nodes are compiled with ``from __future__ import annotations`` (so their
type hints are not evaluated) and executed in a namespace holding only ``torch``, ``torch.nn.functional as F``,
``Any``, ``Optional`` and, for SDPO, ``verl_F`` = a namespace whose ``masked_sum`` is their own ``masked_sum`` and
``agg_loss`` = their own ``agg_loss``. The JSON records the commit, the file, the line span and a sha256 of each
function's source.

What is not a function of theirs and is therefore restated here (each a line or two of torch):

* SDPO's top-k log-probs, as their ``dp_actor._forward_micro_batch`` forms them: ``logits / temperature``, the
  student's ``torch.topk`` ids, ``topk_logits - logsumexp(logits)`` for the student and the teacher gathered at the
  student's ids; the sampled tokens' log-probs (their ``logprobs_from_logits``) are ``log_softmax`` at the token.
* OPSD's labels: the sampled tokens with ``-100`` on padding (their collator's convention).

Configurations (float64 unless named ``f32``; every one over ``--seeds`` seeds, rows padded to random lengths):

* ``opsd_full``: OPSD's default (``run_opsd.sh``): the full-vocabulary generalized JSD, β = 0.5 (and 0, 0.1, 0.9, 1),
  temperature 1.1 (theirs) and 1.0. Ours: :func:`cepo.algorithms.logits_distillation_loss` (TRL path, ``topk=None``)
  and :func:`cepo.algorithms.packed_logits_distillation_loss` (verl path, packed rows).
* ``opsd_topk``: ``--top_k_loss 50`` (the teacher's top-50, renormalised). Ours: ``logits_distillation_loss``
  (``support="teacher"``, ``tail=False``), ``topk_distillation_loss`` (TRL's teacher-pass path) and the packed loss.
* ``sdpo_topk``: SDPO's ``sdpo.yaml``: α 0.5 (and 0, 0.3, 1) on the student's top-100 (+ tail bucket or
  renormalised), IS clip ``min(π/π_old, 2)`` active on a share of the tokens, rows without a demonstration masked
  (``self_distillation_mask``). Ours: ``logits_distillation_loss(support="student")`` with
  :func:`cepo.algorithms.importance_weight` and the packed (verl) loss.
* ``sdpo_full``: SDPO with ``distillation_topk: null`` (full-logit).
* ``sdpo_sampled_token``: SDPO's non-full-logit loss (α 1) ``sg(lS - lT)·lS``, on-policy: gradient only, against
  the PG surrogate ``-A·π/sg(π)`` with cepo's :func:`cepo.algorithms.sampled_token_advantage` (what an engine's PPO
  loss computes at ratio 1). The loss values differ by construction (a surrogate), so only the gradient is compared.
* ``sdpo_topk100+tail ... peaked``: logits 8x sharper, so the top-100 hold nearly all the mass and the tail
  bucket's clamp matters (theirs: ``log P_k <= -1e-7``; cepo: ``<= -finfo(dtype).eps``).
* ``*_norm`` rows (the normaliser over a window of micro-batches): SDPO's fork divides each micro-batch's sum by
  that micro-batch's own token count (``agg_loss(batch_num_tokens=loss_mask.sum())``) and scales it by
  1/gradient-accumulation, and its ``user.yaml`` sets ``ppo_micro_batch_size_per_gpu: 1``, so a mini-batch's loss is
  ``(1/N_rows) Σ_i (1/|o_i|) Σ_t ρ·D`` over all rows, rows without a demonstration adding 0 but counting in
  ``N_rows``. OPSD's ``run_opsd.sh`` has one sequence per device per call (``--per_device_train_batch_size 1``,
  ``generalized_jsd_loss``'s ``jsd.sum() / mask.sum()``), so its window is a mean of per-sequence token-means. cepo's
  ``cepo.distill.loss_agg`` (:func:`cepo.algorithms.loss_aggregation`) is run both ways, in micro-batches of 2 rows
  (``trl``) and as one packed mini-batch (``verl``): ``seq-mean-token-mean`` (the YAMLs' default) weights each token
  by ``1/|o_i|`` and divides by ``N_rows``, so it should agree to rounding; ``token-mean`` divides the window's
  masked sum by the window's token count of rows with a teacher (by design: per token ``1/Σ_j |o_j|``).

Usage::

    python benchmarks/authors_parity.py --sdpo-repo /work/.mirror/lasgroup+SDPO/repo \\
        --opsd-repo /work/.mirror/siyan-zhao+OPSD/repo            # ~1 min on 2 CPU cores

Writes ``benchmarks/results/authors_parity.json`` and prints one row per configuration: the max over seeds of
``|Δloss|``, ``|Δloss|/|loss|``, ``max|Δgrad|`` and ``max|Δgrad| / max|grad|`` (gradients w.r.t. the student
logits), the smallest cosine of the two gradients, the ratio of their norms furthest from 1 (``|g|o/t``: cepo's
over theirs) and the mean share of masked tokens whose IS ratio exceeds the clip (``clip%``).
"""

from __future__ import annotations
import __future__

import argparse
import ast
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cepo.algorithms import (
    LOSS_AGGS,
    importance_weight,
    logits_distillation_loss,
    loss_aggregation,
    packed_logits_distillation_loss,
    sampled_token_advantage,
    sampled_token_logps,
    topk_distillation_loss,
)

SDPO_CORE = "verl/trainer/ppo/core_algos.py"
SDPO_TORCH_FUNCTIONAL = "verl/utils/torch_functional.py"
OPSD_TRAINER = "opsd_trainer.py"
RESULTS = Path(__file__).resolve().parent / "results" / "authors_parity.json"
DIFFERENCES = [
    "tail bucket clamp: SDPO clamps log(top-k mass) at -1e-7, cepo at -finfo(dtype).eps (1.2e-7 in float32, 2.2e-16 "
    "in float64); visible only when the top-k hold more than 1 - 1e-7 of the mass (rows 'peaked'): |dloss| ~1e-7",
    "normaliser over a window: per micro-batch both compute the same masked token-mean, but SDPO's user.yaml runs one "
    "row per micro-batch and OPSD's run_opsd.sh one sequence per device, so their windows are means of per-sequence "
    "token-means (SDPO: rows without a demonstration add 0 and still count), cepo.distill.loss_agg="
    "seq-mean-token-mean (the opsd / sdpo YAMLs' default) and agrees to rounding; with loss_agg=token-mean cepo "
    "divides by the window's token count of rows with a teacher (rows '*_norm token-mean', by_design)",
    "IS ratio in SDPO's on-policy recipe (one mini-batch, one epoch): their dp_actor sets old_log_prob = "
    "log_prob.detach(), so min(pi/pi_old, 2) is exactly 1; cepo's verl path takes verl's recomputed old_log_probs "
    "(ratio 1 up to the recompute's numerical noise), its TRL path none on the first update (exactly 1)",
]


# --------------------------------------------------------------------------------------------------
# Loading the authors' functions
# --------------------------------------------------------------------------------------------------


def _is_git_dir(repo: Path) -> bool:
    return (repo / "HEAD").is_file() and (repo / "objects").is_dir()


def read_source(repo: Path, path: str) -> tuple[str, str]:
    """``(text, commit)`` of ``path`` at the checkout's HEAD: ``git show`` for a git directory, the file otherwise."""
    if _is_git_dir(repo):
        git = ["git", f"--git-dir={repo}"]
        text = subprocess.run([*git, "show", f"HEAD:{path}"], check=True, capture_output=True, text=True).stdout
        commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout
        return text, commit.strip()
    text = (repo / path).read_text()
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return text, done.stdout.strip() if done.returncode == 0 else "unknown (not a git checkout)"


def _find_def(tree: ast.Module, name: str, in_class: str | None) -> ast.FunctionDef:
    body = tree.body
    if in_class is not None:
        classes = [node for node in body if isinstance(node, ast.ClassDef) and node.name == in_class]
        if not classes:
            raise LookupError(f"class {in_class} not found")
        body = classes[0].body
    for node in body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise LookupError(f"def {name} not found" + (f" in class {in_class}" if in_class else ""))


def load_functions(repo: Path, path: str, names: list[tuple[str, str | None]],
                   namespace: dict[str, Any]) -> tuple[dict[str, Callable[..., Any]], list[dict[str, Any]]]:
    """Execute only the ``def`` nodes ``names`` ((function, enclosing class or None)) of ``repo``'s ``path`` in
    ``namespace``; returns the functions and, per function, where it came from (commit, path, lines, sha256)."""
    text, commit = read_source(repo, path)
    tree = ast.parse(text, filename=path)
    lines = text.splitlines()
    functions, provenance = {}, []
    for name, in_class in names:
        node = _find_def(tree, name, in_class)
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        source = "\n".join(lines[first - 1 : node.end_lineno])
        node.decorator_list = []  # @staticmethod (OPSD) is meaningless outside the class
        module = ast.Module(body=[node], type_ignores=[])
        code = compile(module, filename=f"{repo}:{path}", mode="exec", flags=__future__.annotations.compiler_flag,
                       dont_inherit=True)
        exec(code, namespace)
        functions[name] = namespace[name]
        provenance.append({"function": name if in_class is None else f"{in_class}.{name}", "path": path,
                           "commit": commit, "lines": [first, node.end_lineno],
                           "sha256": hashlib.sha256(source.encode()).hexdigest()})
    return functions, provenance


def load_sdpo(repo: Path) -> tuple[Callable[..., Any], list[dict[str, Any]]]:
    """SDPO's ``compute_self_distillation_loss`` (with their ``agg_loss`` and ``verl_F.masked_sum``)."""
    helpers: dict[str, Any] = {"torch": torch}
    masked, prov_masked = load_functions(repo, SDPO_TORCH_FUNCTIONAL, [("masked_sum", None)], helpers)
    namespace: dict[str, Any] = {"torch": torch, "F": F, "Any": Any, "Optional": Optional,
                                 "verl_F": SimpleNamespace(masked_sum=masked["masked_sum"])}
    fns, prov = load_functions(repo, SDPO_CORE, [("agg_loss", None), ("compute_self_distillation_loss", None)],
                               namespace)
    return fns["compute_self_distillation_loss"], prov_masked + prov


def load_opsd(repo: Path) -> tuple[Callable[..., Any], list[dict[str, Any]]]:
    """OPSD's ``OPSDTrainer.generalized_jsd_loss`` (a static method)."""
    namespace: dict[str, Any] = {"torch": torch, "F": F, "Any": Any, "Optional": Optional}
    fns, prov = load_functions(repo, OPSD_TRAINER, [("generalized_jsd_loss", "OPSDTrainer")], namespace)
    return fns["generalized_jsd_loss"], prov


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One micro-batch: student/teacher logits (B, T, V), sampled tokens (B, T), response mask (B, T), rows that
    have a teacher (B,), old log-probs of the sampled tokens (B, T)."""

    student: torch.Tensor
    teacher: torch.Tensor
    tokens: torch.Tensor
    response_mask: torch.Tensor
    has_teacher: torch.Tensor
    old_logp: torch.Tensor


def make_batch(seed: int, rows: int, length: int, vocab: int, dtype: torch.dtype, temperature: float,
               old_noise: float = 0.9, peak: float = 1.0, min_length: int = 1) -> Batch:
    """Random logits with a peaked head (so top-k matters), a teacher correlated with the student, rows padded to
    random lengths (>= min_length), about a quarter of the rows without a teacher (never all), tokens sampled from
    the student, and old log-probs = current ones + N(0, old_noise) so that ``π/π_old > 2`` on some tokens."""
    gen = torch.Generator().manual_seed(seed)
    scale = peak * (1.0 + 3.0 * torch.rand(rows, length, 1, generator=gen, dtype=torch.float64))
    student = torch.randn(rows, length, vocab, generator=gen, dtype=torch.float64) * scale
    teacher = student + 1.5 * peak * torch.randn(rows, length, vocab, generator=gen, dtype=torch.float64)
    lengths = torch.randint(min_length, length + 1, (rows,), generator=gen)
    lengths[0] = length  # one full row
    response_mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
    has_teacher = (torch.rand(rows, generator=gen) > 0.25).to(torch.int64)
    has_teacher[0] = 1
    probs = torch.softmax(student / temperature, dim=-1)
    tokens = torch.multinomial(probs.reshape(-1, vocab), 1, generator=gen).reshape(rows, length)
    current = torch.log_softmax(student / temperature, dim=-1).gather(-1, tokens[..., None])[..., 0]
    old_logp = current + old_noise * torch.randn(rows, length, generator=gen, dtype=torch.float64)
    return Batch(student.to(dtype), teacher.to(dtype), tokens, response_mask, has_teacher, old_logp.to(dtype))


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor) -> tuple[float, torch.Tensor]:
    leaf = _leaf(logits)
    loss = fn(leaf)
    loss.backward()
    return float(loss.detach()), leaf.grad.detach().clone()


def _pack(batch_logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """verl's remove-padding layout for :func:`packed_logits_distillation_loss`: every (row, position) of the student
    flattened to N, the teacher's rows stored in a shuffled order with 3 extra junk rows, and ``teacher_index``
    mapping each student position to its teacher row."""
    rows, length, vocab = batch_logits.shape
    n = rows * length
    gen = torch.Generator().manual_seed(seed + 7)
    perm = torch.randperm(n + 3, generator=gen)
    teacher_rows = torch.randn(n + 3, vocab, generator=gen, dtype=torch.float64).to(teacher.dtype) * 50.0
    teacher_rows[perm[:n]] = teacher.reshape(n, vocab)
    return {"teacher_rows": teacher_rows, "teacher_index": perm[:n], "mask": mask.reshape(n)}


# --------------------------------------------------------------------------------------------------
# The two sides
# --------------------------------------------------------------------------------------------------


def theirs_opsd(opsd_loss: Callable[..., Any], b: Batch, beta: float, temperature: float,
                top_k: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    labels = torch.where(b.response_mask.bool(), b.tokens, torch.full_like(b.tokens, -100))

    def fn(student: torch.Tensor) -> torch.Tensor:
        return opsd_loss(student_logits=student, teacher_logits=b.teacher.detach(), labels=labels, beta=beta,
                         temperature=temperature, top_k=top_k)

    return fn


def theirs_sdpo(sdpo_loss: Callable[..., Any], b: Batch, alpha: float, topk: int | None, tail: bool,
                is_clip: float | None, temperature: float,
                full_logit: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    config = SimpleNamespace(full_logit_distillation=full_logit, distillation_topk=topk, distillation_add_tail=tail,
                             alpha=alpha, is_clip=is_clip)

    def fn(student: torch.Tensor) -> torch.Tensor:
        # their dp_actor._forward_micro_batch: logits / temperature; student's top-k ids; teacher gathered on them
        logits = student / temperature
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        log_prob = torch.log_softmax(logits, dim=-1).gather(-1, b.tokens[..., None])[..., 0]
        with torch.no_grad():
            t_logits = b.teacher / temperature
            t_lse = torch.logsumexp(t_logits, dim=-1, keepdim=True)
            t_log_prob = torch.log_softmax(t_logits, dim=-1).gather(-1, b.tokens[..., None])[..., 0]
        kwargs: dict[str, Any] = {}
        if full_logit and topk is not None:
            k = min(topk, logits.shape[-1])
            s_top, ids = torch.topk(logits, k, dim=-1)
            kwargs["student_topk_log_probs"] = s_top - lse
            kwargs["teacher_topk_log_probs"] = (torch.gather(t_logits, -1, ids) - t_lse).detach()
        elif full_logit:
            kwargs["student_all_log_probs"] = torch.log_softmax(logits, dim=-1)
            kwargs["teacher_all_log_probs"] = torch.log_softmax(t_logits, dim=-1).detach()
        loss, _ = sdpo_loss(student_log_probs=log_prob, teacher_log_probs=t_log_prob,
                            response_mask=b.response_mask.to(student.dtype), self_distillation_config=config,
                            old_log_probs=b.old_logp, self_distillation_mask=b.has_teacher.to(student.dtype),
                            loss_agg_mode="token-mean", **kwargs)
        return loss

    return fn


def _mask(b: Batch, with_teacher_rows: bool) -> torch.Tensor:
    mask = b.response_mask.bool()
    return mask & b.has_teacher.bool()[:, None] if with_teacher_rows else mask


def ours_logits(b: Batch, alpha: float, topk: int | None, support: str, tail: bool, is_clip: float | None,
                temperature: float, with_teacher_rows: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """cepo's TRL path (in-loss teacher logits): :func:`logits_distillation_loss`, normaliser = masked tokens."""
    mask = _mask(b, with_teacher_rows)

    def fn(student: torch.Tensor) -> torch.Tensor:
        weight = None
        if is_clip is not None:
            weight = importance_weight(sampled_token_logps(student, b.tokens, temperature=temperature), b.old_logp,
                                       is_clip)
        loss, _ = logits_distillation_loss(student, b.teacher, mask, alpha=alpha, normalizer=mask.sum(), topk=topk,
                                           support=support, tail=tail, is_weight=weight, temperature=temperature,
                                           chunk_size=3)
        return loss

    return fn


def ours_teacher_topk(b: Batch, alpha: float, topk: int, temperature: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """cepo's TRL teacher-pass path for OPSD's top-k loss: :func:`topk_distillation_loss` from the teacher's top-k
    log-probs scored beforehand (values of ``log_softmax(z_T / τ)`` at the teacher's top-k ids)."""
    mask = _mask(b, False)
    values, ids = torch.topk(torch.log_softmax(b.teacher / temperature, dim=-1), topk, dim=-1)

    def fn(student: torch.Tensor) -> torch.Tensor:
        loss, _ = topk_distillation_loss(student, values, ids, mask, alpha=alpha, tail=False, normalizer=mask.sum(),
                                         temperature=temperature, chunk_size=4)
        return loss

    return fn


def ours_packed(b: Batch, alpha: float, topk: int | None, support: str, tail: bool, is_clip: float | None,
                temperature: float, mask: torch.Tensor, seed: int, agg: str = "token-mean",
                chunk_size: int = 5) -> Callable[[torch.Tensor], torch.Tensor]:
    """cepo's verl path: :func:`packed_logits_distillation_loss` on the packed layout (the batch is one mini-batch),
    the student's logits already divided by the temperature (verl's engine does that), the teacher's divided by
    cepo's teacher forward; ``mask`` (B, T) the tokens of rows with a teacher, aggregated by
    :func:`loss_aggregation` (``agg``) over the batch's tokens / rows."""
    packed = _pack(b.student, b.teacher / temperature, mask, seed)
    rows, n, vocab = b.student.shape[0], mask.numel(), b.student.shape[-1]
    row_index = torch.arange(rows).repeat_interleave(b.student.shape[1])

    def fn(student: torch.Tensor) -> torch.Tensor:
        scaled = (student / temperature).reshape(1, n, vocab)
        weight = None
        if is_clip is not None:
            current = sampled_token_logps(scaled, b.tokens.reshape(1, n))
            weight = torch.where(packed["mask"], importance_weight(current, b.old_logp.reshape(1, n), is_clip)[0],
                                 torch.ones(n, dtype=scaled.dtype))
        token_weight, normalizer = loss_aggregation(agg, packed["mask"], tokens=mask.sum(), rows=float(rows),
                                                    row_index=row_index)
        loss, _ = packed_logits_distillation_loss(scaled[0], packed["teacher_rows"], packed["teacher_index"],
                                                  packed["mask"], alpha=alpha, normalizer=normalizer, topk=topk,
                                                  support=support, tail=tail, is_weight=weight, chunk_size=chunk_size,
                                                  token_weight=token_weight)
        return loss

    return fn


def ours_sampled_token(b: Batch, temperature: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """cepo's sampled-token form: the advantage :func:`sampled_token_advantage` ``sg(lT - lS)`` in the PG surrogate
    ``-Σ mask·A·π/sg(π) / N`` (an engine's PPO loss at ratio 1, on-policy), rows without a teacher masked."""
    mask = _mask(b, True)

    def fn(student: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(student / temperature, dim=-1).gather(-1, b.tokens[..., None])[..., 0]
        t_lp = torch.log_softmax(b.teacher / temperature, dim=-1).gather(-1, b.tokens[..., None])[..., 0]
        adv = sampled_token_advantage(t_lp, lp.detach(), mask)
        return -(adv * torch.exp(lp - lp.detach()) * mask).sum() / mask.sum()

    return fn


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def compare(theirs: Callable[[torch.Tensor], torch.Tensor], ours: Callable[[torch.Tensor], torch.Tensor],
            logits: torch.Tensor, value: bool = True) -> dict[str, float]:
    """|Δ| of the loss (absolute, relative to theirs) and of the gradient w.r.t. the student logits (max abs, and
    max abs relative to their gradient's max abs), plus the gradients' cosine."""
    v_t, g_t = _value_and_grad(theirs, logits)
    v_o, g_o = _value_and_grad(ours, logits)
    d_grad = float((g_t - g_o).abs().max())
    scale = float(g_t.abs().max())
    cosine = float(F.cosine_similarity(g_t.flatten().double(), g_o.flatten().double(), dim=0))
    out = {"loss_theirs": v_t, "loss_ours": v_o, "grad_abs": d_grad, "grad_rel": d_grad / max(scale, 1e-300),
           "grad_cosine": cosine, "grad_norm_ratio": float(g_o.double().norm() / g_t.double().norm())}
    if value:
        out["loss_abs"] = abs(v_t - v_o)
        out["loss_rel"] = abs(v_t - v_o) / max(abs(v_t), 1e-300)
    return out


@dataclass
class Config:
    name: str
    family: str  # opsd | sdpo
    rows: int
    length: int
    vocab: int
    alpha: float
    temperature: float
    topk: int | None = None
    tail: bool = False
    is_clip: float | None = None
    dtype: torch.dtype = torch.float64
    old_noise: float = 0.9
    peak: float = 1.0


def configs() -> list[Config]:
    """The configurations compared (see the module docstring)."""
    out = []
    for beta in (0.5, 0.0, 0.1, 0.9, 1.0):
        out.append(Config(f"opsd_full b{beta} t1.1", "opsd", 4, 9, 300, beta, 1.1))
    out.append(Config("opsd_full b0.5 t1.0", "opsd", 3, 7, 1000, 0.5, 1.0))
    out.append(Config("opsd_full b0.5 t1.1 f32", "opsd", 4, 9, 300, 0.5, 1.1, dtype=torch.float32))
    for beta in (0.5, 0.0, 1.0):
        out.append(Config(f"opsd_topk50 b{beta} t1.1", "opsd", 4, 9, 300, beta, 1.1, topk=50))
    for alpha in (0.5, 0.0, 0.3, 1.0):
        out.append(Config(f"sdpo_topk100+tail a{alpha} clip2", "sdpo", 5, 8, 400, alpha, 1.0, 100, True, 2.0))
    out.append(Config("sdpo_topk100 no-tail a0.5 clip2", "sdpo", 5, 8, 400, 0.5, 1.0, 100, False, 2.0))
    out.append(Config("sdpo_topk100+tail a0.5 no-clip t0.7", "sdpo", 4, 8, 1000, 0.5, 0.7, 100, True, None))
    out.append(Config("sdpo_topk100+tail a0.5 clip1.2", "sdpo", 4, 8, 400, 0.5, 1.0, 100, True, 1.2))
    out.append(Config("sdpo_topk20+tail a0.5 clip2 V20 (k=V)", "sdpo", 4, 6, 20, 0.5, 1.0, 20, True, 2.0))
    out.append(Config("sdpo_topk100+tail a0.5 clip2 f32", "sdpo", 5, 8, 400, 0.5, 1.0, 100, True, 2.0,
                      dtype=torch.float32))
    for dtype, tag in ((torch.float64, ""), (torch.float32, " f32")):
        out.append(Config(f"sdpo_topk100+tail a0.5 clip2 peaked{tag}", "sdpo", 5, 8, 400, 0.5, 1.0, 100, True, 2.0,
                          dtype=dtype, peak=8.0))
    out.append(Config("sdpo_full a0.5 clip2", "sdpo", 4, 8, 300, 0.5, 1.0, None, False, 2.0))
    return out


def run_config(cfg: Config, seed: int, opsd_loss: Callable[..., Any], sdpo_loss: Callable[..., Any]) -> dict:
    b = make_batch(seed, cfg.rows, cfg.length, cfg.vocab, cfg.dtype, cfg.temperature, cfg.old_noise, cfg.peak)
    results: dict[str, dict[str, float]] = {}
    if cfg.family == "opsd":
        theirs = theirs_opsd(opsd_loss, b, cfg.alpha, cfg.temperature, cfg.topk)
        support = "teacher"
        results["trl"] = compare(theirs, ours_logits(b, cfg.alpha, cfg.topk, support, False, None, cfg.temperature,
                                                     False), b.student)
        if cfg.topk is not None:
            results["trl_teacher_pass"] = compare(theirs, ours_teacher_topk(b, cfg.alpha, cfg.topk, cfg.temperature),
                                                  b.student)
        results["verl"] = compare(theirs, ours_packed(b, cfg.alpha, cfg.topk, support, False, None, cfg.temperature,
                                                      _mask(b, False), seed), b.student)
    else:
        theirs = theirs_sdpo(sdpo_loss, b, cfg.alpha, cfg.topk, cfg.tail, cfg.is_clip, cfg.temperature)
        results["trl"] = compare(theirs, ours_logits(b, cfg.alpha, cfg.topk, "student", cfg.tail, cfg.is_clip,
                                                     cfg.temperature, True), b.student)
        results["verl"] = compare(theirs, ours_packed(b, cfg.alpha, cfg.topk, "student", cfg.tail, cfg.is_clip,
                                                      cfg.temperature, _mask(b, True), seed), b.student)
    if cfg.is_clip is not None:
        ratio = torch.exp((torch.log_softmax(b.student / cfg.temperature, -1).gather(-1, b.tokens[..., None])[..., 0]
                           - b.old_logp).double())
        mask = _mask(b, True)
        for r in results.values():
            r["clipped_fraction"] = float(((ratio > cfg.is_clip) & mask).sum() / mask.sum())
    return results


def run_sampled_token(seed: int, sdpo_loss: Callable[..., Any]) -> dict[str, dict[str, float]]:
    """SDPO's non-full-logit loss (α 1), on-policy (old = current, so the IS ratio is 1): gradient only."""
    b = make_batch(seed, 4, 8, 300, torch.float64, 1.0)
    current = torch.log_softmax(b.student, -1).gather(-1, b.tokens[..., None])[..., 0]
    b.old_logp = current.detach()
    theirs = theirs_sdpo(sdpo_loss, b, 1.0, None, False, 2.0, 1.0, full_logit=False)
    return {"pg_surrogate": compare(theirs, ours_sampled_token(b, 1.0), b.student, value=False)}


def run_window_normaliser(seed: int, opsd_loss: Callable[..., Any], sdpo_loss: Callable[..., Any]) -> dict:
    """The aggregation over a window of micro-batches: theirs accumulates per-micro-batch token-means (SDPO × 1/grad-
    accum; OPSD one sequence per call, / grad-accum), i.e. verl's ``seq-mean-token-mean``; ours is
    ``cepo.distill.loss_agg`` through :func:`cepo.algorithms.loss_aggregation`: ``seq-mean-token-mean`` (the YAMLs'
    default, expected to agree to rounding) and ``token-mean`` (the window's masked sum over its token count: differs
    by design). Ours runs the window in micro-batches of 2 rows (TRL's (B, T) layout) and as one packed mini-batch
    (verl's layout, each position naming its row), so the agreement does not rest on one row per micro-batch."""
    out = {}
    # SDPO: a mini-batch of 6 rows, one row per micro-batch (their user.yaml: ppo_micro_batch_size_per_gpu 1), so
    # gradient accumulation 6 and loss_scale_factor 1/6; a row without a teacher adds 0 but counts in the 1/6
    b = make_batch(seed, 6, 64, 300, torch.float64, 1.0, min_length=16)  # lengths 16..64
    b.has_teacher[1] = 0
    rows = b.student.shape[0]

    def sub(s: slice) -> Batch:
        return Batch(b.student[s], b.teacher[s], b.tokens[s], b.response_mask[s], b.has_teacher[s], b.old_logp[s])

    def theirs_sdpo_window(student: torch.Tensor) -> torch.Tensor:
        total = student.new_zeros(())
        for i in range(rows):
            s = slice(i, i + 1)
            total = total + theirs_sdpo(sdpo_loss, sub(s), 0.5, 100, True, 2.0, 1.0)(student[s]) / rows
        return total

    def theirs_opsd_window(student: torch.Tensor) -> torch.Tensor:
        total = student.new_zeros(())
        for i in range(rows):
            s = slice(i, i + 1)
            total = total + theirs_opsd(opsd_loss, sub(s), 0.5, 1.1, None)(student[s]) / rows
        return total

    def ours_micro(mask: torch.Tensor, agg: str, topk: int | None, support: str, tail: bool, is_clip: float | None,
                   temperature: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """cepo's TRL layout: micro-batches of 2 rows, each normalised by the window's counts."""
        def fn(student: torch.Tensor) -> torch.Tensor:
            total = student.new_zeros(())
            for start in range(0, rows, 2):
                s = slice(start, start + 2)
                weight = None if is_clip is None else importance_weight(
                    sampled_token_logps(student[s], b.tokens[s], temperature=temperature), b.old_logp[s], is_clip)
                token_weight, normalizer = loss_aggregation(agg, mask[s], tokens=mask.sum(), rows=float(rows))
                loss, _ = logits_distillation_loss(student[s], b.teacher[s], mask[s], alpha=0.5,
                                                   normalizer=normalizer, topk=topk, support=support, tail=tail,
                                                   is_weight=weight, temperature=temperature,
                                                   token_weight=token_weight)
                total = total + loss
            return total
        return fn

    def ours_packed_window(mask: torch.Tensor, agg: str, topk: int | None, support: str, tail: bool,
                           is_clip: float | None, temperature: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """cepo's verl layout: the window is one packed mini-batch (:func:`ours_packed`)."""
        return ours_packed(b, 0.5, topk, support, tail, is_clip, temperature, mask, seed, agg=agg, chunk_size=7)

    sdpo_mask, opsd_mask = _mask(b, True), _mask(b, False)
    for agg in LOSS_AGGS:
        sdpo_args = (sdpo_mask, agg, 100, "student", True, 2.0, 1.0)
        opsd_args = (opsd_mask, agg, None, "student", False, None, 1.1)
        for path, build in (("trl", ours_micro), ("verl", ours_packed_window)):
            out[(f"sdpo_norm {agg}: theirs 1 row/micro-batch", path)] = compare(
                theirs_sdpo_window, build(*sdpo_args), b.student)
            out[(f"opsd_norm {agg}: theirs 1 seq/device", path)] = compare(
                theirs_opsd_window, build(*opsd_args), b.student)
    return out


def _worst(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """The worst value over seeds of each measure (largest difference, smallest cosine / clipped share, the norm
    ratio furthest from 1, the mean clipped share); the first seed's loss values as an example."""
    worst: dict[str, float] = {"loss_theirs_seed0": per_seed[0]["loss_theirs"],
                               "loss_ours_seed0": per_seed[0]["loss_ours"]}
    for key in per_seed[0]:
        values = [r[key] for r in per_seed]
        if key in ("loss_theirs", "loss_ours"):
            continue
        if key == "grad_cosine":
            worst[key] = min(values)
        elif key == "clipped_fraction":
            worst[key] = sum(values) / len(values)
        elif key == "grad_norm_ratio":
            worst[key] = max(values, key=lambda v: abs(v - 1.0))
        else:
            worst[key] = max(values)
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdpo-repo", type=Path, required=True, help="lasgroup/SDPO: a git dir or a work tree")
    parser.add_argument("--opsd-repo", type=Path, required=True, help="siyan-zhao/OPSD: a git dir or a work tree")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    sdpo_loss, sdpo_prov = load_sdpo(args.sdpo_repo)
    opsd_loss, opsd_prov = load_opsd(args.opsd_repo)
    seeds = list(range(args.seeds))
    rows: list[dict[str, Any]] = []
    for cfg in configs():
        per_path: dict[str, list[dict[str, float]]] = {}
        for seed in seeds:
            for path, r in run_config(cfg, seed, opsd_loss, sdpo_loss).items():
                per_path.setdefault(path, []).append(r)
        for path, per_seed in per_path.items():
            rows.append({"config": cfg.name, "cepo_path": path, "dtype": str(cfg.dtype).replace("torch.", ""),
                         "shape": [cfg.rows, cfg.length, cfg.vocab], "by_design": False, **_worst(per_seed)})
    st = [run_sampled_token(seed, sdpo_loss)["pg_surrogate"] for seed in seeds]
    rows.append({"config": "sdpo_sampled_token a1 on-policy (grad only)", "cepo_path": "pg_surrogate",
                 "dtype": "float64", "shape": [4, 8, 300], "by_design": False, **_worst(st)})
    window: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        for name, r in run_window_normaliser(seed, opsd_loss, sdpo_loss).items():
            window.setdefault(name, []).append(r)
    for (name, path), per_seed in sorted(window.items()):
        rows.append({"config": name, "cepo_path": path, "dtype": "float64", "shape": [6, 64, 300],
                     "by_design": "seq-mean-token-mean" not in name, **_worst(per_seed)})

    header = f"{'configuration':58s} {'cepo path':16s} {'|dloss|':>9s} {'rel':>9s} {'|dgrad|':>9s} {'rel':>9s} " \
             f"{'cos':>8s} {'|g|o/t':>7s} {'clip%':>6s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        loss_abs = f"{r['loss_abs']:9.1e}" if "loss_abs" in r else f"{'-':>9s}"
        loss_rel = f"{r['loss_rel']:9.1e}" if "loss_rel" in r else f"{'-':>9s}"
        clip = f"{100 * r['clipped_fraction']:6.1f}" if "clipped_fraction" in r else f"{'':>6s}"
        print(f"{r['config'][:58]:58s} {r['cepo_path']:16s} {loss_abs} {loss_rel} {r['grad_abs']:9.1e} "
              f"{r['grad_rel']:9.1e} {r['grad_cosine']:8.5f} {r['grad_norm_ratio']:7.4f} {clip}")
    payload = {
        "description": "max over seeds of the differences between the authors' loss (read at run time) and cepo's, "
                       "loss and gradient w.r.t. the student logits; by_design rows (loss_agg=token-mean) differ in "
                       "the normaliser only",
        "seeds": seeds,
        "authors": {"sdpo": {"repo": "lasgroup/SDPO", "source": str(args.sdpo_repo), "functions": sdpo_prov},
                    "opsd": {"repo": "siyan-zhao/OPSD", "source": str(args.opsd_repo), "functions": opsd_prov}},
        "torch": torch.__version__,
        "differences": DIFFERENCES,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1, default=lambda x: x if math.isfinite(x) else str(x)) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
