"""Measuring credit assignment and its cost: credit-quality metrics and phase timers (no engine imports)."""

from cepo.analysis.credit_quality import (
    auroc,
    bootstrap_auroc,
    bootstrap_counts,
    bootstrap_mean,
    first_divergence,
    percentile_ci,
    result_char_spans,
    token_char_spans,
    tokens_in_spans,
    topk_hit_probability,
)
from cepo.analysis.timing import PeakMemory, PhaseTimer, rss_bytes

__all__ = [
    "PeakMemory",
    "PhaseTimer",
    "auroc",
    "bootstrap_auroc",
    "bootstrap_counts",
    "bootstrap_mean",
    "first_divergence",
    "percentile_ci",
    "result_char_spans",
    "rss_bytes",
    "token_char_spans",
    "tokens_in_spans",
    "topk_hit_probability",
]
