"""Measuring credit assignment and its cost (no engine imports).

Imported here: credit-quality metrics (:mod:`cepo.analysis.credit_quality`: AUROC, cluster bootstrap, top-k,
decisive-token labelling) and step-phase timers / peak memory (:mod:`cepo.analysis.timing`), used by
``benchmarks/``. Import the credit maps (:mod:`cepo.analysis.credit_map`) and plots (:mod:`cepo.analysis.plots`)
from their modules.
"""

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
