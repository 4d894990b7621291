"""Replay for post-mortems and rule backtesting: reading topics or dumps, comparison and rendering.

The windows, verdicts and decisions themselves are the decision pipeline's (:mod:`canary.pipeline`: the
same code the live worker runs); replay feeds it and compares what it gives with what happened live.
Kafka-free: :mod:`~canary.replay.compare` (vs live, backtest changes), :mod:`~canary.replay.postmortem`
(the report), :mod:`~canary.replay.dumpfile` (dumps); ``--rules`` files are read by
:mod:`canary.config.rules`. Kafka: :mod:`~canary.replay.reader` only.
"""

from canary.replay.compare import Difference, LiveDecision, backtest_changes, compare_decisions, compare_windows
from canary.replay.postmortem import run_replay
from canary.replay.span import SpanData

__all__ = [
    "Difference",
    "LiveDecision",
    "SpanData",
    "backtest_changes",
    "compare_decisions",
    "compare_windows",
    "run_replay",
]
