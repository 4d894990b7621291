"""bench_power's exact first-passage probabilities against brute force, and its split against the judge's."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from bench import bench_power
from canary.core import judge
from canary.core.evidence import log_e_above


def test_alpha_split_and_horizon_are_the_judges() -> None:
    assert bench_power.POOLED_SHARE == judge.POOLED_SHARE
    policy = judge.SLOPolicy((judge.SLORule("p95_ms", "p95_ms", "le", 1200.0),))
    dj = judge.DeploymentJudge("d", policy)
    pool, detect, _ = dj._alphas(policy.rules[0])
    assert math.isclose(bench_power.POOLED, math.log(1 / pool))
    assert math.isclose(bench_power.DETECTOR, dj._detector_needed(detect, 5000))


@pytest.mark.parametrize(("p", "q", "needed"), [(0.2, 0.05, 4.83), (0.115, 0.05, 3.0), (0.05, 0.01, 4.0)])
def test_first_passage_is_exact_over_two_windows(p: float, q: float, needed: float) -> None:
    n = bench_power.PER_WINDOW
    e = lambda n_, k_: log_e_above(n_, k_, q)  # noqa: E731
    curve = bench_power.crossing_curve(p, 2, e, lambda i: needed)
    first = sum(stats.binom.pmf(k, n, p) for k in range(n + 1) if e(n, k) >= needed)
    both = first + sum(
        stats.binom.pmf(k1, n, p) * stats.binom.pmf(k2, n, p)
        for k1 in range(n + 1)
        if e(n, k1) < needed
        for k2 in range(n + 1)
        if e(2 * n, k1 + k2) >= needed
    )
    assert curve == pytest.approx([first, both], abs=1e-12)


def test_the_printed_table_names_every_row() -> None:
    figures = [bench_power.row_figures(r) for r in bench_power.ROWS]
    assert {f["scenario"] for f in figures} == {"clear-p95", "late-p95", "marg-p95", "marg-err"}
    for f in figures:
        assert all(0.0 <= a <= b <= 1.0 for a, b in zip(f["shipped"], f["shipped"][1:], strict=False))  # type: ignore[call-overload]
