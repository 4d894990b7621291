"""Replay for post-mortems and rule backtesting.

Kafka-free: :mod:`~canary.replay.decode` (records → outcomes), :mod:`~canary.replay.recompute`
(windows, verdicts, decisions with the live core), :mod:`~canary.replay.compare` (vs live, backtest
changes), :mod:`~canary.replay.postmortem` (the report); ``--rules`` files are read by
:mod:`canary.config.rules`.
Kafka: :mod:`~canary.replay.reader` only.
"""

from canary.replay.compare import Difference, LiveDecision, backtest_changes, compare_decisions, compare_windows
from canary.replay.decode import OutcomeDecoder, ReplayOutcome, SourceRecord
from canary.replay.postmortem import run_replay
from canary.replay.recompute import (
    Recomputation,
    ReplayDecision,
    ReplaySettings,
    read_bounds,
    recompute,
    span_bounds,
)
from canary.replay.span import SpanData

__all__ = [
    "Difference",
    "LiveDecision",
    "OutcomeDecoder",
    "Recomputation",
    "ReplayDecision",
    "ReplayOutcome",
    "ReplaySettings",
    "SourceRecord",
    "SpanData",
    "backtest_changes",
    "compare_decisions",
    "compare_windows",
    "read_bounds",
    "recompute",
    "run_replay",
    "span_bounds",
]
