"""Open-loop traffic through HybridBackend.search with the real rerank model: p50/p95 per arm at a given qps.

No Kafka, no router: one asyncio loop sends labeled corpus queries at ``--qps`` (Poisson arrivals, fixed
seed) for ``--seconds``, a ``--weight`` share to ``--candidate`` and the rest to ``--baseline``, each
awaited concurrently as the router would (worker threads of the default executor). Presets come from
configs/presets; ``--set preset.section.key=value`` overrides a knob for this run only (e.g. to try
smaller rerank pools) without editing a preset file. Latency is wall time from arrival to result, so it
includes queueing when the CPU cannot keep up.

    .venv/bin/python -m bench.bench_rerank_load --qps 6 --weight 0.25 --candidate candidate_high_recall \\
        --set last_good.derived_params.rerank_multiplier=1 --seconds 30 [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_reranker import loadavg, log  # noqa: E402
from bench.common import percentile  # noqa: E402
from canary.config import PresetStore  # noqa: E402
from router.backends.hybrid import HybridBackend  # noqa: E402
from router.requests import recall_at_10  # noqa: E402


def apply_overrides(params: dict[str, dict[str, Any]], name: str, sets: list[str]) -> None:
    for item in sets:
        key, _, raw = item.partition("=")
        preset, section, knob = key.split(".")
        if preset == name:
            params[section][knob] = json.loads(raw)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    store = PresetStore(ROOT / "configs" / "presets")
    params = {}
    for name in (args.baseline, args.candidate):
        p = store.get(name).to_dict()
        apply_overrides(p, name, args.set)
        params[name] = p
    backend = HybridBackend()
    corpus = backend.corpus
    await backend.search(corpus.query(0)[0], "documents", params[args.baseline])  # loads the model
    rng = random.Random(args.seed)
    results: dict[str, list[tuple[float, float | None]]] = {args.baseline: [], args.candidate: []}
    loop = asyncio.get_running_loop()

    async def one(name: str, i: int, arrival: float) -> None:
        text, relevant = corpus.query(i % corpus.n_queries)
        ids = await backend.search(text, "documents", params[name])
        results[name].append(((loop.time() - arrival) * 1e3, recall_at_10(list(ids), relevant)))

    tasks = []
    start = loop.time()
    cpu = time.process_time()
    next_at, i = start, 0
    while next_at < start + args.seconds:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        name = args.candidate if rng.random() < args.weight else args.baseline
        tasks.append(asyncio.create_task(one(name, i, next_at)))
        i += 1
        next_at += rng.expovariate(args.qps)
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    out: dict[str, Any] = {
        "qps": args.qps,
        "weight": args.weight,
        "seconds": args.seconds,
        "overrides": args.set,
        "elapsed_s": round(elapsed, 1),
        "cpu_s_per_s": round((time.process_time() - cpu) / elapsed, 2),
        "loadavg_at_end": loadavg(),
        "arms": {},
    }
    for name, rows in results.items():
        lat = [r[0] for r in rows]
        rec = [r[1] for r in rows if r[1] is not None]
        out["arms"][name] = {
            "requests": len(rows),
            "p50_ms": round(percentile(lat, 50), 1),
            "p95_ms": round(percentile(lat, 95), 1),
            "recall_at_10": round(sum(rec) / len(rec), 3) if rec else None,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qps", type=float, default=6.0)
    parser.add_argument("--weight", type=float, default=0.10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--baseline", default="last_good")
    parser.add_argument("--candidate", default="candidate_high_recall")
    parser.add_argument("--set", action="append", default=[], metavar="PRESET.SECTION.KEY=JSON")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    log(f"loadavg at start {loadavg()}")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"qps {result['qps']} weight {result['weight']} for {result['seconds']} s, overrides {result['overrides']}: "
        f"CPU {result['cpu_s_per_s']} s/s, loadavg at end {result['loadavg_at_end']}"
    )
    for name, arm in result["arms"].items():
        print(
            f"  {name:22s} {arm['requests']:4d} requests  p50 {arm['p50_ms']:8.1f} ms  p95 {arm['p95_ms']:8.1f} ms"
            f"  recall@10 {arm['recall_at_10']}"
        )


if __name__ == "__main__":
    main()
