"""From checkpoints to the paper's Table 2: the five benchmarks through lmms-eval, run as a separate program
(``cepo.evaluation.lmms``, ``cepo.evaluation.runner``), a local evaluator with our own verifier
(``cepo.evaluation.local``), and the Markdown table (``cepo.evaluation.report``). See docs/evaluation.md.

Importing this package imports neither lmms-eval (never: it cannot share verl's environment) nor transformers.
"""

from cepo.evaluation.benchmarks import BENCHMARKS, LMMS_EVAL_VERSION, PAPER_SAMPLING, Benchmark, SamplingSettings
from cepo.evaluation.results import BenchmarkScore, EvalResult, binomial_stderr, table2_markdown

__all__ = [
    "BENCHMARKS",
    "LMMS_EVAL_VERSION",
    "PAPER_SAMPLING",
    "Benchmark",
    "BenchmarkScore",
    "EvalResult",
    "SamplingSettings",
    "binomial_stderr",
    "table2_markdown",
]
