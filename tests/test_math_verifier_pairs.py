"""cepo's math verifier on the committed hand-labelled (ground truth, response) set (benchmarks/data/): its verdicts
against the labels, the measured agreement table, and math-verify's verdicts outside the main thread."""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from cepo.rewards import compute_score, extract_answer
from cepo.rewards.math_verifier import answers_match

ROOT = Path(__file__).resolve().parents[1]
RESULT = json.loads((ROOT / "benchmarks" / "results" / "verifier_agreement.json").read_text())
HARD = ("fraction", "radical", "interval", "units", "equation", "degrees", "percent", "tuple", "set", "text")


def _benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("verifier_agreement", ROOT / "benchmarks" / "verifier_agreement.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


PAIRS = _benchmark().load_pairs()


def test_the_set_covers_the_hard_equivalences():
    assert len(PAIRS) >= 100 and len({p["id"] for p in PAIRS}) == len(PAIRS)
    assert all(isinstance(p["label"], bool) and p["ground_truth"].strip() for p in PAIRS)
    for category in HARD:
        labels = {p["label"] for p in PAIRS if p["category"] == category}
        assert labels == {True, False}, category  # an accepted equivalent and a look-alike wrong answer each
    dfrac = [p for p in PAIRS if "\\dfrac" in p["ground_truth"] + p["response"]]
    assert dfrac and all(p["label"] for p in dfrac)


def test_cepo_reward_against_the_labels():
    """No wrong answer accepted; the misses are exactly the ones the committed table lists."""
    verdicts = {p["id"]: compute_score(p["response"], p["ground_truth"]).accuracy == 1.0 for p in PAIRS}
    false_positives = [p["id"] for p in PAIRS if verdicts[p["id"]] and not p["label"]]
    false_negatives = [p["id"] for p in PAIRS if not verdicts[p["id"]] and p["label"]]
    assert false_positives == [] == RESULT["verifiers"]["cepo"]["false_positives"]
    assert false_negatives == RESULT["verifiers"]["cepo"]["false_negatives"]
    assert RESULT["verifiers"]["cepo"]["agree"] == len(PAIRS) - len(false_negatives) >= 135


def test_math_verify_gives_the_same_verdicts_outside_the_main_thread():
    """math-verify's timeout is signal.alarm (main thread only); in a reward thread pool it must still grade, not
    return "not equal" for everything. These pairs are accepted only through math-verify (mathruler misses them)."""
    only_math_verify = set(RESULT["verifiers"]["mathruler"]["false_negatives"]) - set(
        RESULT["verifiers"]["cepo"]["false_negatives"])
    pairs = [p for p in PAIRS if p["id"] in only_math_verify]
    assert len(pairs) >= 5

    def grade(p: dict[str, Any]) -> bool:
        answer = extract_answer(p["response"])
        return answer is not None and answers_match(answer, p["ground_truth"])

    with ThreadPoolExecutor(max_workers=2) as pool:
        in_threads = list(pool.map(grade, pairs))
    assert in_threads == [grade(p) for p in pairs] == [True] * len(pairs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mathruler", "math-verify", "math-verify-boxed"])
def test_committed_agreement_table_is_what_the_verifiers_give(name):
    row = _benchmark().measure(name, PAIRS)
    committed = RESULT["verifiers"][name]
    for key in ("agree", "false_positives", "false_negatives", "per_category"):
        assert row[key] == committed[key], key
