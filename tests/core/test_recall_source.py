"""Recall without labels (issue #14, part 3), Kafka-free: the outcome's ``recall_source``, its count per
source in window stats, and the judge on sparse sampled recall."""

from __future__ import annotations

import json

import msgspec.structs
import pytest

from canary.core.aggregations import WindowAggregator, WindowStats
from canary.core.judge import DeploymentJudge
from canary.core.models import SearchOutcome, WindowKey, WindowResult
from canary.core.slo import default_policy
from canary.errors import InvalidEvent
from canary.pipeline.decode import OutcomeDecoder
from canary.pipeline.policies import aggregator_for_policy
from tests.core.helpers import outcome, outcome_dict


def sampled(ts: int, recall: float | None, **kw: object) -> SearchOutcome:
    o = outcome(ts, recall_at_10=recall, **kw)  # type: ignore[arg-type]
    return msgspec.structs.replace(o, recall_source="exact_sample" if recall is not None else None)


# -- the outcome contract -------------------------------------------------------------------------------------


def test_a_recall_without_a_source_reads_as_labels_and_no_recall_has_no_source() -> None:
    old = outcome_dict(recall_at_10=0.7)
    del old["recall_source"]  # a record of a router from before the field
    assert SearchOutcome.from_dict(old).recall_source == "labels"
    assert SearchOutcome.from_dict(outcome_dict(recall_at_10=None, recall_source=None)).recall_source is None
    assert outcome(1, recall_at_10=None).to_dict()["recall_source"] is None


def test_an_exact_sample_round_trips() -> None:
    o = sampled(5, 0.4)
    assert o.to_dict()["recall_source"] == "exact_sample"
    assert SearchOutcome.from_dict(json.loads(json.dumps(o.to_dict()))) == o


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"recall_source": "oracle"}, "recall_source: must be one of labels, exact_sample or null, got 'oracle'"),
        ({"recall_source": 3}, "recall_source: must be one of"),
        ({"recall_at_10": None, "recall_source": "exact_sample"}, "recall_source: given without a recall_at_10"),
    ],
)
def test_a_hostile_recall_source_is_refused_naming_field_and_value(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidEvent, match=message.replace("(", r"\(")):
        SearchOutcome.from_dict(outcome_dict(**overrides))


def test_the_constructor_refuses_a_source_without_recall() -> None:
    with pytest.raises(InvalidEvent, match="recall_source"):
        msgspec.structs.replace(outcome(1, recall_at_10=None), recall_source="exact_sample")


@pytest.mark.parametrize(
    "overrides",
    [
        {"recall_source": "exact_sample", "recall_at_10": 0.3},
        {"recall_source": "labels", "recall_at_10": 1.0},
        {"recall_source": None, "recall_at_10": None},
        {"recall_source": "exact_sample", "recall_at_10": None},
        {"recall_source": "bogus", "recall_at_10": 0.5},
        {"recall_source": ["labels"], "recall_at_10": 0.5},
    ],
)
def test_the_fast_decoder_agrees_with_the_reference_path(overrides: dict[str, object]) -> None:
    raw = json.dumps(outcome_dict(**overrides)).encode()
    results = []
    for strict in (False, True):
        try:
            d = OutcomeDecoder(strict=strict).decode(raw)
            results.append(("ok", getattr(d, "recall_source", None), getattr(d, "recall_at_10", None)))
        except InvalidEvent as exc:
            results.append(("err", str(exc), None))
    assert results[0] == results[1]


def test_the_fast_decoder_reads_a_missing_source_as_labels() -> None:
    d = outcome_dict(recall_at_10=0.5)
    del d["recall_source"]
    decoded = OutcomeDecoder().decode(json.dumps(d).encode())
    assert getattr(decoded, "recall_source", None) == "labels"


# -- window stats ---------------------------------------------------------------------------------------------


def test_windows_count_recall_values_per_source_and_merge_them() -> None:
    agg = WindowAggregator()
    batch = [outcome(1, recall_at_10=1.0), outcome(2, recall_at_10=None), sampled(3, 0.2), sampled(4, 0.4)]
    state = agg.agg(agg.initialize(), batch)
    assert state.recall_samples == 3 and state.recall_sources == (("exact_sample", 2), ("labels", 1))
    result = agg.result(state, WindowKey("dep-1", "cand", "candidate"), 0, 5000)
    assert result.stats is not None and result.stats["recall_source"] == {"exact_sample": 2, "labels": 1}
    assert result.recall_at_10 == pytest.approx((1.0 + 0.2 + 0.4) / 3)
    stats = WindowStats.from_dict(result.stats)
    assert stats.merge(stats).recall_sources == (("exact_sample", 4), ("labels", 2))
    # the aggregate's own (checkpointed) state keeps them too, split or merged in any order
    assert type(state).from_dict(state.to_dict()) == state
    halves = agg.merge(agg.agg(agg.initialize(), batch[:2]), agg.agg(agg.initialize(), batch[2:]))
    assert halves.recall_sources == state.recall_sources


def test_windows_without_recall_keep_their_exact_json() -> None:
    agg = WindowAggregator()
    state = agg.agg(agg.initialize(), [outcome(1, recall_at_10=None)])
    assert "recall_source" not in state.stats.to_dict()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"oracle": 1}, "unknown source 'oracle'"),
        ({"labels": 0}, "expected a positive count"),
        ({"labels": True}, "expected a positive count"),
        ({"labels": 5}, "must add up to the recall samples"),
        (["labels"], "expected an object"),
    ],
)
def test_hostile_recall_source_counts_are_refused(bad: object, message: str) -> None:
    agg = WindowAggregator()
    good = agg.agg(agg.initialize(), [outcome(1, recall_at_10=0.5)]).stats.to_dict()
    with pytest.raises(InvalidEvent, match=message):
        WindowStats.from_dict({**good, "recall_source": bad})


# -- the judge on sparse sampled recall -------------------------------------------------------------------------


def _window(index: int, recalls: list[float | None], n: int = 40) -> WindowResult:
    """A candidate window of ``n`` fast unlabeled requests, ``recalls`` of them carrying a sampled recall."""
    agg = aggregator_for_policy(default_policy())
    start = index * 5000
    outcomes = [sampled(start + i, r) for i, r in enumerate(recalls)]
    outcomes += [outcome(start + 1000 + i, 50.0, recall_at_10=None) for i in range(n - len(recalls))]
    state = agg.agg(agg.initialize(), outcomes)
    return agg.result(state, WindowKey("dep-1", "cand", "candidate"), start, start + 5000, (), start + 6000)


def test_sparse_exact_samples_roll_back_a_low_recall_candidate_across_windows_without_samples() -> None:
    judge = DeploymentJudge("dep-1", default_policy())
    decisions = []
    reasons: list[str] = []
    for i in range(60):
        # 4 samples in every third window only (35 values of 0.1 are evidence enough against 0.30)
        recalls: list[float | None] = [0.1] * 4 if i % 3 == 0 else []
        for j in judge.observe(_window(i, recalls), i * 5000 + 6000):
            v = next(v for v in j.window.verdicts if v.rule == "recall_at_10")
            reasons.append(v.outcome)
            if j.decision is not None:
                decisions.append((i, j.decision))
        if decisions:
            break
    assert decisions, reasons
    i, decision = decisions[0]
    assert decision.rule == "recall_at_10" and decision.type == "rollback"
    windows = decision.evidence["windows"]
    assert len(windows) == 2 and all(w["recall_source"] == {"exact_sample": 4} for w in windows)
    assert all(w["evidence"]["recall_source"]["exact_sample"] >= 32 for w in windows)
    assert windows[1]["window_start"] > windows[0]["window_start"]  # two sampled windows, quiet ones between
    # a window without a sample neither failed nor broke the streak
    assert reasons[-1] == "fail" and reasons[-2] == "inconclusive"


def test_a_window_without_samples_is_no_news_for_the_recall_rule() -> None:
    judge = DeploymentJudge("dep-1", default_policy())
    judge.observe(_window(0, [0.9] * 30), 6000)
    (j,) = judge.observe(_window(1, []), 11_000)
    v = next(v for v in j.window.verdicts if v.rule == "recall_at_10")
    assert v.outcome == "inconclusive" and v.reason.startswith("no recall_at_10 values in this window")
    latency = next(v for v in j.window.verdicts if v.rule == "p95_ms")
    assert latency.outcome != "inconclusive" or "no candidate outcomes" not in latency.reason


def test_watch_says_when_recall_comes_from_exact_samples() -> None:
    from canary.ops.watch import format_window

    assert "recall@10=0.10 (exact 4/4)" in format_window(_window(0, [0.1] * 4))
    assert "recall@10=  - " in format_window(_window(1, []))
