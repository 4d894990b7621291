"""Decision quality of the SLO judge: a seeded Monte Carlo through the public Kafka-free pipeline.

Every run builds raw ``search_results`` records (JSON ``SearchOutcome`` values, candidate arm only) and a
``start`` command whose candidate snapshot carries the judge's ``slo`` section, and hands them to
:func:`canary.pipeline.run.run_pipeline` — the windows stage, the judge and the decision step exactly as
the live worker runs them. Nothing of the judging logic is copied here; the figures are what the shipped
code decides. Two judges see the *same* seeded traffic per run:

* ``sequential``: the default (anytime-valid evidence pooled over the deployment, confidence 0.99);
* ``point``: ``method: point`` with ``min_samples: 20`` (the original per-window rule), and for the
  low-traffic rows also ``point-min0`` (``min_samples: 0``), since at 3 samples per window ``point`` can
  never judge at all.

Traffic model (per request, 30 candidate outcomes per 5 s window unless stated):

* latency lognormal with log-scale sd ``sigma`` (0.5 in the main table) and median ``p95 / exp(1.645 sigma)``,
  so the true p95 is the stated multiple of the 1200 ms threshold; "every request > 2x threshold" is
  uniform in (2T, 4T);
* errors: Bernoulli(error rate), published as ``error: "backend_error"`` with recall 0.0;
* recall@10 of a labeled request: Binomial(10, mean) / 10 — the router's recall is hits / 10 against 10
  labeled documents, so it takes the values 0.0, 0.1, ..., 1.0; the sd (0.137 at 0.25, 0.158 at 0.5) is
  about the 0.15 of a clipped normal, and the mean is exact. Every request is labeled.

Events are evenly spaced in each window; a record's Kafka timestamp (arrival) is the end of its second
+ 20 ms (1 s micro-batches, inside the 1 s grace). A self-check at start shows, on a few seeds, that this
changes no verdict against per-record arrivals (event time + 20 ms) and only makes the windows stage cheaper.

    .venv/bin/python -m bench.bench_decisions [--runs 500] [--quick] [--json] [--seed N] [--only KEY,...]
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy import stats

from bench.common import base_parser, emit, loadavg, log, machine
from canary.core.evidence import log_e_above
from canary.core.models import ControlCommand, SearchOutcome
from canary.core.slo import DEFAULT_CONFIDENCE, policy_from_slo_section
from canary.pipeline.run import PipelineResult, Record, run_pipeline
from canary.replay.recompute import ReplaySettings

# -- the setting ------------------------------------------------------------------------------------------

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a window boundary
WINDOW_MS = ReplaySettings().window_ms
GRACE_MS = ReplaySettings().grace_ms
P95_T = 1200.0
RECALL_T = 0.30
ERROR_T = 0.01
Z95 = float(stats.norm.ppf(0.95))
BASE_SEED = 9_000_000  # issue #9
ARRIVAL_BATCH_MS = 1000
WITHIN_S = 60
CONSECUTIVE = 2  # the default consecutive_buckets
DEFAULT_RUNS = 500
QUICK_RUNS = 50
MAX_WORKERS = 2

BASE_SLO: dict[str, Any] = {"p95_ms": P95_T, "recall_at_10": RECALL_T, "error_rate": ERROR_T}
JUDGES: dict[str, dict[str, Any]] = {
    "sequential": {},
    "point": {"method": "point", "min_samples": 20},
    "point-min0": {"method": "point", "min_samples": 0},
}
RULE_SHORT = {"p95_ms": "p95", "recall_at_10": "recall", "error_rate": "err"}


def slo_section(judge: str) -> dict[str, Any]:
    return {**BASE_SLO, **JUDGES[judge]}


@dataclass(frozen=True, slots=True)
class Traffic:
    """Per-request distributions of one phase of a canary."""

    p95_factor: float | None = 0.9  # lognormal latency with true p95 = factor x threshold
    above_factor: float | None = None  # instead: every latency uniform in (f T, 2 f T)
    sigma: float = 0.5
    error_rate: float = 0.0
    recall: float = 0.5

    def p_slow(self) -> float:
        """P(latency > threshold) of one request (errors aside)."""
        if self.above_factor is not None:
            return 1.0 if self.above_factor >= 1.0 else 0.0
        assert self.p95_factor is not None
        return float(stats.norm.sf(Z95 - math.log(self.p95_factor) / self.sigma))

    def p_exceed(self) -> float:
        """What the p95 rule counts: an errored request is an exceedance whatever its latency."""
        return self.error_rate + (1.0 - self.error_rate) * self.p_slow()

    def describe(self) -> str:
        lat = (
            f"latency > {self.above_factor:g}xT (uniform {self.above_factor:g}T-{2 * self.above_factor:g}T)"
            if self.above_factor is not None
            else f"p95 {self.p95_factor:g}xT (lognormal sigma {self.sigma:g})"
        )
        return f"{lat}, errors {self.error_rate:.1%}, recall mean {self.recall:.2f}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "p95_factor": self.p95_factor,
            "above_factor": self.above_factor,
            "sigma": self.sigma,
            "error_rate": self.error_rate,
            "recall_mean": self.recall,
            "p_latency_above_threshold": self.p_slow(),
            "p_exceedance_p95_rule": self.p_exceed(),
        }


@dataclass(frozen=True, slots=True)
class Target:
    metric: str  # "rollback" | "by_2nd" | "within_60s"
    op: str  # "<=" | ">="
    value: float

    def describe(self) -> str:
        what = {"rollback": "false rollback", "by_2nd": "rollback by 2nd window", "within_60s": "within 60 s"}
        return f"{what[self.metric]} {'≤' if self.op == '<=' else '≥'} {self.value:.0%}"

    def met(self, value: float) -> bool:
        return value <= self.value if self.op == "<=" else value >= self.value


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    label: str
    healthy: Traffic
    breach: Traffic | None
    windows: int
    judges: tuple[str, ...]
    target: Target | None
    table: str  # "main" | "sensitivity"
    breach_start: int = 0  # window index where the breach traffic starts
    per_window: int = 30

    def traffic_at(self, w: int) -> Traffic:
        return self.breach if self.breach is not None and w >= self.breach_start else self.healthy

    @property
    def sigma(self) -> float:
        return (self.breach or self.healthy).sigma


TWO = ("sequential", "point")
THREE = ("sequential", "point", "point-min0")
FALSE_1 = Target("rollback", "<=", 0.01)
BY2_99 = Target("by_2nd", ">=", 0.99)
IN60_95 = Target("within_60s", ">=", 0.95)
H = Traffic()  # healthy: p95 0.9 T, no errors, recall 0.5


def _row(
    key: str,
    label: str,
    breach: Traffic | None,
    windows: int,
    target: Target | None,
    *,
    healthy: Traffic = H,
    judges: tuple[str, ...] = TWO,
    table: str = "main",
    per_window: int = 30,
    breach_start: int = 0,
) -> Scenario:
    return Scenario(key, label, healthy, breach, windows, judges, target, table, breach_start, per_window)


def scenarios() -> list[Scenario]:
    """The rows; the list index is the seed block (seed = base + index * 100000 + run)."""
    lat = replace(H, p95_factor=1.5)
    h25 = replace(H, sigma=0.25)
    errors_05 = replace(H, error_rate=0.005)  # a baseline's error rate
    low = {"per_window": 3, "judges": THREE}
    sens: dict[str, Any] = {"healthy": h25, "table": "sensitivity"}
    return [
        _row("healthy-p95", "healthy: p95 0.9xT", None, 360, FALSE_1),
        _row("healthy-err", "healthy: p95 0.9xT, errors 0.5 %", None, 360, FALSE_1, healthy=errors_05),
        _row("clear-p95", "clear: p95 1.5xT", lat, 36, BY2_99),
        _row("clear-err", "clear: 100 % errors", replace(H, error_rate=1.0), 36, BY2_99),
        _row("marg-p95", "marginal: p95 1.25xT", replace(H, p95_factor=1.25), 36, IN60_95),
        _row("marg-recall", "marginal: recall 0.25", replace(H, recall=0.25), 36, IN60_95),
        _row("marg-err", "marginal: errors 5 %", replace(H, error_rate=0.05), 36, IN60_95),
        _row("low-broken", "low 3/w: every req > 2xT", Traffic(None, above_factor=2.0), 72, IN60_95, **low),
        _row("low-p95", "low 3/w: p95 1.5xT", lat, 72, IN60_95, **low),
        _row("low-healthy", "low 3/w: healthy p95 0.9xT", None, 360, FALSE_1, **low),
        _row("late-p95", "extra: p95 1.5xT after 5 min healthy", lat, 96, None, breach_start=60),
        # sensitivity: the latency rows at sigma 0.25 (the sigma 0.5 rows are the main table's)
        _row("healthy-p95/s.25", "healthy: p95 0.9xT", None, 360, FALSE_1, **sens),
        _row("clear-p95/s.25", "clear: p95 1.5xT", replace(h25, p95_factor=1.5), 36, BY2_99, **sens),
        _row("marg-p95/s.25", "marginal: p95 1.25xT", replace(h25, p95_factor=1.25), 36, IN60_95, **sens),
        _row("low-p95/s.25", "low 3/w: p95 1.5xT", replace(h25, p95_factor=1.5), 72, IN60_95, **sens, **low),
        _row("low-healthy/s.25", "low 3/w: healthy p95 0.9xT", None, 360, FALSE_1, **sens, **low),
    ]


SENSITIVITY_PAIRS = [  # (sigma 0.25 row, sigma 0.5 row of the main table)
    ("healthy-p95/s.25", "healthy-p95"),
    ("clear-p95/s.25", "clear-p95"),
    ("marg-p95/s.25", "marg-p95"),
    ("low-p95/s.25", "low-p95"),
    ("low-healthy/s.25", "low-healthy"),
]

# -- traffic -----------------------------------------------------------------------------------------------

_RECALL_TEXT = [f"{k / 10:.1f}" for k in range(11)]
_ERROR_TEXT = ("null", '"backend_error"')
_VALUE = (
    '{"event_id":"%s:%d","request_id":"%s-q%d","ts":%d,"deployment_id":"%s","config_name":"candidate_bench",'
    '"config_version":"1.0.0","config_hash":"bench","arm":"candidate","latency_ms":%r,"recall_at_10":%s,'
    '"result_count":10,"error":%s,"router_id":"bench"}'
)


def deployment_id(seed: int) -> str:
    return f"bench-{seed}"


def generate(sc: Scenario, seed: int, *, batched_arrival: bool = True) -> list[Record]:
    """The run's candidate outcomes as raw ``search_results`` records, offsets in event-time order."""
    rng = np.random.default_rng(seed)
    dep = deployment_id(seed)
    n = sc.per_window
    phases = [(0, sc.windows, sc.healthy)]
    if sc.breach is not None:
        phases = [(0, sc.breach_start, sc.healthy), (sc.breach_start, sc.windows, sc.breach)]
    lat_parts, err_parts, rec_parts = [], [], []
    for first, end, t in phases:
        size = (end - first) * n
        if size <= 0:
            continue
        if t.above_factor is not None:
            lat_parts.append(rng.uniform(t.above_factor * P95_T, 2.0 * t.above_factor * P95_T, size))
        else:
            assert t.p95_factor is not None
            mu = math.log(t.p95_factor * P95_T) - Z95 * t.sigma
            lat_parts.append(np.exp(rng.normal(mu, t.sigma, size)))
        err_parts.append(rng.random(size) < t.error_rate)
        rec_parts.append(rng.binomial(10, t.recall, size))
    latency = np.concatenate(lat_parts).tolist()
    errored = np.concatenate(err_parts)
    recall = np.where(errored, 0, np.concatenate(rec_parts)).tolist()
    errored_l = errored.tolist()
    total = n * sc.windows
    i = np.arange(total)
    ts = (T0 + (i // n) * WINDOW_MS + ((2 * (i % n) + 1) * WINDOW_MS) // (2 * n)).tolist()
    if batched_arrival:
        arrival = [t - t % ARRIVAL_BATCH_MS + ARRIVAL_BATCH_MS + 20 for t in ts]
    else:
        arrival = [t + 20 for t in ts]
    fmt = _VALUE
    out: list[Record] = []
    append = out.append
    for off in range(total):
        value = fmt % (
            dep,
            off,
            dep,
            off,
            ts[off],
            dep,
            latency[off],
            _RECALL_TEXT[recall[off]],
            _ERROR_TEXT[errored_l[off]],
        )
        append(Record("search_results", 0, off, arrival[off], None, value.encode()))
    return out


def start_command(seed: int, judge: str) -> ControlCommand:
    dep = deployment_id(seed)
    snapshot = {"metadata": {"name": "candidate_bench", "version": "1.0.0"}, "slo": slo_section(judge)}
    last_good = {"metadata": {"name": "last_good", "version": "1.0.0"}}
    return ControlCommand(f"start-{dep}", "start", dep, snapshot, None, last_good, 0.1, None, None, "bench", T0 - 1000)


def pipeline(sc: Scenario, judge: str, seed: int, records: Sequence[Record], windows: int) -> PipelineResult:
    """The shipped pipeline over the first ``windows`` windows of the run."""
    return run_pipeline(
        records[: windows * sc.per_window],
        commands=[start_command(seed, judge)],
        horizon_ms=T0 + windows * WINDOW_MS + GRACE_MS + 6000,
    )


def window_index(start_ms: int) -> int:
    return (start_ms - T0) // WINDOW_MS


def one_judge(sc: Scenario, judge: str, seed: int, records: Sequence[Record]) -> dict[str, Any]:
    """One judge on one run. A rollback ends a canary, so a run that rolls back within a prefix is final:
    point judges (cheap to fail early on healthy traffic) try 24 windows first."""
    stages = (24, sc.windows) if JUDGES[judge].get("method") == "point" and sc.windows > 48 else (sc.windows,)
    res: PipelineResult | None = None
    used = 0
    for used in stages:
        res = pipeline(sc, judge, seed, records, used)
        if any(d.type == "rollback" for d in res.decisions):
            break
    assert res is not None
    rollbacks = [d for d in res.decisions if d.type == "rollback"]
    # Issued pauses: the pipeline applies its own decisions (a pause holds), so the judge's later low-traffic
    # decisions on the generated traffic are "not issued: already paused", as live.
    pauses = [d for d in res.decisions if d.type == "pause" and d.issued]
    rb = rollbacks[0] if rollbacks else None
    return {
        "rollback_window": None if rb is None else window_index(rb.window_start_ms),
        "rule": None if rb is None else rb.rule,
        "pauses": [window_index(d.window_start_ms) for d in pauses],
        "not_issued": sum(1 for d in res.decisions if not d.issued),
        "late": res.recomputation.late,
        "windows_fed": used,
        "judged": sum(1 for j in res.judgements if window_index(j.window_start_ms) < used),
    }


_SCENARIOS: list[Scenario] = []


def _task(args: tuple[int, int, int]) -> tuple[int, int, dict[str, dict[str, Any]], float]:
    index, run, base = args
    sc = _SCENARIOS[index]
    seed = base + index * 100_000 + run
    t = time.perf_counter()
    records = generate(sc, seed)
    out = {judge: one_judge(sc, judge, seed, records) for judge in sc.judges}
    return index, run, out, time.perf_counter() - t


# -- summaries ---------------------------------------------------------------------------------------------


def nearest_rank(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def decision_s(delay_windows: float) -> float:
    """Breach start → the rollback can be issued: the triggering window's end + the grace."""
    return delay_windows * WINDOW_MS / 1000 + GRACE_MS / 1000


def summarize(sc: Scenario, judge: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    runs = len(results)
    b = sc.breach_start
    within_w = math.floor((WITHIN_S - GRACE_MS / 1000) / (WINDOW_MS / 1000))  # 11 windows
    rules: Counter[str] = Counter()
    false_rb = 0
    delays: list[float] = []
    paused_first = 0
    first_pause: list[int] = []
    pauses_total = 0
    false_at: list[int] = []
    for r in results:
        w = r["rollback_window"]
        if w is not None:
            rules[RULE_SHORT.get(r["rule"], r["rule"])] += 1
        pauses_before = [p for p in r["pauses"] if w is None or p < w]
        pauses_total += len(r["pauses"])
        if pauses_before:
            paused_first += 1
            first_pause.append(pauses_before[0])
        if sc.breach is None:
            if w is not None:
                false_rb += 1
                false_at.append(w + 1)
            continue
        if w is not None and w < b:
            false_rb += 1
            delays.append(math.inf)  # rolled back before the breach: not a detection
        else:
            delays.append(math.inf if w is None else w - b + 1)
    out: dict[str, Any] = {
        "scenario": sc.key,
        "label": sc.label,
        "judge": judge,
        "slo": slo_section(judge),
        "runs": runs,
        "per_window": sc.per_window,
        "windows": sc.windows,
        "sigma": sc.sigma,
        "rules": dict(rules),
        "paused_first_rate": paused_first / runs,
        "first_pause_window_median": (float(np.median(first_pause)) + 1) if first_pause else None,
        "pauses_per_run": pauses_total / runs,
        "late_outcomes": sum(r["late"] for r in results),
        "not_issued": sum(r["not_issued"] for r in results),
    }
    if sc.breach is None:
        out["false_rollback_rate"] = false_rb / runs
        out["rollback_rate"] = false_rb / runs
        out["false_rollback_window_median"] = float(np.median(false_at)) if false_at else None
    else:
        detected = [d for d in delays if math.isfinite(d)]
        out.update(
            {
                "breach_start_window": b,
                "rollback_before_breach": false_rb / runs,
                "rollback_rate": len(detected) / runs,
                "by_2nd": sum(1 for d in detected if d <= 2) / runs,
                "within_60s": sum(1 for d in detected if d <= within_w) / runs,
                "within_60s_windows": within_w,
                "delay_windows_median": nearest_rank(delays, 0.5),
                "delay_windows_p95": nearest_rank(delays, 0.95),
                "observed_windows_after_breach": sc.windows - b,
            }
        )
        for q in ("median", "p95"):
            d = out[f"delay_windows_{q}"]
            out[f"delay_s_{q}"] = decision_s(d) if math.isfinite(d) else None
            if not math.isfinite(d):
                out[f"delay_windows_{q}"] = None
    if sc.target is not None:
        value = out[sc.target.metric if sc.target.metric != "rollback" else "false_rollback_rate"]
        out["target"] = {"text": sc.target.describe(), "value": value, "met": sc.target.met(value)}
    return out


# -- power calculations with the shipped evidence ------------------------------------------------------------


def k_needed(n: int, q: float, alpha: float) -> int | None:
    """Fewest exceedances among ``n`` for the shipped e-value (log_e_above) to reach 1/alpha."""
    need = math.log(1.0 / alpha)
    if n == 0 or log_e_above(n, n, q) < need:
        return None
    lo, hi = 0, n  # the e-value grows with k
    while lo < hi:
        mid = (lo + hi) // 2
        if log_e_above(n, mid, q) >= need:
            hi = mid
        else:
            lo = mid + 1
    return lo


def rule_rollback_curve(
    per_window: int, rates: Sequence[float], q: float, alpha: float, *, own_window: bool = True
) -> list[float]:
    """P(one rate rule has rolled back by window i), exactly, for that rule alone.

    The pooled count is a sum of Binomial(per_window, rate_i). A window fails when the shipped e-value of
    the pooled count reaches 1/alpha and (``own_window``, as ``judge.window_breaks`` requires) the
    window's own rate is above ``q``; any other window resets the streak; CONSECUTIVE failures roll back.
    """
    windows = len(rates)
    kmax = per_window * windows
    dist = np.zeros((CONSECUTIVE, kmax + 1))
    dist[0, 0] = 1.0
    done = 0.0
    curve: list[float] = []
    for i, rate in enumerate(rates, start=1):
        pmf = stats.binom.pmf(np.arange(per_window + 1), per_window, rate)
        need = k_needed(per_window * i, q, alpha)
        cut = kmax + 1 if need is None else need
        new = np.zeros_like(dist)
        for s in range(CONSECUTIVE):
            for j in np.nonzero(pmf > 1e-300)[0]:
                j = int(j)
                moved = np.zeros(kmax + 1)
                moved[j:] = dist[s, : kmax + 1 - j] * pmf[j]
                breaks = j > q * per_window if own_window else True
                fail = moved.copy()
                fail[: cut if breaks else kmax + 1] = 0.0
                new[0] += moved - fail
                if s + 1 >= CONSECUTIVE:
                    done += float(fail.sum())
                else:
                    new[s + 1] += fail
        dist = new
        curve.append(done)
    return curve


def np_test_k(n: int, q: float, alpha: float) -> int:
    """The most powerful fixed-n level-alpha test of rate <= q (for comparison): reject when k >= this."""
    k = 0
    while stats.binom.sf(k - 1, n, q) > alpha:
        k += 1
    return k


def power_rows(scs: Sequence[Scenario]) -> list[dict[str, Any]]:
    alpha = 1.0 - DEFAULT_CONFIDENCE
    within_w = math.floor((WITHIN_S - GRACE_MS / 1000) / (WINDOW_MS / 1000))
    out: list[dict[str, Any]] = []
    for sc in scs:
        phases = [sc.traffic_at(w) for w in range(sc.windows)]
        checks: list[tuple[str, float, list[float], float]] = []
        bad = sc.breach
        if bad is None or bad.p_exceed() > 0.05:
            checks.append(("p95_ms", 0.05, [t.p_exceed() for t in phases], (bad or sc.healthy).p_exceed()))
        if any(t.error_rate > 0 for t in phases):
            checks.append(("error_rate", ERROR_T, [t.error_rate for t in phases], (bad or sc.healthy).error_rate))
        for rule, q, rates, p in checks:
            curve = rule_rollback_curve(sc.per_window, rates, q, alpha)
            pooled = rule_rollback_curve(sc.per_window, rates, q, alpha, own_window=False)
            n1 = sc.per_window
            k1, k2 = k_needed(n1, q, alpha), k_needed(2 * n1, q, alpha)
            b = sc.breach_start if bad is not None else 0
            row: dict[str, Any] = {
                "scenario": sc.key,
                "table": sc.table,
                "rule": rule,
                "rate_threshold": q,
                "per_request_rate": p,
                "per_window": n1,
                "k_needed_window1": k1,
                "k_needed_window2_pooled": k2,
                "log_e_needed": math.log(1 / alpha),
            }
            if bad is None:
                row["rollback_by_end"] = curve[-1]
                row["pooled_only_rollback_by_end"] = pooled[-1]
                row["windows"] = sc.windows
            else:
                row["p_fail_window1"] = float(stats.binom.sf(k1 - 1, n1, p)) if k1 is not None and b == 0 else None
                row["rollback_by_2nd"] = curve[b + 1] - (curve[b - 1] if b > 0 else 0.0)
                row["rollback_within_60s"] = curve[min(b + within_w, sc.windows) - 1] - (curve[b - 1] if b > 0 else 0.0)
                row["rollback_by_end"] = curve[-1]
                row["pooled_only_rollback_by_2nd"] = pooled[b + 1] - (pooled[b - 1] if b > 0 else 0.0)
                row["pooled_only_rollback_within_60s"] = pooled[min(b + within_w, sc.windows) - 1] - (
                    pooled[b - 1] if b > 0 else 0.0
                )
                kn = np_test_k(n1, q, alpha)
                row["fixed_n_test_k"] = kn
                row["fixed_n_test_power_window1"] = float(stats.binom.sf(kn - 1, n1, p))
            out.append(row)
    return out


# -- checks ----------------------------------------------------------------------------------------------


def _fingerprint(res: PipelineResult, until: int) -> list[Any]:
    js = [
        (j.window_start_ms, sorted(j.outcomes.items()), sorted(j.streaks.items()), j.insufficient_windows)
        for j in res.judgements
        if window_index(j.window_start_ms) < until
    ]
    ds = [(d.type, d.window_start_ms, d.rule) for d in res.decisions if window_index(d.window_start_ms) < until]
    return [js, ds]


def self_check(scs: Sequence[Scenario], base: int) -> dict[str, Any]:
    """Arrival batching and prefix runs change no verdict; the generated values are valid outcomes."""
    by_key = {s.key: s for s in scs}
    picks = ["clear-p95", "marg-p95", "marg-err", "marg-recall", "low-p95", "low-healthy", "healthy-err"]
    same = total = 0
    prefix_same = prefix_total = 0
    for i, key in enumerate(picks):
        if key not in by_key:
            continue
        sc = replace(by_key[key], windows=min(by_key[key].windows, 48))
        seed = base - 1 - i
        batched = generate(sc, seed)
        plain = generate(sc, seed, batched_arrival=False)
        for rec in batched[:: max(1, len(batched) // 50)]:
            assert rec.value is not None
            SearchOutcome.from_dict(json.loads(rec.value))  # the strict reference parser
        for judge in sc.judges:
            a = pipeline(sc, judge, seed, batched, sc.windows)
            b = pipeline(sc, judge, seed, plain, sc.windows)
            total += 1
            same += _fingerprint(a, sc.windows) == _fingerprint(b, sc.windows)
            p = pipeline(sc, judge, seed, batched, 24)
            prefix_total += 1
            prefix_same += _fingerprint(p, 24) == _fingerprint(a, 24)
    return {
        "arrival_batching_identical": same,
        "arrival_batching_compared": total,
        "prefix_identical": prefix_same,
        "prefix_compared": prefix_total,
    }


# -- output ----------------------------------------------------------------------------------------------


def pct(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f} %"


def delay_text(row: dict[str, Any], q: str) -> str:
    if "delay_windows_median" not in row:
        return "-"
    w = row[f"delay_windows_{q}"]
    if w is None:
        return f"> {row['observed_windows_after_breach']} w"
    return f"{w:g} w / {row[f'delay_s_{q}']:g} s"


def paused_text(row: dict[str, Any]) -> str:
    if row["paused_first_rate"] == 0:
        return "0 %"
    first = row["first_pause_window_median"]
    text = f"{pct(row['paused_first_rate'])} @ {decision_s(first):g} s"
    if row["pauses_per_run"] > 1.05:
        text += f", {row['pauses_per_run']:.1f}/run"
    return text


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Any]]) -> str:
    cells = [[h for h, _ in columns]] + [[f(r) for _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def rollback_text(r: dict[str, Any]) -> str:
    if "false_rollback_rate" in r:
        text = f"false {pct(r['false_rollback_rate'])}"
        if r["false_rollback_window_median"] is not None:
            text += f" (median at {decision_s(r['false_rollback_window_median']):g} s)"
        return text
    text = pct(r["rollback_rate"])
    if r["rollback_before_breach"]:
        text += f" (+{pct(r['rollback_before_breach'])} before)"
    return text


def target_text(r: dict[str, Any]) -> str:
    t = r.get("target")
    if t is None:
        return "-"
    return f"{t['text']}: {'met' if t['met'] else 'MISSED'}"


def rules_text(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(r["rules"].items(), key=lambda kv: -kv[1])) or "-"


MAIN_COLUMNS: list[tuple[str, Any]] = [
    ("scenario", lambda r: r["label"]),
    ("judge", lambda r: r["judge"]),
    ("runs", lambda r: str(r["runs"])),
    ("rollback", rollback_text),
    ("by 2nd w", lambda r: pct(r.get("by_2nd"))),
    ("<= 60 s", lambda r: pct(r.get("within_60s"))),
    ("delay median", lambda r: delay_text(r, "median")),
    ("delay p95", lambda r: delay_text(r, "p95")),
    ("paused (insufficient data)", paused_text),
    ("rolled back by", rules_text),
    ("target", target_text),
]


def power_text(power: Sequence[dict[str, Any]], rows: dict[tuple[str, str], dict[str, Any]]) -> str:
    lines = []
    for p in power:
        rule = RULE_SHORT[p["rule"]]
        mc = rows.get((p["scenario"], "sequential"), {})
        head = f"{p['scenario']:<18} {rule:<4} rate/request {p['per_request_rate']:.4f} vs {p['rate_threshold']:g}:"
        k1, k2 = p["k_needed_window1"], p["k_needed_window2_pooled"]
        need = f"k >= {k1} of {p['per_window']}" if k1 is not None else f"impossible with {p['per_window']}"
        need2 = f"k >= {k2} of {2 * p['per_window']}" if k2 is not None else "impossible"
        if "p_fail_window1" not in p:
            lines.append(
                f"{head} needs {need} (1st window), {need2} pooled (2nd); "
                f"P(this rule ever rolls back in {p['windows']} windows) = {p['rollback_by_end']:.2e}"
                f" [MC, all rules: {pct(mc.get('false_rollback_rate'))}]"
            )
            continue
        w1 = "" if p["p_fail_window1"] is None else f"P(fail 1st window) = {p['p_fail_window1']:.3f}; "
        lines.append(
            f"{head} needs {need} (1st window), {need2} pooled (2nd); {w1}"
            f"P(rollback by 2nd) = {p['rollback_by_2nd']:.3f}, within 60 s = {p['rollback_within_60s']:.3f}"
            f" [MC, all rules: {pct(mc.get('by_2nd'))}, {pct(mc.get('within_60s'))}; pooled e alone:"
            f" {p['pooled_only_rollback_by_2nd']:.3f}, {p['pooled_only_rollback_within_60s']:.3f}];"
            f" fixed-n 1-window test at 1 %: k >= {p['fixed_n_test_k']}, power {p['fixed_n_test_power_window1']:.3f}"
        )
    return "\n".join(lines)


def text_report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    by = {(r["scenario"], r["judge"]): r for r in rows}
    main = [r for r in rows if r["table"] == "main"]
    out = [
        "Decision quality of the shipped judge (canary.pipeline.run.run_pipeline), seeded Monte Carlo",
        f"runs per row {result['runs']}, base seed {result['base_seed']}; 30 candidate outcomes per 5 s window unless"
        " '3/w'; T = 1200 ms, recall >= 0.30, error_rate <= 0.01, consecutive_buckets 2, confidence 0.99",
        "latency lognormal, sigma 0.5 (log-scale sd) in this table; recall@10 Binomial(10, mean)/10, healthy mean"
        " 0.50; errors recall 0.0; breach rows start breaching at window 1 (the extra row after 5 min)",
        "delay = breach windows until the triggering window (incl.) / seconds until the rollback can be issued"
        " (window end + 1 s grace); '<= 60 s' = within 11 windows; censored runs count as never",
        "the pipeline applies its own decisions (a pause holds, is issued once), but the generated traffic goes"
        " on after one; 'paused' = runs paused for insufficient data before any rollback (live, such a canary"
        " stays paused and gets no traffic)",
        "",
        table(main, MAIN_COLUMNS),
        "",
        "Sensitivity to the latency spread (latency rows; sigma 0.5 rows are the main table's runs):",
    ]
    sens_rows = []
    for s25, s50 in SENSITIVITY_PAIRS:
        for key in (s25, s50):
            sens_rows.extend(r for r in rows if r["scenario"] == key)
    sens_cols: list[tuple[str, Any]] = [
        ("scenario", lambda r: r["label"]),
        ("sigma", lambda r: f"{r['sigma']:g}"),
        ("P(lat>T)", lambda r: f"{r['p_latency_above_threshold']:.3f}"),
        ("judge", lambda r: r["judge"]),
        ("runs", lambda r: str(r["runs"])),
        ("rollback", rollback_text),
        ("by 2nd w", lambda r: pct(r.get("by_2nd"))),
        ("<= 60 s", lambda r: pct(r.get("within_60s"))),
        ("delay median", lambda r: delay_text(r, "median")),
        ("delay p95", lambda r: delay_text(r, "p95")),
        ("paused", paused_text),
        ("target", target_text),
    ]
    out.append(table(sens_rows, sens_cols))
    out += [
        "",
        "Power of the sequential rate rules, exact, each rule alone: a window fails when the shipped log_e_above of"
        " the pooled count reaches log(1/0.01) = 4.61 ('k' = exceedances or errors needed) and the window's own"
        " rate is above the rule's (judge.window_breaks); 'pooled e alone' drops the second condition:",
        power_text(result["power"], by),
        "",
        "point (min_samples 20) at 3 samples/window: every rule is 'inconclusive' (n=3 < 20) and the point streak"
        " ignores inconclusive windows, so it can never roll back; the low-traffic counter pauses the canary"
        " after inconclusive_limit=12 windows (61 s). point-min0 judges the 3 values as they are.",
        f"checks: arrival batching changed no verdict in {result['checks']['arrival_batching_identical']}"
        f"/{result['checks']['arrival_batching_compared']} compared runs; prefix runs agreed in"
        f" {result['checks']['prefix_identical']}/{result['checks']['prefix_compared']};"
        f" late outcomes {sum(r['late_outcomes'] for r in rows)}; decisions not issued"
        f" {sum(r['not_issued'] for r in rows)}",
        f"wall {result['wall_s']:.0f} s with {result['workers']} worker processes ({result['task_cpu_s']:.0f} s in"
        f" runs); load average {result['machine']['loadavg_at_start']} -> {result['machine']['loadavg_at_end']};"
        f" code {result['code']} (canary/ sha256 {result['canary_sources_sha256']}"
        + (", CHANGED on disk during the run)" if result["canary_sources_changed_during_run"] else ")"),
        "s per run (all judges of a scenario): "
        + ", ".join(f"{k} {v:.2f}" for k, v in result["cpu_s_per_run"].items()),
    ]
    return "\n".join(out)


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "canary"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in canary/' if dirty else ''}"


def source_digest() -> str:
    """What the workers judge with: the canary package as it was on disk (they fork after importing it)."""
    root = Path(__file__).resolve().parents[1] / "canary"
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n\n")[0] if __doc__ else "bench_decisions")
    parser.add_argument("--runs", type=int, default=None, help=f"runs per row (default {DEFAULT_RUNS})")
    parser.add_argument("--quick", action="store_true", help=f"smoke check: {QUICK_RUNS} runs per row")
    parser.add_argument("--seed", type=int, default=BASE_SEED, help=f"base seed (default {BASE_SEED})")
    parser.add_argument("--workers", type=int, default=MAX_WORKERS, help="worker processes (at most 2)")
    parser.add_argument("--save", type=Path, default=None, help="also write the JSON document to this file")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="append each finished run to this JSONL file and take over the runs already in it (same seeds, same"
        " canary/ sources), so an interrupted run resumes",
    )
    parser.add_argument("--only", default="", help="comma-separated scenario keys (default: all)")
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    workers = max(1, min(MAX_WORKERS, args.workers))
    all_scs = scenarios()
    only = {k for k in args.only.split(",") if k}
    unknown = only - {s.key for s in all_scs}
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; have {', '.join(s.key for s in all_scs)}")
    for judge in JUDGES:
        policy_from_slo_section(slo_section(judge))  # the sections are valid as written
    started = time.perf_counter()
    info = machine()
    code_at_start, sources_at_start = code_version(), source_digest()
    _SCENARIOS[:] = all_scs
    selected = [i for i, s in enumerate(all_scs) if not only or s.key in only]

    log("self-check: arrival batching and prefix runs against the plain pipeline")
    checks = self_check([all_scs[i] for i in selected], args.seed)
    log(f"self-check: {checks}")

    results: dict[tuple[int, str], list[tuple[int, dict[str, Any]]]] = {}
    task_cpu = 0.0
    cpu_by_scenario: dict[int, float] = {}

    def take(index: int, run: int, out: dict[str, dict[str, Any]], spent: float) -> None:
        nonlocal task_cpu
        task_cpu += spent
        cpu_by_scenario[index] = cpu_by_scenario.get(index, 0.0) + spent
        for judge, r in out.items():
            results.setdefault((index, judge), []).append((run, r))

    stamp = {"base_seed": args.seed, "canary_sources_sha256": sources_at_start}
    resumed = set()
    if args.checkpoint is not None and args.checkpoint.exists():
        for line in args.checkpoint.read_text().splitlines():
            try:
                c = json.loads(line)
                index, run = int(c["index"]), int(c["run"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill
            if (
                all(c.get(k) == v for k, v in stamp.items())
                and index in selected
                and c.get("scenario") == all_scs[index].key
                and run < runs
                and (index, run) not in resumed
            ):
                resumed.add((index, run))
                take(index, run, c["results"], float(c["spent_s"]))
        log(f"checkpoint {args.checkpoint}: {len(resumed)} runs taken over (same seeds and canary/ sources)")
    cost = {i: all_scs[i].windows * (1 + len(all_scs[i].judges)) for i in selected}
    tasks = [
        (i, run, args.seed)
        for i in sorted(selected, key=lambda i: -cost[i])
        for run in range(runs)
        if (i, run) not in resumed
    ]
    log(f"{len(tasks)} runs to do ({len(selected)} scenarios x {runs}), {workers} worker processes")
    ctx = mp.get_context("fork")
    last = loop_start = time.perf_counter()
    sink = None if args.checkpoint is None else args.checkpoint.open("a")
    try:
        with ctx.Pool(workers) as pool:
            for done, (index, run, out, spent) in enumerate(pool.imap_unordered(_task, tasks, chunksize=4), start=1):
                take(index, run, out, spent)
                if sink is not None:
                    line = {**stamp, "scenario": all_scs[index].key, "index": index, "run": run}
                    sink.write(json.dumps({**line, "spent_s": spent, "results": out}) + "\n")
                    sink.flush()
                now = time.perf_counter()
                if now - last >= 20 or done == len(tasks):
                    last = now
                    el = now - loop_start
                    log(f"{done}/{len(tasks)} runs, {el:.0f} s, ~{el / done * (len(tasks) - done):.0f} s to go")
    finally:
        if sink is not None:
            sink.close()
    rows = []
    for i in selected:
        sc = all_scs[i]
        for judge in sc.judges:
            rs = [r for _, r in sorted(results[(i, judge)], key=lambda x: x[0])]
            row = summarize(sc, judge, rs)
            row["table"] = sc.table
            row["p_latency_above_threshold"] = (sc.breach or sc.healthy).p_slow()
            row["traffic"] = {
                "healthy": sc.healthy.to_dict(),
                "breach": None if sc.breach is None else sc.breach.to_dict(),
            }
            rows.append(row)
    cpu_per_run = {all_scs[i].key: cpu_by_scenario.get(i, 0.0) / runs for i in selected}
    power = power_rows([all_scs[i] for i in selected])
    info["loadavg_at_end"] = loadavg()
    result = {
        "benchmark": "bench_decisions",
        "runs": runs,
        "base_seed": args.seed,
        "seed_rule": "base + scenario index * 100000 + run; every judge of a scenario sees the same traffic",
        "workers": workers,
        "settings": {
            "window_ms": WINDOW_MS,
            "grace_ms": GRACE_MS,
            "p95_threshold_ms": P95_T,
            "recall_threshold": RECALL_T,
            "error_rate_threshold": ERROR_T,
            "arrival_batch_ms": ARRIVAL_BATCH_MS,
            "recall_model": "Binomial(10, mean) / 10 per labeled request; errored requests recall 0.0",
            "latency_model": "lognormal, median = p95 / exp(1.645 sigma)",
            "judges": {j: policy_from_slo_section(slo_section(j)).to_dict() for j in JUDGES},
        },
        "scenarios": {all_scs[i].key: all_scs[i].label for i in selected},
        "rows": rows,
        "power": power,
        "checks": checks,
        "machine": info,
        "code": code_at_start,
        "canary_sources_sha256": sources_at_start,
        "canary_sources_changed_during_run": source_digest() != sources_at_start,
        "cpu_count": os.cpu_count(),
        "task_cpu_s": task_cpu,
        "resumed_runs": len(resumed),
        "cpu_s_per_run": cpu_per_run,
        "wall_s": time.perf_counter() - started,
    }
    if args.save is not None:
        args.save.write_text(json.dumps(result, indent=2, default=str) + "\n")
    emit(result, text_report(result), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
