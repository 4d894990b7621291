"""The windows' request memory on its own: what a batch's dedup look-up costs a key, by how much is remembered.

Each memory (the native one where the extension is built, the Python reference) remembers N request keys — made as
the windows make them (:func:`canary.core.windows.request_keys_of`), spread over 100 window starts of which the
first 99 are sealed, as a backlog's memory is once the watermark passed them — and is then asked, in batches of
2,000, whether 200,000 new keys repeat (``repeats``: the call every columnar batch makes). Printed: nanoseconds a
key asked, best of ``--repeat`` passes (wall time; nothing else should run). Then, on the same memory, 500 batches
of 400 late requests each, remembered at a start already sealed and sealed at once (``remember`` + ``seal_before``,
what a batch with late requests costs once the watermark moves): milliseconds a batch.

    python bench/bench_request_memory.py [--sizes 100000,1000000] [--repeat 3] [--json]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.common import base_parser, emit, machine
from canary.core.dedup import ReferenceRequestMemory, RequestMemory
from canary.core.windows import request_keys_of
from canary.pipeline.memory import NativeRequestMemory
from canary.pipeline.native import NATIVE

STARTS = 100
SIZE_MS = 5000
ASKED = 200_000
BATCH = 2000
LATE = 400


def filled(memory: RequestMemory, keys: np.ndarray) -> RequestMemory:
    for s, chunk in enumerate(np.array_split(keys, STARTS)):
        memory.remember(chunk, np.full(chunk.size, s * SIZE_MS, dtype=np.int64))
    memory.seal_before((STARTS - 1) * SIZE_MS)
    return memory


def ns_per_key(memory: RequestMemory, asked: np.ndarray, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        for i in range(0, asked.size, BATCH):
            found = memory.repeats(asked[i : i + BATCH])
            assert found is None  # none of them was remembered
        best = min(best, time.perf_counter() - began)
    return best / asked.size * 1e9


def late_batch_ms(memory: RequestMemory, late: np.ndarray) -> float:
    began = time.perf_counter()
    batches = 0
    for i in range(0, late.size - LATE + 1, LATE):
        memory.remember(late[i : i + LATE], np.full(LATE, (STARTS // 2) * SIZE_MS, dtype=np.int64))
        memory.seal_before((STARTS - 1) * SIZE_MS)
        batches += 1
    return (time.perf_counter() - began) / batches * 1e3


def main() -> None:
    parser = base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="100000,1000000", help="keys remembered, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best is reported")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    top = max(sizes)
    keys = np.asarray(request_keys_of("bench", [f"req-{i}" for i in range(top + ASKED)]), dtype=np.uint64)
    asked = keys[top:]
    kinds: list[tuple[str, type]] = [("reference", ReferenceRequestMemory)]
    if NATIVE is not None:
        kinds.insert(0, ("native", NativeRequestMemory))
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for name, kind in kinds:
            memory = filled(kind(), keys[:n])
            ns = round(ns_per_key(memory, asked, args.repeat), 1)
            late = round(late_batch_ms(memory, asked), 3)
            rows.append({"memory": name, "remembered": n, "ns_per_key": ns, "late_batch_ms": late})
    lines = [f"request memory: repeats() of {ASKED:,} new keys in batches of {BATCH:,}, best of {args.repeat}"]
    lines += [
        f"  {r['memory']:<10} {r['remembered']:>10,} remembered   {r['ns_per_key']:>8.1f} ns a key   "
        f"{r['late_batch_ms']:>7.3f} ms a batch of {LATE} late requests sealed"
        for r in rows
    ]
    emit({"machine": machine(), "rows": rows}, "\n".join(lines), args.json)


if __name__ == "__main__":
    main()
