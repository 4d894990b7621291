"""The bounded decoder: its codes, its depth scan, and that every legitimate record kind fits its limits
with room to spare (the limits are measured here, not guessed)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from canary.config import PresetStore
from canary.core import wire
from canary.core.deployment import snapshot_hash
from canary.core.models import ControlCommand
from canary.pipeline.native import NATIVE
from devtools import hostile
from devtools.signing import OPERATOR, ROOT

PRESETS = PresetStore(ROOT / "configs" / "presets")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (None, "no_value"),
        (b"x" * 70_000, "too_large"),
        (b"[" * 9 + b"]" * 9, "too_deep"),
        (b'{"a": ' * 9 + b"1" + b"}" * 9, "too_deep"),
        (b"\xff", "not_utf8"),
        (b'"\\udc80"', "not_utf8"),
        (b"{", "not_json"),
        (b"1" * 5000, "not_json"),
        (b"[1]", "not_object"),
        (b"null", "not_object"),
    ],
)
def test_rejections_carry_their_code(raw: bytes | None, code: str) -> None:
    with pytest.raises(wire.Rejected) as info:
        wire.decode_object(raw, wire.OUTCOME)
    assert info.value.code == code


def test_brackets_inside_strings_do_not_count_and_nan_is_read() -> None:
    value = wire.decode_object(b'{"a": "[[[[[[[[[[[[[[[[", "b": NaN, "c": "\\"[[[[[[[[["}', wire.OUTCOME)
    assert value["a"] == "[" * 16 and value["b"] != value["b"]


def test_depth_scan_is_linear_on_hostile_escapes() -> None:
    # '"' followed by '\"' pairs: a backtracking regex would take quadratic time here.
    raw = b'"' + b'\\"' * 400_000
    assert wire.depth_of(raw) == 0
    assert wire.depth_of(b"[" * 10_000) == 10_000
    assert wire.depth_of(b'["\\\\", [["\\"[[["]]]') == 3  # an escaped backslash ends its run; \" does not close


def test_dead_letters_are_bounded_and_typed() -> None:
    dead = wire.dead_letter(
        "too_deep", "nested", source_topic="t", partition=1, offset=7, raw=b"[" * 50_000 + b"\xff", at_ms=5
    )
    assert dead["reason"] == "too_deep" and dead["raw_bytes"] == 50_001 and len(dead["raw"]) == wire.RAW_KEPT_CHARS
    assert json.loads(json.dumps(dead)) == dead
    assert set(wire.DEAD_LETTER_REASONS) >= {*wire.REJECT_CODES, "future_ts", "quarantined"}


def test_wide_records_are_refused_before_parsing() -> None:
    with pytest.raises(wire.Rejected) as info:
        wire.decode(b"[" + b"[]," * 100_000 + b"[]]", wire.WINDOW)
    assert info.value.code == "too_large" and "arrays/objects" in info.value.detail
    assert wire.structure_of(b'{"a": "[[[[", "b": [[], {}]}') == (3, 4)


def _start(preset: str) -> dict[str, Any]:
    snapshot = PRESETS.get(preset).to_dict()
    cmd = ControlCommand(
        "start-1",
        "start",
        "dep-1",
        snapshot,
        snapshot_hash(snapshot),
        PRESETS.get("last_good").to_dict(),
        0.1,
        None,
        None,
        "cli:alice",
        hostile.T0,
    )
    return OPERATOR.sign_command(cmd)


def _legitimate() -> dict[str, tuple[wire.Limits, list[Any]]]:
    samples = hostile.samples()
    starts = [_start(name) for name in PRESETS.names()]
    rollbacks = [
        OPERATOR.sign_command(
            ControlCommand(
                d.command_id,
                "rollback",
                d.deployment_id,
                None,
                None,
                None,
                0.0,
                d.reason,
                {**d.evidence, "config_name": "cand", "triggering_window": d.window_id},
                "slo-agent",
                hostile.T0,
            )
        )
        for d in hostile.sample_decisions()
    ]
    assert rollbacks, "the sample traffic must produce a rollback with its evidence"
    return {
        "control": (wire.CONTROL, starts + rollbacks),
        "outcome": (wire.OUTCOME, samples["outcome"]),
        "request": (wire.REQUEST, samples["request"]),
        "window": (wire.WINDOW, samples["window"]),
        "judgement": (wire.JUDGEMENT, samples["judgement"]),
        "partial": (wire.PARTIAL, samples["partial"]),
        "state": (wire.ROUTER_STATE, samples["state"]),
        "checkpoint": (wire.CHECKPOINT, samples["checkpoint"]),
    }


@pytest.mark.parametrize("kind", sorted(_legitimate()))
def test_legitimate_records_fit_their_limits_with_room(kind: str) -> None:
    limits, values = _legitimate()[kind]
    for value in values:
        raw = json.dumps(value).encode()
        depth, containers = wire.structure_of(raw)
        assert wire.decode_object(raw, limits) == json.loads(raw)
        assert len(raw) * 4 <= limits.max_bytes, (kind, len(raw))
        assert depth * 2 <= limits.max_depth, (kind, depth)
        assert limits.max_containers is None or containers * 4 <= limits.max_containers, (kind, containers)


def test_the_largest_legitimate_window_fits() -> None:
    """Every latency bin of the sketch and every recall bin in use, plus 16 custom percentile sketches."""
    sketch = {"relative_accuracy": 0.005, "max_bins": 2048, "zero": 0, "bins": [[i, 1] for i in range(2049)]}
    stats = {
        "count": 10**6,
        "error_count": 0,
        "sketch": sketch,
        "exceed": {"1200": 1},
        "recall_hist": [[i, 1] for i in range(1001)],
        "custom": {f"m{i}": {"kind": "p99", "sketch": sketch} for i in range(16)},
    }
    window = {**hostile.samples()["window"][0], "stats": stats}
    _, containers = wire.structure_of(json.dumps(window).encode())
    assert containers * 2 <= wire.WINDOW.max_containers  # type: ignore[operator]
    wire.decode_object(json.dumps(window).encode(), wire.WINDOW)


native_only = pytest.mark.skipif(NATIVE is None, reason="the native extension is not built (no cargo)")
# Bytes rich in what the scan looks at: brackets, quotes, runs of backslashes.
_pieces = [b"[", b"]", b"{", b"}", b'"', b"\\", b"\\\\", b"a", b",", b":", b" "]
_jsonish = st.lists(st.sampled_from(_pieces), max_size=200)


@native_only
@settings(max_examples=500, deadline=None)
@given(st.one_of(_jsonish.map(b"".join), st.binary(max_size=300)))
def test_the_native_structure_scan_answers_as_the_reference(raw: bytes) -> None:
    assert NATIVE is not None
    assert NATIVE.structure(raw) == wire.structure_of(raw)


@native_only
def test_bounds_are_measured_by_the_native_scan_where_the_extension_is_built() -> None:
    assert NATIVE is not None
    from canary.core import accel

    assert accel.NATIVE.structure is NATIVE.structure
    for raw in (json.dumps(hostile.samples()["window"][0]).encode(), b'{"a": "[[[[\\"]]", "b": [[], {}]}'):
        assert NATIVE.structure(raw) == wire.structure_of(raw)
    with pytest.raises(wire.Rejected) as info:
        wire.decode(b"[" * 17 + b"]" * 17, wire.WINDOW)  # 17 deep, 17 openers: the scan decides
    assert info.value.code == "too_deep"
