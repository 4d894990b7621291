"""The native batch decoder (native/, canary_native) against the reference, and the window core fed by it.

The reference is the Python path: ``OutcomeDecoder.decode`` record by record and ``WindowFinalizer.add``. The
native path must never accept what the reference refuses, must read every accepted record exactly as the
reference does, and must leave the window core in the same state with the same results (issue #24).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canary.core import wire
from canary.core.columns import OUTCOME, SKIPPED, WATERMARK
from canary.core.models import RouterWatermark, SearchOutcome
from canary.core.windows import WindowFinalizer, request_key
from canary.pipeline import decode as decode_module
from canary.pipeline.decode import OutcomeDecoder
from tests.core.test_windows_columnar import stream

pytestmark = pytest.mark.skipif(decode_module.NATIVE is None, reason="canary_native is not built (no cargo)")

BASE = 1_700_000_000_000
REFERENCE = OutcomeDecoder()


def outcome(i: int, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "event_id": f"e{i}",
        "request_id": f"q{i}",
        "ts": BASE + i,
        "deployment_id": "dep-a",
        "config_name": "cfg.v2",
        "config_version": "2",
        "config_hash": "abc",
        "arm": "candidate",
        "latency_ms": 123.25,
        "recall_at_10": 0.5,
        "result_count": 10,
        "error": None,
        "router_id": "router-1",
        "recall_source": "labels",
        "user_group": 3,
    }
    d.update(over)
    return d


def raw(d: Any) -> bytes:
    return json.dumps(d).encode()


MUTATIONS: list[tuple[str, Any]] = [
    ("plain", lambda d: raw(d)),
    ("compact", lambda d: json.dumps(d, separators=(",", ":")).encode()),
    ("spaced", lambda d: b"  " + json.dumps(d, indent=2).encode() + b"\n "),
    ("no user_group", lambda d: raw({k: v for k, v in d.items() if k != "user_group"})),
    ("no recall_source", lambda d: raw({k: v for k, v in d.items() if k != "recall_source"})),
    ("exact sample", lambda d: raw({**d, "recall_source": "exact_sample"})),
    ("source without recall", lambda d: raw({**d, "recall_at_10": None})),
    ("no recall", lambda d: raw({**d, "recall_at_10": None, "recall_source": None})),
    ("bad source", lambda d: raw({**d, "recall_source": "guess"})),
    ("ring", lambda d: raw({**d, "ring": "internal"})),
    ("bad ring", lambda d: raw({**d, "ring": "in ternal"})),
    ("null ring", lambda d: raw({**d, "ring": None})),
    ("metrics", lambda d: raw({**d, "metrics": {"ndcg": 0.5}})),
    ("null metrics", lambda d: raw({**d, "metrics": None})),
    ("empty metrics", lambda d: raw({**d, "metrics": {}})),
    ("missing deployment", lambda d: raw({k: v for k, v in d.items() if k != "deployment_id"})),
    ("null deployment", lambda d: raw({**d, "deployment_id": None})),
    ("missing error", lambda d: raw({k: v for k, v in d.items() if k != "error"})),
    ("missing recall", lambda d: raw({k: v for k, v in d.items() if k != "recall_at_10"})),
    ("missing ts", lambda d: raw({k: v for k, v in d.items() if k != "ts"})),
    ("error", lambda d: raw({**d, "error": "timeout"})),
    ("empty error", lambda d: raw({**d, "error": ""})),
    ("unknown field", lambda d: raw({**d, "shard": 7})),
    ("kind on outcome", lambda d: raw({**d, "kind": "watermark"})),
    ("duplicate field", lambda d: raw(d)[:-1] + b', "latency_ms": 5.0}'),
    ("duplicate ts", lambda d: raw(d)[:-1] + b', "ts": 1}'),
    ("float ts", lambda d: raw({**d, "ts": float(d["ts"])})),
    ("exponent ts", lambda d: raw(d).replace(str(d["ts"]).encode(), b"1.7e12")),
    ("negative ts", lambda d: raw({**d, "ts": -1})),
    ("huge ts", lambda d: raw({**d, "ts": 253_402_300_800_000})),
    ("last ts", lambda d: raw({**d, "ts": 253_402_300_799_999})),
    ("zero ts", lambda d: raw({**d, "ts": 0})),
    ("string ts", lambda d: raw({**d, "ts": str(d["ts"])})),
    ("bool ts", lambda d: raw({**d, "ts": True})),
    ("int latency", lambda d: raw({**d, "latency_ms": 250})),
    ("big int latency", lambda d: raw({**d, "latency_ms": 2**53 + 1})),
    ("huge int latency", lambda d: raw({**d, "latency_ms": 10**30})),
    ("overflow latency", lambda d: raw(d).replace(b"123.25", b"1e400")),
    ("tiny latency", lambda d: raw(d).replace(b"123.25", b"4.9e-324")),
    ("long latency", lambda d: raw(d).replace(b"123.25", b"123.2500000000000000000000000000000000001")),
    ("negative zero", lambda d: raw(d).replace(b"123.25", b"-0.0")),
    ("negative latency", lambda d: raw({**d, "latency_ms": -1.0})),
    ("string latency", lambda d: raw({**d, "latency_ms": "1"})),
    ("NaN latency", lambda d: raw(d).replace(b"123.25", b"NaN")),
    ("recall 1", lambda d: raw({**d, "recall_at_10": 1})),
    ("recall above 1", lambda d: raw({**d, "recall_at_10": 1.0000001})),
    ("recall negative", lambda d: raw({**d, "recall_at_10": -0.1})),
    ("group 15", lambda d: raw({**d, "user_group": 15})),
    ("group 16", lambda d: raw({**d, "user_group": 16})),
    ("group -1", lambda d: raw({**d, "user_group": -1})),
    ("float group", lambda d: raw({**d, "user_group": 1.0})),
    ("result count negative", lambda d: raw({**d, "result_count": -1})),
    ("result count huge", lambda d: raw({**d, "result_count": 2**63})),
    ("result count max", lambda d: raw({**d, "result_count": 2**63 - 1})),
    ("bad arm", lambda d: raw({**d, "arm": "control"})),
    ("last_good arm", lambda d: raw({**d, "arm": "last_good"})),
    ("empty event", lambda d: raw({**d, "event_id": ""})),
    ("empty request", lambda d: raw({**d, "request_id": ""})),
    ("unicode request", lambda d: raw({**d, "request_id": "ünï-ʀeq"})),
    ("raw unicode request", lambda d: json.dumps({**d, "request_id": "ünï-ʀeq"}, ensure_ascii=False).encode()),
    ("escaped request", lambda d: raw(d).replace(b'"q', b'"\\u0071')),
    ("escaped name", lambda d: raw(d).replace(b'"router-1"', b'"\\u0072outer-1"')),
    ("escaped key", lambda d: raw(d).replace(b'"latency_ms"', b'"latency\\u005fms"')),
    ("lone surrogate", lambda d: raw(d).replace(b'"q', b'"\\ud800q')),
    ("invalid utf-8", lambda d: raw(d).replace(b'"q', b'"\xff')),
    ("name too long", lambda d: raw({**d, "config_name": "c" * 129})),
    ("name at limit", lambda d: raw({**d, "config_name": "c" * 128})),
    ("name starts with dash", lambda d: raw({**d, "router_id": "-r"})),
    ("name with bar", lambda d: raw({**d, "deployment_id": "a|b"})),
    ("name with at", lambda d: raw({**d, "config_name": "a@b"})),
    ("non-ascii name", lambda d: raw({**d, "config_name": "cfé"})),
    ("config_version number", lambda d: raw({**d, "config_version": 2})),
    ("trailing garbage", lambda d: raw(d) + b"x"),
    ("two objects", lambda d: raw(d) + raw(d)),
    ("array", lambda d: raw([d])),
    ("not json", lambda d: b"{nope"),
    ("empty", lambda d: b""),
    ("too large", lambda d: raw({**d, "config_hash": "h" * 70_000})),
    ("deep", lambda d: raw({**d, "metrics": {"a": [[[[[[[[[1]]]]]]]]]}})),
    (
        "watermark",
        lambda d: raw(
            {"router_id": "router-1", "watermark_ms": BASE, "status": "running", "seq": 4, "kind": "watermark"}
        ),
    ),
    (
        "watermark stop",
        lambda d: raw({"router_id": "r2", "watermark_ms": BASE, "status": "stop", "seq": 0, "kind": "watermark"}),
    ),
    (
        "watermark bad status",
        lambda d: raw({"router_id": "r", "watermark_ms": BASE, "status": "x", "seq": 1, "kind": "watermark"}),
    ),
    (
        "watermark bad kind",
        lambda d: raw({"router_id": "r", "watermark_ms": BASE, "status": "start", "seq": 1, "kind": "mark"}),
    ),
    (
        "watermark extra",
        lambda d: raw(
            {"router_id": "r", "watermark_ms": BASE, "status": "start", "seq": 1, "kind": "watermark", "x": 1}
        ),
    ),
    (
        "watermark negative seq",
        lambda d: raw({"router_id": "r", "watermark_ms": BASE, "status": "start", "seq": -1, "kind": "watermark"}),
    ),
    (
        "watermark escaped kind",
        lambda d: b'{"router_id":"r","watermark_ms":5,"status":"start","seq":1,"\\u006bind":"watermark"}',
    ),
]


def native_rows(values: list[bytes | None]) -> Any:
    decoder = OutcomeDecoder(native="on")
    assert decoder.native is not None
    from canary.core.models import MAX_EPOCH_MS
    from canary.core.split import USER_GROUPS

    return decoder.native.decode_batch(values, max_bytes=64 << 10, max_epoch_ms=MAX_EPOCH_MS, user_groups=USER_GROUPS)


def reference(value: bytes | None) -> SearchOutcome | RouterWatermark | None:
    try:
        return REFERENCE.decode(value)
    except Exception:
        return None


def check_rows(values: list[bytes | None]) -> list[int]:
    """Assert the native decoder's reading of every row against the reference; returns the status per row."""
    packed, keys, routers, raw_marks = native_rows(values)
    rows = np.frombuffer(packed, dtype=decode_module.ROW)
    status, ts, latency, recall = rows["status"], rows["ts"], rows["latency"], rows["recall"]
    errored, exact, group = rows["errored"], rows["exact_sample"], rows["user_group"]
    key, router, request = rows["key"], rows["router"], rows["request"]
    marks = {m[0]: m for m in raw_marks}
    for row, value in enumerate(values):
        ref = reference(value)
        if status[row] == OUTCOME:
            assert isinstance(ref, SearchOutcome), (row, value)
            assert int(ts[row]) == ref.ts
            assert float(latency[row]).hex() == float(ref.latency_ms).hex()  # bit for bit, -0.0 included
            if ref.recall_at_10 is None:
                assert np.isnan(recall[row])
            else:
                assert float(recall[row]).hex() == float(ref.recall_at_10).hex()
            assert bool(errored[row]) == (ref.error is not None)
            assert bool(exact[row]) == (ref.recall_source == "exact_sample")
            assert int(group[row]) == (-1 if ref.user_group is None else ref.user_group)
            dep, config, arm, ring = keys[key[row]]
            assert (dep, config, arm, ring) == (ref.deployment_id, ref.config_name, ref.arm, ref.ring)
            assert routers[router[row]] == ref.router_id
            assert int(request[row]) == request_key(ref.deployment_id, ref.request_id)
            assert ref.metrics is None
        elif status[row] == WATERMARK:
            _, code, mark, mark_status, seq = marks[row]
            assert ref == RouterWatermark(routers[code], mark, mark_status, seq), (row, value)  # type: ignore[arg-type]
    return status.tolist()


def test_the_native_decoder_reads_every_record_as_the_reference_or_leaves_it_to_it() -> None:
    values: list[bytes | None] = [None, b"null", b"1", b'"s"']
    names = []
    for i, (name, mutate) in enumerate(MUTATIONS):
        values.append(mutate(outcome(i)))
        names.append(name)
    status = check_rows(values)
    by_name = dict(zip(names, status[4:], strict=True))
    # The native path must carry the ordinary shapes itself, or it gains nothing.
    for name in ("plain", "compact", "spaced", "exact sample", "ring", "null metrics", "error", "unicode request"):
        assert by_name[name] == OUTCOME, name
    for name in ("escaped request", "raw unicode request", "int latency", "last ts", "zero ts"):
        assert by_name[name] == OUTCOME, name
    assert by_name["watermark"] == WATERMARK and by_name["watermark stop"] == WATERMARK
    assert status[:4] == [2, 2, 2, 2]


@pytest.mark.parametrize("seed", range(6))
def test_random_byte_damage_is_never_read_differently(seed: int) -> None:
    """Flipped, dropped and inserted bytes in valid records: whatever the native decoder accepts, the
    reference accepts with the same values."""
    rng = random.Random(seed)
    alphabet = b'{}[]":,0123456789.eE+-\\u abcnlrtsfx\xff'
    values: list[bytes | None] = []
    for i in range(3000):
        data = bytearray(raw(outcome(i, latency_ms=rng.lognormvariate(5, 1), user_group=rng.randrange(16))))
        for _ in range(rng.choice([1, 1, 2, 3])):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[at] = rng.choice(alphabet)
            elif action < 0.7:
                del data[at]
            else:
                data.insert(at, rng.choice(alphabet))
        values.append(bytes(data))
    status = check_rows(values)
    assert status.count(OUTCOME) > 100  # damage in a value's digits still decodes: the comparison is exercised


# -- the window core fed by columns -------------------------------------------------------------------------------


def record_stream(
    seed: int, *, watermarking: float, marks: float = 0.03, stops: float = 0.05
) -> list[tuple[int, int, list[bytes | None]]]:
    """The columnar tests' seeded stream (tests/core/test_windows_columnar.py: watermarking and legacy producers,
    skew, stalls, futures, redeliveries, late outcomes) as raw values, with what those outcomes lack: rings, user
    groups, sampled recall, now and then a poison record or an outcome with metrics (which sends its batch down
    the object path)."""
    rng = random.Random(seed + 1000)
    out: list[tuple[int, int, list[bytes | None]]] = []
    for partition, now, batch in stream(seed, watermarking=watermarking, marks=marks, stops=stops):
        values: list[bytes | None] = []
        for item in batch:
            if isinstance(item, RouterWatermark):
                values.append(msgspec.json.encode(item))
                continue
            if rng.random() < 0.01:
                values.append(rng.choice([None, b"{", b'{"event_id": 1}', b"[]"]))  # poison
            d = item.to_dict()
            if d["arm"] == "candidate" and rng.random() < 0.2:
                d["ring"] = "internal"
            d["user_group"] = rng.choice([None, rng.randrange(16)])
            if d["recall_at_10"] is not None:
                d["recall_source"] = rng.choice(["labels", "exact_sample", None])
            if rng.random() < 0.003:
                d["metrics"] = {"ndcg": rng.random()}
            values.append(raw(d))
        out.append((partition, now, values))
    return out


def drive(
    seed: int,
    watermarking: float,
    *,
    native: bool,
    columnar_min: int = 64,
    marks: float = 0.03,
    stops: float = 0.05,
) -> dict[str, Any]:
    decoder = OutcomeDecoder(native="on" if native else "off")
    fin = WindowFinalizer()
    fin.columnar_min = columnar_min
    log: list[Any] = []
    paths = {"columns": 0, "objects": 0}
    for partition, now, values in record_stream(seed, watermarking=watermarking, marks=marks, stops=stops):
        columns, refused = decoder.decode_columns(values)
        if columns is not None:
            paths["columns"] += 1
            res = fin.add_columns(partition, columns, now)
            rejected = sorted(row for row, _ in refused)
        else:
            paths["objects"] += 1
            items, rejected = [], []
            for row, value in enumerate(values):
                try:
                    items.append(decoder.decode(value))
                except Exception:
                    rejected.append(row)
            res = fin.add(partition, items, now)
        log.append((rejected, [o.event_id for o in res.late], [o.event_id for o in res.future], res.duplicates))
        log.append(res.watermarks)
        log.append([w.to_dict() for w in fin.due(now)])
    log.append([w.to_dict() for w in fin.flush_all(BASE + 10**7)])
    return {"log": log, "state": fin.to_dict(), "paths": paths}


@pytest.mark.parametrize("columnar_min", [0, 64, 10**9])  # rows columnar always, by size (the default), never
@pytest.mark.parametrize("watermarking", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(8))
def test_columns_and_objects_leave_the_same_windows_and_state(
    seed: int, watermarking: float, columnar_min: int
) -> None:
    objects = drive(seed, watermarking, native=False)  # the reference: objects, the default threshold
    columns = drive(seed, watermarking, native=True, columnar_min=columnar_min)
    assert columns["log"] == objects["log"]
    assert columns["state"] == objects["state"]
    assert columns["paths"]["columns"] > 0


@pytest.mark.parametrize("columnar_min", [0, 64])
@pytest.mark.parametrize("watermarking", [0.5, 1.0])
def test_a_batch_cut_by_watermark_records_in_one_pass_leaves_what_the_objects_leave(
    watermarking: float, columnar_min: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watermark records as often as a live router's (every few dozen outcomes): where every outcome's producer is
    live, a batch goes through the columnar path once (``WindowFinalizer._add_between_marks``) instead of once
    between each two records; stops, skew, futures, redeliveries and late outcomes leave what the object path,
    cut at every record, leaves."""
    taken: list[bool] = []
    one_pass = WindowFinalizer._add_between_marks

    def spy(self: WindowFinalizer, *args: Any) -> bool:
        taken.append(one_pass(self, *args))
        return taken[-1]

    monkeypatch.setattr(WindowFinalizer, "_add_between_marks", spy)
    for seed in range(8):
        objects = drive(seed, watermarking, native=False, marks=0.25, stops=0.01)
        columns = drive(seed, watermarking, native=True, columnar_min=columnar_min, marks=0.25, stops=0.01)
        assert columns["log"] == objects["log"], seed
        assert columns["state"] == objects["state"], seed
    assert any(taken) and not all(taken)  # both: batches in one pass, and batches it leaves to the cut path


def test_without_the_extension_on_is_an_error_and_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from canary.errors import ConfigError

    monkeypatch.setattr(decode_module, "NATIVE", None)
    with pytest.raises(ConfigError, match="CANARY_NATIVE=on"):
        OutcomeDecoder(native="on")
    decoder = OutcomeDecoder(native="auto")
    assert decoder.decode_columns([raw(outcome(1))]) == (None, [])


def test_a_refused_row_is_skipped_and_reported_with_the_reference_reason() -> None:
    decoder = OutcomeDecoder(native="on")
    columns, refused = decoder.decode_columns([raw(outcome(1)), b"{", None, raw(outcome(2))])
    assert columns is not None
    assert columns.status.tolist() == [OUTCOME, SKIPPED, SKIPPED, OUTCOME]
    assert [(row, exc.code) for row, exc in refused] == [(1, "not_json"), (2, "no_value")]  # type: ignore[attr-defined]


def test_a_row_the_aggregator_raises_on_is_quarantined_as_its_outcome_and_the_rest_counted() -> None:
    """Column rows carry no object; when folding them raises, the finalizer decodes them to find the culprit."""
    from canary.core.aggregations import OutcomeColumns, WindowAggregate, WindowAggregator

    class Picky(WindowAggregator):
        def agg_parts(
            self,
            state: WindowAggregate,
            parts: Sequence[OutcomeColumns],
            carriers: Any = (),
            max_offset: int | None = None,
        ) -> WindowAggregate:
            if any((columns.latency == 666.0).any() for columns in parts):
                raise RuntimeError("cannot fold 666 ms")
            return super().agg_parts(state, parts, carriers, max_offset)

    fin = WindowFinalizer(aggregator=Picky())
    values = [raw(outcome(i, ts=BASE + 10 * i, latency_ms=100.0)) for i in range(100)]
    values.append(raw(outcome(999, ts=BASE + 2000, latency_ms=666.0)))
    columns, refused = OutcomeDecoder(native="on").decode_columns(values)
    assert columns is not None and not refused
    fin.add_columns(0, columns, BASE + 3000)
    windows = fin.flush_all(BASE + 10_000)
    assert [w.response_count for w in windows] == [100]
    assert [(o.request_id, why) for o, why in fin.quarantined] == [
        ("q999", "the window aggregator raised RuntimeError: cannot fold 666 ms")
    ]


# -- hostile input, generated ---------------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
_FIELDS = [*outcome(0), "metrics", "ring", "kind", "watermark_ms", "status", "seq"]


@st.composite
def hostile_values(draw: st.DrawFn) -> bytes | None:
    """Outcomes with fields dropped, added or retyped; any JSON; deep nesting; arbitrary bytes; tombstones."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        d = outcome(draw(st.integers(0, 10**6)))
        for name in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
            if draw(st.booleans()):
                d.pop(name, None)
            else:
                d[name] = draw(_JSON)
        return raw(d)
    if kind == 1:
        return raw(draw(_JSON))
    if kind == 2:
        depth = draw(st.integers(1, 300))
        return b'{"event_id":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:
        return draw(st.binary(max_size=300))
    return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_values(), min_size=1, max_size=12))
def test_any_batch_decodes_to_rows_the_reference_agrees_with_or_to_typed_rejections(values: list[bytes | None]) -> None:
    """Whatever the batch holds, decode_columns returns (it never raises): rows the reference reads alike, rows it
    refuses with a typed rejection, or the whole batch handed back to the record-by-record path."""
    check_rows(values)
    columns, refused = OutcomeDecoder(native="on").decode_columns(values)
    for _row, exc in refused:
        assert isinstance(exc, wire.Rejected)
    if columns is not None:
        assert sorted(r for r, _ in refused) == np.flatnonzero(columns.status == SKIPPED).tolist()


def test_an_extension_that_raises_hands_the_batch_to_the_reference() -> None:
    """A bug in the extension (a Rust panic reaches Python as an exception) must not end a consumer loop."""
    import types

    def panics(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("panicked at src/lib.rs")

    decoder = OutcomeDecoder(native="on")
    decoder.native = types.SimpleNamespace(decode_batch=panics, FALLBACK=2, ROW_BYTES=56)  # type: ignore[assignment]
    assert decoder.decode_columns([raw(outcome(1))]) == (None, [])


def _rows(batch: Any) -> list[tuple[Any, ...]]:
    """Every row as the window core reads it: codes resolved to their keys and routers."""
    out = []
    for i in range(len(batch)):
        key = batch.keys[batch.key[i]] if batch.key[i] >= 0 else None
        router = batch.routers[batch.router[i]] if batch.router[i] >= 0 else None
        out.append(
            (
                int(batch.status[i]), int(batch.ts[i]), float(batch.latency[i]), repr(float(batch.recall[i])),
                bool(batch.errored[i]), bool(batch.exact_sample[i]), int(batch.user_group[i]), key, router,
                int(batch.request[i]), batch.watermarks.get(i), batch.values[i],
            )
        )  # fmt: skip
    return out


@pytest.mark.parametrize("seed", range(6))
def test_batches_decoded_apart_and_joined_are_the_batch_decoded_at_once(seed: int) -> None:
    """Replay decodes a partition's chunks apart (one ahead, in a thread) and carries an unfinished batch's rows
    into the next chunk: ``take`` and ``concat`` must give the rows decoding them together gives, with the key
    and router codes of the second batch renumbered and its watermark rows shifted."""
    rng = random.Random(seed)
    values: list[bytes | None] = []
    for i in range(rng.randint(5, 60)):
        roll = rng.random()
        if roll < 0.1:
            values.append(raw({"kind": "watermark", "router_id": f"r{i % 3}", "watermark_ms": BASE + i,
                               "status": "running", "seq": i}))  # fmt: skip
        elif roll < 0.15:
            values.append(rng.choice([b"{", None, b"[]"]))
        else:
            d = outcome(i, router_id=f"router-{rng.randrange(4)}", deployment_id=rng.choice(["dep-a", "dep-b", None]))
            values.append(raw({**d, "arm": rng.choice(["candidate", "last_good"])}))
    native = OutcomeDecoder(native="on")
    whole, whole_refused = native.decode_columns(values)
    assert whole is not None
    cut = rng.randint(0, len(values))
    first, first_refused = native.decode_columns(values[:cut])
    second, second_refused = native.decode_columns(values[cut:])
    if first is None or second is None:  # an empty side: nothing to join
        assert cut in (0, len(values))
        return
    joined = type(whole).concat(first, second, values, None)
    assert _rows(joined) == _rows(whole)
    joined_refused = first_refused + [(row + cut, exc) for row, exc in second_refused]
    assert [(row, str(exc)) for row, exc in joined_refused] == [(row, str(exc)) for row, exc in whole_refused]
    rows = sorted(rng.sample(range(len(values)), rng.randint(0, len(values))))
    assert _rows(whole.take(rows)) == [_rows(whole)[r] for r in rows]


def test_batches_decode_alike_in_threads() -> None:
    """The native decoder releases the GIL on batches of 512 rows or more (replay decodes a chunk ahead in a
    thread): batches decoded in threads at once give the rows each gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    native = OutcomeDecoder(native="on")
    batches = [[raw(outcome(i + 1000 * b, router_id=f"router-{b}")) for i in range(800)] for b in range(6)]
    alone = [_rows(native.decode_columns(values)[0]) for values in batches]
    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda values: _rows(native.decode_columns(values)[0]), batches * 3))
    assert together == alone * 3


# -- the one-pass reader against serde_json ---------------------------------------------------------------------
# The extension reads the ordinary outcome in one pass (native/src/scan.rs) and hands every other value to its
# serde_json reader; `scan_agrees` says, per value, whether the pass declined (0), read what serde reads (1), or
# read something serde reads otherwise or refuses (2: a bug). The reference checks above cover both readers'
# rows against the Python decoder; these check the pass against serde, value by value.

_ORDINARY = (
    "plain", "compact", "spaced", "exact sample", "ring", "null ring", "null metrics", "error", "empty error",
    "raw unicode request", "int latency", "last ts", "zero ts", "no user_group", "no recall_source", "no recall",
    "missing ts", "name too long", "bad arm",
)  # fmt: skip
_DECLINED = (
    "negative zero", "unicode request", "escaped request", "escaped key", "duplicate field", "unknown field",
    "float ts", "exponent ts", "metrics", "empty metrics", "big int latency", "overflow latency", "NaN latency",
    "invalid utf-8", "lone surrogate", "trailing garbage", "two objects", "watermark",
)  # fmt: skip


def test_the_one_pass_reader_reads_the_ordinary_outcome_and_leaves_the_rest_to_serde() -> None:
    native = decode_module.NATIVE
    assert native is not None
    values = [mutate(outcome(i)) for i, (_name, mutate) in enumerate(MUTATIONS)]
    by_name = dict(zip([name for name, _ in MUTATIONS], native.scan_agrees(values), strict=True))
    assert 2 not in by_name.values(), [name for name, seen in by_name.items() if seen == 2]
    # Read by the pass (values the windows stage then validates as it validates serde's: a bad arm is read here
    # and refused there); a missing required field, an escape, a negative zero are serde's to decide.
    assert {name for name in _ORDINARY if by_name[name] != 1} == {"missing ts"}
    assert {name for name in _DECLINED if by_name[name] != 0} == set()


_NUMERIC = ("ts", "latency_ms", "recall_at_10", "result_count", "user_group")
_TEXTS = ("request_id", "event_id", "config_name", "error", "router_id")
_DIGITS = "0123456789"


@st.composite
def number_tokens(draw: st.DrawFn) -> str:
    """JSON numbers and near-misses: signs, leading zeros, fractions, exponents, long digit runs."""
    token = draw(st.sampled_from(["", "-", "+"])) + draw(st.text(_DIGITS, min_size=1, max_size=22))
    if draw(st.booleans()):
        token += "." + draw(st.text(_DIGITS, max_size=22))
    if draw(st.booleans()):
        token += (
            draw(st.sampled_from("eE")) + draw(st.sampled_from(["", "+", "-"])) + draw(st.text(_DIGITS, max_size=4))
        )
    return token


_WS = st.text(" \t\n\r", max_size=2)


@st.composite
def outcome_texts(draw: st.DrawFn) -> bytes:
    """An outcome written by hand: fields in any order, any whitespace, number tokens and strings of any kind, a
    field now and then left out or repeated."""
    tokens = {name: json.dumps(v) for name, v in outcome(draw(st.integers(0, 10**6))).items()}
    for name in draw(st.lists(st.sampled_from(_NUMERIC), max_size=3)):
        tokens[name] = draw(number_tokens())
    for name in draw(st.lists(st.sampled_from(_TEXTS), max_size=2)):
        tokens[name] = json.dumps(draw(st.text(max_size=12)), ensure_ascii=draw(st.booleans()))
    items = draw(st.permutations(list(tokens.items())))
    if draw(st.booleans()):
        items = items[1:] if draw(st.booleans()) else [*items, items[0]]
    body = ",".join(f"{draw(_WS)}{json.dumps(k)}{draw(_WS)}:{draw(_WS)}{v}{draw(_WS)}" for k, v in items)
    return f"{draw(_WS)}{{{body}}}{draw(_WS)}".encode()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(outcome_texts() | hostile_values().filter(lambda v: v is not None), min_size=1, max_size=8))
def test_the_one_pass_reader_never_reads_a_value_otherwise_than_serde(values: list[bytes]) -> None:
    native = decode_module.NATIVE
    assert native is not None
    assert 2 not in native.scan_agrees(values)
    check_rows(list(values))  # and the rows, whichever reader read them, are the reference's
