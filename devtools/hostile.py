"""Hostile records: what an attacker or a fault can put on any canary topic, built from valid samples.

One generator for the property tests (fed by hypothesis' seeded ``random`` strategy) and for the
real-broker flood (fed by a seeded ``random.Random``): deep nesting, huge strings, JSON that is not an
object, NaN/Infinity literals, wrong types, invalid UTF-8, lone surrogates, null values, binary garbage,
truncated and mutated copies of valid records. ``hostile(rng, sample)`` returns the raw value of one
record (``None`` is a null value).
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Mapping
from typing import Any

from canary.core.merge import Progress, partial_of
from canary.core.models import ControlCommand, SearchOutcome
from canary.core.windows import WindowFinalizer
from canary.pipeline.decode import OutcomeDecoder, as_core_outcomes
from canary.pipeline.loop import PipelineDecision
from canary.pipeline.run import PipelineResult, Record, run_pipeline

T0 = 1_800_000_000_000
W = 5000

Raw = bytes | None
Sample = Mapping[str, Any]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (any type, bounded nesting)."""
    kind = rng.randrange(10 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, -(2**63), 2**64 + 7, 10**30])
    if kind == 3:
        return rng.choice([0.0, -0.0, 1.5, -1e300, 1e308, 5e-324])
    if kind == 4:
        return rng.choice(["", "x", "a|b", "d@1", "\x00", "é", "\u202e", "x" * rng.randrange(1, 300)])
    if kind == 5:
        return rng.choice(["candidate", "last_good", "watermark", "partial", "progress", "start", "rollback"])
    if kind in (6, 7):
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "kind", "type", "x", ""]): _random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([33, 65, 200, 1000, 3000, 20_000])
    style = rng.randrange(3)
    if style == 0:
        return b"[" * depth + b"]" * depth
    if style == 1:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"event_id": "x", "evidence": ' + b"[" * depth + b"]" * depth + b"}"


def _with_literal(rng: random.Random, sample: Sample, literal: bytes) -> bytes:
    """``sample`` as JSON with one field's value replaced by ``literal`` (any bytes, JSON or not)."""
    return _dumps(_field_set(rng, sample, "\u00a7")).replace(b'"\\u00a7"', literal)


def _field_set(rng: random.Random, sample: Sample, value: Any) -> dict[str, Any]:
    out = dict(sample)
    if out:
        out[rng.choice(sorted(out))] = value
    return out


def _mutators() -> list[Callable[[random.Random, Sample], Raw]]:
    def deep(rng: random.Random, sample: Sample) -> Raw:
        return _deep(rng)

    def deep_field(rng: random.Random, sample: Sample) -> Raw:
        depth = rng.choice([20, 40, 300, 2000])
        return _with_literal(rng, sample, b"[" * depth + b"1" + b"]" * depth)

    def huge_string(rng: random.Random, sample: Sample) -> Raw:
        return _dumps(_field_set(rng, sample, "x" * rng.choice([70_000, 300_000, 1_100_000, 9_000_000])))

    def not_object(rng: random.Random, sample: Sample) -> Raw:
        return rng.choice([b"1", b'"s"', b"null", b"true", b"[1]", b"[]", b"1e999", b"-0", b"[{}]", _dumps([sample])])

    def nan(rng: random.Random, sample: Sample) -> Raw:
        return _with_literal(rng, sample, rng.choice([b"NaN", b"Infinity", b"-Infinity"]))

    def wrong_type(rng: random.Random, sample: Sample) -> Raw:
        return _dumps(_field_set(rng, sample, _random_json(rng)))

    def bad_utf8(rng: random.Random, sample: Sample) -> Raw:
        raw = bytearray(_dumps(sample))
        raw[rng.randrange(len(raw))] = rng.choice([0xFF, 0xFE, 0xC3, 0x80, 0xED])
        return bytes(raw)

    def lone_surrogate(rng: random.Random, sample: Sample) -> Raw:
        return _with_literal(rng, sample, b'"\\ud800x"')

    def null_value(rng: random.Random, sample: Sample) -> Raw:
        return None

    def garbage(rng: random.Random, sample: Sample) -> Raw:
        return rng.randbytes(rng.randrange(0, 2000))

    def truncated(rng: random.Random, sample: Sample) -> Raw:
        raw = _dumps(sample)
        return raw[: rng.randrange(len(raw))]

    def dropped(rng: random.Random, sample: Sample) -> Raw:
        out = dict(sample)
        if out:
            del out[rng.choice(sorted(out))]
        return _dumps(out)

    def big_number(rng: random.Random, sample: Sample) -> Raw:
        literal = rng.choice([b"1" * 5000, b"1e400", b"-1e400", b"18446744073709551617", b"-1"])
        return _with_literal(rng, sample, literal)

    def duplicate_keys(rng: random.Random, sample: Sample) -> Raw:
        raw = _dumps(sample)
        return raw[:-1] + b', "' + rng.choice(sorted(sample) or ["x"]).encode() + b'": {"dup": [1, 2]}}'

    def wide(rng: random.Random, sample: Sample) -> Raw:
        return b"[" + b"[]," * rng.choice([1000, 100_000]) + b"[]]"

    return [
        deep,
        deep_field,
        huge_string,
        not_object,
        nan,
        wrong_type,
        wrong_type,
        wrong_type,
        bad_utf8,
        lone_surrogate,
        null_value,
        garbage,
        truncated,
        dropped,
        big_number,
        duplicate_keys,
        wide,
    ]


MUTATORS = _mutators()


def hostile(rng: random.Random, sample: Sample) -> Raw:
    """One hostile record value derived from ``sample`` (a valid record of the topic)."""
    return rng.choice(MUTATORS)(rng, sample)


# -- valid samples of every record kind ------------------------------------------------------------------------
def _start() -> ControlCommand:
    snapshot = {"metadata": {"name": "cand", "version": "1.0.0"}, "slo": {"p95_ms": 1200, "recall_at_10": 0.3}}
    return ControlCommand(
        "start-d1", "start", "d1", snapshot, None, {"metadata": {"name": "lg"}}, 0.1, None, None, "t", T0 - 1000
    )


def _outcome(i: int, arm: str = "candidate", latency: float = 2000.0) -> dict[str, Any]:
    return SearchOutcome(
        event_id=f"r:{arm}:{i}",
        request_id=f"{arm}{i}",
        ts=T0 + i * 100,
        deployment_id="d1",
        config_name="cand" if arm == "candidate" else "lg",
        config_version="1",
        config_hash="h",
        arm=arm,  # type: ignore[arg-type]
        latency_ms=latency,
        recall_at_10=0.5,
        result_count=10,
        error=None,
        router_id="router-1",
        metrics={"ndcg_at_10": 0.4},
        user_group=i % 16,  # so the sample windows, partials and checkpoints carry per-group counts too
    ).to_dict()


def _records() -> list[Record]:
    return [
        Record("search_results", 0, i, T0 + i * 100 + 10, None, json.dumps(_outcome(i, arm)).encode())
        for i in range(200)
        for arm in ("candidate", "last_good")
    ]


@functools.cache
def _pipeline() -> PipelineResult:
    """Slow candidate traffic through the public pipeline: windows, judgements and a rollback."""
    return run_pipeline(_records(), commands=[_start()], horizon_ms=T0 + 6 * W)


def sample_decisions() -> list[PipelineDecision]:
    """The rollbacks the slow sample traffic earns, with their evidence (what a rollback command carries)."""
    return [d for d in _pipeline().decisions if d.type == "rollback"]


def samples() -> dict[str, list[dict[str, Any]]]:
    """Valid records of every kind, produced by the real pipeline where one produces them."""
    records = _records()
    result = _pipeline()
    windows = [w.to_dict() for w in result.recomputation.windows]
    judgements = [j.to_dict() for j in result.recomputation.judgements]
    fin = WindowFinalizer(size_ms=W, grace_ms=1000)
    decoder = OutcomeDecoder()
    fin.add(0, as_core_outcomes([decoder.decode(r.value) for r in records[:100]]), T0)
    closed = fin.due_closed(T0 + 60_000)
    partials = [partial_of(c, c.aggregate, 0).to_dict() for c in closed] + [Progress(0, T0 + W).to_dict()]
    return {
        "outcome": [
            _outcome(1),
            {"kind": "watermark", "router_id": "router-1", "watermark_ms": T0, "status": "running", "seq": 3},
        ],
        "request": [
            {"request_id": "q1", "query": "hello", "collection": "docs", "user_id": "u1", "relevant_ids": ["1"]}
        ],
        "control": [_start().to_dict()],
        "window": windows[:3],
        "judgement": judgements[:3],
        "partial": partials[:3],
        "state": [
            {
                "router_id": "router-1",
                "deployment_id": "d1",
                "status": "running",
                "active_config": "lg",
                "last_good": "lg",
                "candidate_config": "cand",
                "weight": 0.1,
                "answers_command_id": None,
                "applied_at_ms": T0,
                "seq": 1,
                "heartbeat": True,
                "failsafe": None,
            }
        ],
        "checkpoint": [fin.to_dict()],
        "dead_letter": [
            {"reason": "not_json", "detail": "x", "source_topic": "t", "partition": 0, "offset": 1, "raw": "{"}
        ],
    }
