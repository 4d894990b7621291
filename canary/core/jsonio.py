"""JSON in and out of Kafka record values, through orjson where it agrees with the standard library.

The hot paths (decoding every outcome, writing partial windows and checkpoints every few hundred ms)
spend a large share of their time in ``json``; orjson is 3–10× faster. Where the two differ, the
standard library's behaviour is the contract: ``loads`` falls back to ``json.loads`` for what orjson
rejects (NaN/Infinity literals, lone surrogates) and for every malformed input, so results and error
messages stay the standard library's — with one difference, kept for speed: orjson reads an integer
beyond 64 bits as a float (``json`` as an int). No field of any contract holds such a number, and every
integer field is type-checked, so such a record is refused either way, with another message. ``dumps``
falls back to ``json.dumps`` for what orjson cannot encode (integers beyond 64 bits, non-``str`` keys,
unknown types) and raises ``ValueError`` for NaN and infinities, which neither should write (orjson
would write ``null``, ``json`` a literal that is not JSON).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

from canary.core import accel


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)`` — same result, same exceptions — via orjson for the common case."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _finite(value: Any) -> bool:
    """No NaN or infinity anywhere in ``value`` (floats inside dicts' values, lists and tuples).

    A loop over a stack rather than a recursive generator: a checkpoint's open windows hold thousands of small
    lists (sketch pairs), and the generator walk cost ~7.5 ms a checkpoint of a busy partition (2.8 ms now)."""
    stack = [value]
    pop, push = stack.pop, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is float:
            if v - v != 0.0:  # inf - inf and nan - nan are nan; any finite x - x is 0
                return False
        elif t is dict:
            push(v.values())
        elif t is list or t is tuple:
            push(v)
        elif t is int or t is str or v is None or t is bool:
            continue
        elif isinstance(v, float):
            if not math.isfinite(v):
                return False
        elif isinstance(v, dict):
            push(v.values())
        elif isinstance(v, list | tuple):
            push(v)
    return True


def exact_bytes(value: Any) -> bytes | None:
    """orjson's bytes of ``value``, or None where they would not say what the standard library's say: orjson
    cannot encode it, or it wrote a NaN or an infinity as ``null`` (a rare value, so looked for only when the output
    could hold one; with the native batch core's ``all_finite`` where it is built: a windows-stage checkpoint holds
    ``null``s, so it is walked every time, ~4 % of a live worker in Python). An ``orjson.Fragment`` in ``value`` is
    written as it is and not looked into: its bytes must be this function's own."""
    try:
        out = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    if b"null" in out and not (accel.NATIVE.all_finite or _finite)(value):
        return None
    return out


def dumps(value: Any) -> bytes:
    """Compact JSON bytes of ``value``; ``ValueError`` if it holds NaN or an infinity."""
    out = exact_bytes(value)
    return out if out is not None else json.dumps(value, allow_nan=False, separators=(",", ":")).encode()


def dumps_as_json_would(value: Any) -> bytes:
    """JSON bytes with the same decoded value as ``json.dumps(value).encode()``, NaN and infinities included (the
    standard library's ``NaN``/``Infinity`` literals, which its reader and :func:`loads` accept): compact, via
    orjson unless the value holds one of those or something orjson cannot encode. For records that have always
    been written with ``json.dumps`` and may carry an infinite evidence value (the SLO agent's verdicts)."""
    out = exact_bytes(value)
    return out if out is not None else json.dumps(value, separators=(",", ":")).encode()
