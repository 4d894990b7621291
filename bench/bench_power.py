"""How fast any judge with the shipped guarantee can be: exact first-passage probabilities of the evidence.

    .venv/bin/python -m bench.bench_power [--json]

No broker, no simulation: for the rate rows of ``bench_decisions`` (independent requests, 30 per 5 s window, a
fixed rate per request), the exact probability — a dynamic programme over the binomial count — that the
evidence against the rule has reached its threshold by window i of the breach, for two e-values:

* ``shipped``: :func:`canary.core.evidence.log_e_above` (the mixture of nine alternatives every rate rule uses);
* ``oracle``: the likelihood ratio of the true rate against the rule's (the e-value of a judge that knew the
  breach in advance: no e-value grows faster in expectation, Kelly's criterion).

Two thresholds (and, for contrast, the pool with the whole alpha), as the judge spends a rule's alpha = 0.01
(canary.core.judge: POOLED_SHARE, the detector's horizon): ``pooled`` ln(1 / 0.008) for a breach present
since the regime began, ``detector`` ln(360 / 0.002) for one that begins at an unknown time (the
Shiryaev-Roberts sum over change points; approximated here by the segment that starts exactly at the breach,
with ln i nats of allowance for summing the i segments inside the breach — segments that start before it hold
healthy windows, whose rate below the rule's takes evidence away — so an approximation, not a bound).

The spec's rollback needs 2 consecutive failing buckets, so a rollback at window i needs a crossing by
window i and i >= 2: P(rollback by window i) <= P(crossed by window i). Windows become seconds as the bench
counts them: window i's end + 1 s grace.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from bench.bench_decisions import H
from canary.core.evidence import log_e_above
from canary.core.judge import POOLED_SHARE

PER_WINDOW = 30
WINDOW_S = 5
GRACE_S = 1
ALPHA = 0.01
HORIZON_WINDOWS = 360
POOLED = math.log(1.0 / (ALPHA * POOLED_SHARE))
DETECTOR = math.log(HORIZON_WINDOWS / (ALPHA * (1.0 - POOLED_SHARE)))
NEEDED = {"pooled": POOLED, "detector": DETECTOR, "whole": math.log(1.0 / ALPHA)}


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    q: float  # the rule's rate
    p: float  # the breach's rate per request
    threshold: str  # "pooled", "detector" or "whole" (the rule's whole alpha to the pool: no detector at all)
    windows: int


def _lognormal_exceed(factor: float) -> float:
    """P(latency > T) when the true p95 is ``factor`` x T, in bench_decisions' lognormal traffic."""
    return replace(H, p95_factor=factor).p_exceed()


ROWS = (
    Row("clear-p95", "p95 1.5 T from the start", 0.05, _lognormal_exceed(1.5), "pooled", 6),
    Row("late-p95", "p95 1.5 T after a healthy start", 0.05, _lognormal_exceed(1.5), "detector", 8),
    Row("marg-p95", "p95 1.25 T from the start", 0.05, _lognormal_exceed(1.25), "pooled", 11),
    Row("marg-err", "errors 5 % from the start", 0.01, 0.05, "pooled", 11),
    Row("marg-p95", "p95 1.25 T, no detector (the whole alpha pooled)", 0.05, _lognormal_exceed(1.25), "whole", 11),
    Row("marg-err", "errors 5 %, no detector (the whole alpha pooled)", 0.01, 0.05, "whole", 11),
)


def crossing_curve(
    p: float, windows: int, log_e: Callable[[int, int], float], needed: Callable[[int], float]
) -> list[float]:
    """P(log_e(n_i, k_i) >= needed(i) for some window <= i), i = 1..windows, k_i ~ Binomial(30 i, p)."""
    pmf = stats.binom.pmf(np.arange(PER_WINDOW + 1), PER_WINDOW, p)
    alive = np.zeros(PER_WINDOW * windows + 1)
    alive[0] = 1.0
    crossed = 0.0
    curve: list[float] = []
    for i in range(1, windows + 1):
        alive = np.convolve(alive, pmf)[: len(alive)]
        n = PER_WINDOW * i
        # The evidence grows with the count: the first k that reaches the threshold, found by bisection.
        lo, hi = 0, n + 1
        while lo < hi:
            mid = (lo + hi) // 2
            if log_e(n, mid) >= needed(i):
                hi = mid
            else:
                lo = mid + 1
        crossed += float(alive[lo:].sum())
        alive[lo:] = 0.0
        curve.append(crossed)
    return curve


def oracle(q: float, p: float) -> Callable[[int, int], float]:
    up, down = math.log(p / q), math.log((1 - p) / (1 - q))
    return lambda n, k: k * up + (n - k) * down


def row_figures(row: Row) -> dict[str, object]:
    base = NEEDED[row.threshold]
    # The detector's sum over the i segments inside the breach: at most i times the largest (allowance ln i).
    needed = (lambda i: base - math.log(i)) if row.threshold == "detector" else (lambda i: base)
    shipped = crossing_curve(row.p, row.windows, lambda n, k: log_e_above(n, k, row.q), needed)
    best = crossing_curve(row.p, row.windows, oracle(row.q, row.p), needed)
    per_request_kl = row.p * math.log(row.p / row.q) + (1 - row.p) * math.log((1 - row.p) / (1 - row.q))

    def median(curve: Sequence[float]) -> int | None:
        return next((max(2, i + 1) for i, c in enumerate(curve) if c >= 0.5), None)

    return {
        "scenario": row.key,
        "label": row.label,
        "rule_rate": row.q,
        "breach_rate": row.p,
        "threshold": row.threshold,
        "log_e_needed": base,
        "kl_nats_per_window": PER_WINDOW * per_request_kl,
        "shipped": shipped,
        "oracle": best,
        "median_rollback_window_shipped": median(shipped),
        "median_rollback_window_oracle": median(best),
    }


def seconds(window: int | None) -> str:
    return "never" if window is None else f"{window} w / {window * WINDOW_S + GRACE_S} s"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    out = [row_figures(r) for r in ROWS]
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"thresholds: pooled ln(1/{ALPHA * POOLED_SHARE:g}) = {POOLED:.2f}; "
        f"detector ln({HORIZON_WINDOWS}/{ALPHA * (1 - POOLED_SHARE):g}) = {DETECTOR:.2f} (minus ln i, see --help)"
    )
    for f in out:
        print(
            f"\n{f['scenario']}: {f['label']} (rate {f['breach_rate']:.4f} against {f['rule_rate']}; "
            f"{f['kl_nats_per_window']:.2f} nats a window at best), {f['threshold']} threshold {f['log_e_needed']:.2f}"
        )
        print("  P(crossed by window i)  " + "  ".join(f"{i + 1:>5}" for i in range(len(f["shipped"]))))  # type: ignore[arg-type]
        for name in ("shipped", "oracle"):
            print(f"  {name:<22}  " + "  ".join(f"{c:5.3f}" for c in f[name]))  # type: ignore[attr-defined]
        print(
            f"  median rollback at best: shipped {seconds(f['median_rollback_window_shipped'])}, "  # type: ignore[arg-type]
            f"oracle {seconds(f['median_rollback_window_oracle'])}"  # type: ignore[arg-type]
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
