"""The windows stage's loop in-process: CPU µs an outcome per phase, checkpoints included, no broker.

`bench_aggregation`'s outcomes (41 window keys by default: 20 deployments) over 6 partitions, each partition's
records decoded and windowed micro-batch by micro-batch as the windows stage does with the native core — native
decode (`decode_columns`), the columnar add with the native request memory (`add_columns`), the due windows' partials
encoded — and every ``--snapshot-every`` batches the checkpoint's state snapshot: every open window's pending rows
folded (`fold_pending`), `to_dict`, JSON. The collector is tuned as the worker tunes it (`canary.runtime`). The default
batch (1,400 rows) and a snapshot every 7 batches (~10k rows a partition) are what a 41-key backlog worker's fetches
and checkpoints come to. Compare trees with ``PYTHONPATH=<tree> python -m bench.bench_windows_loop``, interleaved.

    python -m bench.bench_windows_loop [-n 300000] [--deployments 20] [--batch 1400] [--snapshot-every 7] [--json]
"""

from __future__ import annotations

import gc
import time
from typing import Any

from bench.bench_aggregation import GRACE_MS, WINDOW_MS, core_input, now_ms, synth_outcomes
from bench.common import base_parser, emit, machine
from canary.core.jsonio import dumps
from canary.core.merge import partial_of
from canary.core.slo import default_policy
from canary.core.windows import WindowFinalizer
from canary.pipeline.decode import OutcomeDecoder
from canary.pipeline.memory import request_memory
from canary.pipeline.policies import aggregator_for_policy
from canary.runtime import GC_THRESHOLDS

PHASES = ("decode", "add", "emit", "fold", "to_dict", "json")


def run(n: int, deployments: int, batch: int, every: int) -> dict[str, Any]:
    deps = [f"dep-{i}" for i in range(deployments)]
    # bench_aggregation's density: 1M outcomes over 60 s of event time.
    outcomes = synth_outcomes(n, deps, 1_700_000_000_000, max(5_000, 60_000 * n // 1_000_000))
    inp = core_input(outcomes, 6, 2000)
    del outcomes
    decoder = OutcomeDecoder(native="auto")
    if decoder.native is None:
        raise SystemExit("the native batch core is not built (`make install`): this bench times its loop")
    aggregator = aggregator_for_policy(default_policy())
    spent = dict.fromkeys(PHASES, 0.0)
    snapshots = partials = 0
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    for p, values in inp.streams.items():
        fin = WindowFinalizer(WINDOW_MS, GRACE_MS, 12, aggregator=lambda _k: aggregator, memory=request_memory("auto"))
        for j, i in enumerate(range(0, len(values), batch)):
            t0 = time.process_time()
            columns, _refused = decoder.decode_columns(values[i : i + batch])
            t1 = time.process_time()
            assert columns is not None, "the bench's records are all ordinary outcomes and watermark records"
            fin.add_columns(p, columns, now_ms())
            t2 = time.process_time()
            for window in fin.due_closed(now_ms()):
                dumps(partial_of(window, window.aggregate, p).to_dict())
                partials += 1
            t3 = time.process_time()
            spent["decode"] += t1 - t0
            spent["add"] += t2 - t1
            spent["emit"] += t3 - t2
            if j % every == 0:
                fin.fold_pending()
                t4 = time.process_time()
                state = fin.to_dict(seen=False)
                t5 = time.process_time()
                dumps(state)
                t6 = time.process_time()
                spent["fold"] += t4 - t3
                spent["to_dict"] += t5 - t4
                spent["json"] += t6 - t5
                snapshots += 1
    gc.unfreeze()
    outcomes_n = inp.outcomes
    per = {k: v / outcomes_n * 1e6 for k, v in spent.items()}
    return {
        "outcomes": outcomes_n,
        "window_keys": 2 * deployments + 1,
        "batch": batch,
        "snapshot_every": every,
        "snapshots": snapshots,
        "partials": partials,
        "us_per_outcome": per,
        "total_us_per_outcome": sum(per.values()),
    }


def main() -> None:
    parser = base_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("-n", "--outcomes", dest="n", type=int, default=300_000, help="outcomes (default 300000)")
    parser.add_argument("--deployments", type=int, default=20, help="running deployments (20: 41 window keys)")
    parser.add_argument("--batch", type=int, default=1400, help="rows a micro-batch a partition (default 1400)")
    parser.add_argument("--snapshot-every", type=int, default=7, help="batches between snapshots (default 7)")
    args = parser.parse_args()
    if args.n < 1000 or args.deployments < 1 or args.batch < 1 or args.snapshot_every < 1:
        parser.error("need -n >= 1000 and --deployments, --batch, --snapshot-every >= 1")
    r = run(args.n, args.deployments, args.batch, args.snapshot_every)
    per = r["us_per_outcome"]
    text = (
        f"windows stage loop in-process: {r['outcomes']:,} outcomes, {r['window_keys']} window keys, batches of "
        f"{r['batch']}, a snapshot every {r['snapshot_every']} ({r['snapshots']} snapshots, {r['partials']} partials)\n"
        + "CPU µs an outcome: "
        + ", ".join(f"{k} {per[k]:.2f}" for k in PHASES)
        + f"; total {r['total_us_per_outcome']:.2f}"
    )
    emit({"machine": machine(), **r}, text, args.json)


if __name__ == "__main__":
    main()
