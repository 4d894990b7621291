"""The result-diff metrics of one query (router/requests.py), table-driven: what each is for two answers."""

from __future__ import annotations

import math

import pytest

from canary.core.custom import RESULT_DIFF_METRICS
from router.requests import jaccard_at_10, rbo_at_10, top1_changed

TOP = [f"d{i}" for i in range(10)]


def _rbo_by_definition(a: list[str], b: list[str], p: float = 0.9) -> float:
    """Webber et al.'s extrapolated RBO (eq. 32) for two lists of the same length k, from its formula."""
    k = len(a)
    x = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    return x[-1] / k * p**k + (1 - p) / p * sum(x[d - 1] / d * p**d for d in range(1, k + 1))


# (candidate, baseline, rbo, jaccard, top1_changed)
CASES = {
    "identical": (TOP, TOP, 1.0, 1.0, 0.0),
    "disjoint": (TOP, [f"x{i}" for i in range(10)], 0.0, 0.0, 1.0),
    "reversed: the same set": (TOP[::-1], TOP, _rbo_by_definition(TOP[::-1], TOP), 1.0, 1.0),
    "last two swapped": (
        [*TOP[:8], TOP[9], TOP[8]],
        TOP,
        _rbo_by_definition([*TOP[:8], TOP[9], TOP[8]], TOP),
        1.0,
        0.0,
    ),
    "first two swapped": (
        [TOP[1], TOP[0], *TOP[2:]],
        TOP,
        _rbo_by_definition([TOP[1], TOP[0], *TOP[2:]], TOP),
        1.0,
        1.0,
    ),
    "one new document on top": (["new", *TOP[:9]], TOP, _rbo_by_definition(["new", *TOP[:9]], TOP), 9 / 11, 1.0),
    "both empty": ([], [], 1.0, 1.0, 0.0),
    "candidate empty": ([], TOP, 0.0, 0.0, 1.0),
    "beyond rank 10 ignored": ([*TOP, "a"], [*TOP, "b"], 1.0, 1.0, 0.0),
}


@pytest.mark.parametrize("case", CASES)
def test_result_diff_metrics(case: str) -> None:
    candidate, baseline, rbo, jaccard, changed = CASES[case]
    assert rbo_at_10(candidate, baseline) == pytest.approx(rbo, abs=1e-12)
    assert jaccard_at_10(candidate, baseline) == pytest.approx(jaccard)
    assert top1_changed(candidate, baseline) == changed


def test_rbo_weighs_the_top_more_than_the_bottom() -> None:
    top_swap = rbo_at_10([TOP[1], TOP[0], *TOP[2:]], TOP)
    bottom_swap = rbo_at_10([*TOP[:8], TOP[9], TOP[8]], TOP)
    assert top_swap < bottom_swap < 1.0
    assert math.isclose(rbo_at_10(TOP, TOP[::-1]), rbo_at_10(TOP[::-1], TOP))  # symmetric


def test_a_shorter_answer_is_a_change_and_duplicates_count_once() -> None:
    assert rbo_at_10(TOP[:5], TOP) < 1.0  # returning fewer results is not "the same ranking"
    assert rbo_at_10(TOP[:5], TOP) == pytest.approx(rbo_at_10(TOP, TOP[:5]))
    assert rbo_at_10([TOP[0], TOP[0], *TOP[1:]], TOP) == pytest.approx(1.0)  # an engine repeating an id


def test_the_router_writes_the_metrics_the_grammar_knows() -> None:
    assert set(RESULT_DIFF_METRICS) == {"rbo_at_10", "jaccard_at_10", "top1_changed"}
    assert RESULT_DIFF_METRICS["top1_changed"].aggregation == "rate"
