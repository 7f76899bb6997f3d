"""How well token credit lands on the tokens that decide the answer (numpy only, no engine imports).

The pieces the credit-precision benchmark (``benchmarks/credit_precision.py``) and its tests use:

* :func:`auroc`: the probability that a random *decisive* token scores higher than a random *filler* token
  (Mann-Whitney U, ties count one half), optionally with per-token weights; :func:`bootstrap_auroc` computes it
  for many bootstrap replicates at once, where a replicate resamples *problems* (clusters), not tokens.
* :func:`bootstrap_counts`, :func:`bootstrap_mean`, :func:`percentile_ci`: the cluster bootstrap bookkeeping.
* :func:`topk_hit_probability`: whether a given token (the first error of a wrong response) is among the k
  highest-weighted tokens of its response, with ties broken uniformly at random (so equal weights, as GRPO gives
  every token, score the chance level ``k / n``).
* :func:`token_char_spans`, :func:`result_char_spans`, :func:`tokens_in_spans`, :func:`first_divergence`:
  labelling. A *result* is the run of digits right after an ``=`` (``12+7=19``: the ``19``); on the benchmark's
  arithmetic task these are exactly the decisive tokens, on free-form math solutions they are a proxy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "auroc",
    "bootstrap_auroc",
    "bootstrap_counts",
    "bootstrap_mean",
    "first_divergence",
    "percentile_ci",
    "result_char_spans",
    "token_char_spans",
    "tokens_in_spans",
    "topk_hit_probability",
]

_RESULT = re.compile(r"=\s*(-?\d+(?:\.\d+)?)")


# -- AUROC -------------------------------------------------------------------------------------------------------


def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
    """Group index of every position of an ascending array: equal scores share a group."""
    if sorted_scores.size == 0:
        return np.zeros(0, dtype=np.int64)
    new_group = np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]])
    return np.cumsum(new_group) - 1


def _prepare(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} entries but labels has {y.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return s, y


def _auroc_rows(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted AUROC for every row of ``weights`` (R, n) over the same ``scores``/``labels`` (n,)."""
    order = np.argsort(scores, kind="mergesort")
    s, y, w = scores[order], labels[order], weights[:, order]
    groups = _tie_groups(s)
    n_groups = int(groups[-1]) + 1 if groups.size else 0
    w_pos = np.where(y, w, 0.0)
    w_neg = np.where(y, 0.0, w)
    # per tie group: negative weight strictly below the group, and inside it
    neg_in_group = np.zeros((w.shape[0], n_groups))
    pos_in_group = np.zeros((w.shape[0], n_groups))
    for row in range(w.shape[0]):
        neg_in_group[row] = np.bincount(groups, weights=w_neg[row], minlength=n_groups)
        pos_in_group[row] = np.bincount(groups, weights=w_pos[row], minlength=n_groups)
    neg_below = np.cumsum(neg_in_group, axis=1) - neg_in_group
    wins = (pos_in_group * (neg_below + 0.5 * neg_in_group)).sum(axis=1)
    total = pos_in_group.sum(axis=1) * neg_in_group.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / np.where(total > 0, total, 1.0), np.nan)


def auroc(scores: Any, labels: Any, weights: Any | None = None) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(equal): the area under the ROC curve.

    ``labels`` are booleans (True = decisive). ``weights`` (optional, >= 0) count each token that many times
    (a bootstrap replicate's multiplicities). NaN when either class is empty (or has zero weight).
    """
    s, y = _prepare(scores, labels)
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != s.shape:
        raise ValueError(f"weights has {w.size} entries but scores has {s.size}")
    if s.size == 0:
        return float("nan")
    return float(_auroc_rows(s, y, w[None, :])[0])


# -- cluster bootstrap -------------------------------------------------------------------------------------------


def bootstrap_counts(n_clusters: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n_clusters) multiplicities: replicate ``b`` draws ``n_clusters`` clusters with replacement."""
    if n_clusters <= 0 or n_boot <= 0:
        raise ValueError(f"need n_clusters > 0 and n_boot > 0, got {n_clusters}, {n_boot}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    counts = np.zeros((n_boot, n_clusters), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(n_boot), n_clusters), draws.reshape(-1)), 1.0)
    return counts


def _cluster_index(clusters: Any, n_clusters: int) -> np.ndarray:
    index = np.asarray(clusters, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= n_clusters):
        raise ValueError(f"cluster ids must lie in [0, {n_clusters}); got [{index.min()}, {index.max()}]")
    return index


def bootstrap_auroc(scores: Any, labels: Any, clusters: Any, counts: np.ndarray) -> np.ndarray:
    """AUROC of every bootstrap replicate: token ``i`` counts ``counts[b, clusters[i]]`` times in replicate ``b``."""
    s, y = _prepare(scores, labels)
    index = _cluster_index(clusters, counts.shape[1])
    if index.shape != s.shape:
        raise ValueError(f"clusters has {index.size} entries but scores has {s.size}")
    if s.size == 0:
        return np.full(counts.shape[0], np.nan)
    return _auroc_rows(s, y, counts[:, index])


def bootstrap_mean(values: Any, clusters: Any, counts: np.ndarray) -> np.ndarray:
    """Mean of ``values`` in every bootstrap replicate (items weighted by their cluster's multiplicity)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    index = _cluster_index(clusters, counts.shape[1])
    if index.shape != v.shape:
        raise ValueError(f"clusters has {index.size} entries but values has {v.size}")
    if v.size == 0:
        return np.full(counts.shape[0], np.nan)
    w = counts[:, index]
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w * v[None, :]).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def percentile_ci(samples: Any, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentile interval of bootstrap ``samples`` (NaNs ignored)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(x, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def estimate(point: float, samples: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high"}`` for a point estimate and its bootstrap replicates."""
    low, high = percentile_ci(samples, alpha)
    return {"value": float(point), "ci_low": low, "ci_high": high}


def cluster_bootstrap(
    statistic: Callable[[np.ndarray], float], n_clusters: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> dict[str, float]:
    """Point estimate and percentile CI of ``statistic(cluster_weights)`` (weights all 1 = the data as is)."""
    counts = bootstrap_counts(n_clusters, n_boot, seed)
    samples = np.array([statistic(row) for row in counts])
    return estimate(statistic(np.ones(n_clusters)), samples, alpha)


# -- top-k -------------------------------------------------------------------------------------------------------


def topk_hit_probability(values: Any, index: int, k: int) -> float:
    """Probability that item ``index`` is among the ``k`` largest ``values``, ties broken uniformly at random.

    With ``g`` values strictly greater and ``e`` other values equal, the item's rank is uniform on
    ``g + 1 .. g + e + 1``, so the probability is ``clip((k - g) / (e + 1), 0, 1)``; all-equal values give ``k / n``.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not 0 <= index < v.size:
        raise ValueError(f"index {index} outside the {v.size} values")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    target = v[index]
    greater = int(np.sum(v > target))
    equal = int(np.sum(v == target)) - 1
    return float(np.clip((k - greater) / (equal + 1), 0.0, 1.0))


# -- labelling ---------------------------------------------------------------------------------------------------


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span ``[start, end)`` of every token of ``ids`` in ``tokenizer.decode(ids)``.

    Decodes token by token; when the pieces do not concatenate to the whole decode (byte-level BPE splitting a
    multi-byte character), falls back to decoding growing prefixes.
    """
    ids = [int(i) for i in ids]
    pieces = [tokenizer.decode([i]) for i in ids]
    whole = tokenizer.decode(ids)
    if "".join(pieces) != whole:
        ends = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
        starts = [0, *ends[:-1]]
        return list(zip(starts, ends, strict=True))
    spans, start = [], 0
    for piece in pieces:
        spans.append((start, start + len(piece)))
        start += len(piece)
    return spans


def result_char_spans(text: str) -> list[tuple[int, int]]:
    """Spans of the *results* in ``text``: each number right after an ``=`` (in order of appearance)."""
    return [match.span(1) for match in _RESULT.finditer(text)]


def tokens_in_spans(token_spans: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """For every token, the index of the first span it overlaps, or -1 (tokens of zero width overlap nothing)."""
    out = np.full(len(token_spans), -1, dtype=np.int64)
    for t, (start, end) in enumerate(token_spans):
        for k, (s, e) in enumerate(char_spans):
            if start < e and s < end:
                out[t] = k
                break
    return out


def first_divergence(response: str, reference: str) -> int | None:
    """Index of the first character where ``response`` departs from ``reference``; ``None`` if they are equal.

    A response that stops early diverges at ``len(response)`` (its end); one that runs on past the reference
    diverges at ``len(reference)``.
    """
    for i, (a, b) in enumerate(zip(response, reference, strict=False)):
        if a != b:
            return i
    if len(response) == len(reference):
        return None
    return min(len(response), len(reference))


def char_to_token(token_spans: Sequence[tuple[int, int]], char_index: int) -> int | None:
    """The token whose span contains ``char_index`` (the last token when the index is at or past the end)."""
    for t, (start, end) in enumerate(token_spans):
        if start <= char_index < end:
            return t
    if token_spans and char_index >= token_spans[-1][1]:
        return len(token_spans) - 1
    return None
