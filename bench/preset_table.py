"""Every shipped preset through the bundled HybridBackend: p50/p95 latency, recall@10, SLO verdict.

In-process, no Kafka: for each preset in configs/presets, ``--queries`` labeled queries of the generated
corpus (router.backends.corpus) go one after another through ``HybridBackend.search`` with the preset's
snapshot (``Preset.to_dict()``, as the router passes it), with the rerank runtime ``--rerank`` (default
``model``: the real all-MiniLM-L6-v2 forward pass). Latency is wall time around each awaited search; CPU
is the process time each search spent (every thread: retrieval and the model run in worker threads), which
is only the preset's own with ``--serial``; recall@10 is router.requests.recall_at_10
against the corpus's exhaustive labels, averaged over the queries. The verdict applies the preset's own
built-in SLO rules to the whole run (p95 <= slo.p95_ms and recall@10 >= slo.recall_at_10).

``--serial`` (what the docs' table uses) runs one preset at a time, each query after the previous one: with
the real model the presets' CPU would otherwise compete on the machine's cores. Without it presets run
concurrently (each one's queries strictly sequential), which suits ``--rerank modeled``.

    .venv/bin/python -m bench.preset_table [--queries 300] [--presets DIR] [--serial] [--rerank R] [--json]
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/preset_table.py` as well as `python -m bench.preset_table`
    sys.path.insert(0, str(ROOT))

from bench.common import base_parser, emit, loadavg, log, machine, percentile  # noqa: E402
from canary.config import Preset, PresetStore  # noqa: E402
from router.backends.hybrid import CORPORA, HybridBackend, bundled_corpus  # noqa: E402
from router.requests import mrr_at_10, recall_at_10  # noqa: E402


def graded_ndcg_at_10(ranked: list[str], gains: dict[str, int]) -> float:
    """nDCG@10 with graded gains (2^gain - 1, log2 discount) against the ideal ordering of the judgments."""
    dcg = sum((2 ** gains.get(doc, 0) - 1) / math.log2(i + 2) for i, doc in enumerate(ranked[:10]))
    ideal = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:10]))
    return dcg / ideal if ideal > 0 else 0.0


async def run_preset(backend: HybridBackend, preset: Preset, queries: int) -> dict[str, Any]:
    params = preset.to_dict()
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    cpu: list[float] = []
    recalls: list[float] = []
    ndcgs: list[float] = []
    mrrs: list[float] = []
    grades_of = getattr(backend.corpus, "grades", None)  # graded judgments (Cranfield); else binary labels
    for i in range(queries):
        q = i % backend.corpus.n_queries
        text, relevant = backend.corpus.query(q)
        start, cpu_start = loop.time(), time.process_time()
        ranked = await backend.search(text, "documents", params)
        latencies.append((loop.time() - start) * 1000.0)
        cpu.append((time.process_time() - cpu_start) * 1000.0)
        recall = recall_at_10(list(ranked), relevant)
        if recall is not None:
            recalls.append(recall)
            gains = grades_of(q) if grades_of is not None else dict.fromkeys(relevant, 1)
            ndcgs.append(graded_ndcg_at_10(list(ranked), gains))
            mrrs.append(mrr_at_10(list(ranked), relevant) or 0.0)
    p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
    recall = statistics.fmean(recalls) if recalls else float("nan")
    ndcg = statistics.fmean(ndcgs) if ndcgs else float("nan")
    mrr = statistics.fmean(mrrs) if mrrs else float("nan")
    slo = preset.slo
    failures = []
    if not p95 <= slo.p95_ms:
        failures.append(f"p95 {p95:.0f} ms > {slo.p95_ms:g}")
    if not recall >= slo.recall_at_10:
        failures.append(f"recall@10 {recall:.3f} < {slo.recall_at_10:g}")
    cpu_ms = statistics.fmean(cpu)
    log(
        f"{preset.name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, CPU {cpu_ms:.1f} ms/request, recall@10 {recall:.3f}, "
        f"nDCG@10 {ndcg:.3f}, MRR@10 {mrr:.3f}"
    )
    return {
        "preset": preset.name,
        "version": preset.version,
        "hash": preset.content_hash,
        "queries": queries,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "cpu_ms_per_request": round(cpu_ms, 1),
        "recall_at_10": round(recall, 3),
        "ndcg_at_10": round(ndcg, 3),
        "mrr_at_10": round(mrr, 3),
        "slo": {"p95_ms": slo.p95_ms, "recall_at_10": slo.recall_at_10},
        "slo_pass": not failures,
        "failures": failures,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | version | hash | p50 ms | p95 ms | CPU ms/request | recall@10 | nDCG@10 | MRR@10 | SLO |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        verdict = "pass" if r["slo_pass"] else "FAIL (" + "; ".join(r["failures"]) + ")"
        lines.append(
            f"| {r['preset']} | {r['version']} | `{r['hash']}` | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
            f"| {r['cpu_ms_per_request']:.1f} | {r['recall_at_10']:.3f} | {r['ndcg_at_10']:.3f} "
            f"| {r['mrr_at_10']:.3f} | {verdict} |"
        )
    return "\n".join(lines)


async def main_async(
    queries: int, presets_dir: Path, serial: bool, rerank: str, corpus_name: str
) -> list[dict[str, Any]]:
    store = PresetStore(presets_dir)
    presets = [store.get(name) for name in store.names()]
    started = time.perf_counter()
    backend = HybridBackend(bundled_corpus(corpus_name), rerank=rerank)
    corpus = backend.corpus
    log(
        f"corpus {corpus.n_docs} docs / {corpus.n_queries} labeled queries + faiss HNSW (M {backend.index.m}, "
        f"efConstruction {backend.index.ef_construction}) + bm25s indexes "
        f"({'loaded from the index cache' if backend.index.loaded_from_cache else 'built'}) "
        f"ready in {time.perf_counter() - started:.1f} s"
    )
    if serial:
        return [await run_preset(backend, p, queries) for p in presets]
    return list(await asyncio.gather(*(run_preset(backend, p, queries) for p in presets)))


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "preset table")
    parser.add_argument("--queries", type=int, default=300, help="labeled queries per preset (default 300)")
    parser.add_argument("--presets", type=Path, default=ROOT / "configs" / "presets", help="preset directory")
    parser.add_argument("--serial", action="store_true", help="one preset at a time (default: concurrently)")
    parser.add_argument(
        "--rerank", choices=("model", "modeled", "off"), default="model", help="rerank runtime (default model)"
    )
    parser.add_argument("--corpus", choices=CORPORA, default=CORPORA[0], help="bundled collection (default cranfield)")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="also replace the measured table in docs/presets.md (between its preset-table markers)",
    )
    args = parser.parse_args()
    info = machine()
    started = time.perf_counter()
    rows = asyncio.run(main_async(args.queries, args.presets, args.serial, args.rerank, args.corpus))
    info["loadavg_at_end"] = loadavg()
    result = {"machine": info, "wall_s": round(time.perf_counter() - started, 1), "presets": rows}
    mode = "serial" if args.serial else "concurrent"
    text = (
        f"{table(rows)}\n\n{args.queries} queries per preset, rerank {args.rerank}, {mode}, "
        f"{result['wall_s']} s, machine {info}"
    )
    emit(result, text, args.json)
    if args.write_docs:
        command = " ".join(["python -m bench.preset_table", *sys.argv[1:]])
        write_docs(DOCS, rows, f"`{command}` ({time.strftime('%Y-%m-%d')}, {mode}, {args.corpus})")
    return 0


DOCS = ROOT / "docs" / "presets.md"
BEGIN, END = "<!-- preset-table: begin (bench/preset_table.py --write-docs) -->", "<!-- preset-table: end -->"


def write_docs(path: Path, rows: list[dict[str, Any]], source: str) -> None:
    """Replace what lies between the markers in ``path`` with the table and the command that measured it."""
    text = path.read_text()
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{path}: the markers {BEGIN!r} and {END!r} are missing")
    path.write_text(f"{head}{BEGIN}\n{table(rows)}\n\nMeasured with {source}.\n{END}{tail}")
    log(f"wrote the table into {path}")


if __name__ == "__main__":
    sys.exit(main())
