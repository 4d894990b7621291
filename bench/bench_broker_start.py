"""How long until a local KRaft broker answers metadata: cold (nothing cached) and warm (jars cached).

cold  A fresh CANARY home in a temp dir: JarCache resolves the broker classpath with Maven, then the
      storage is formatted, the JVM started, and we wait until a metadata request is answered.
      By default Maven uses your local repository (~/.m2), so "resolve" is Maven copying jars it
      already has; --fresh-maven-repo points Maven at an empty temp repository so the jars are really
      downloaded from Maven Central (needs network, ~100 MB).
warm  The default CANARY home (jars already resolved) with a fresh data dir per run: format + JVM start
      + first metadata answer. --runs N warm starts.

Each broker is stopped (and its temp dirs removed) before the next starts; the stop time is reported
too. KAFKA_BOOTSTRAP_SERVERS is ignored here: starting a local broker is what is measured.

    .venv/bin/python -m bench.bench_broker_start [--runs 3] [--skip-cold] [--fresh-maven-repo] [--json]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import base_parser, emit, free_port, loadavg, log, machine, sigterm_as_exit, summary
from canary.settings import load_settings
from devtools.broker import KAFKA_VERSION, JarCache, LocalBroker


def _dir_mb(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def start_once(home: Path, data_dir: Path, *, resolve_separately: bool) -> dict[str, Any]:
    """Start one broker, time the phases, stop it. Always stops what it started."""
    broker = LocalBroker(home, free_port(), data_dir=data_dir)
    out: dict[str, Any] = {"port": broker.port}
    t0 = time.perf_counter()
    try:
        if resolve_separately:
            broker.jars.ensure(log)
            out["resolve_s"] = time.perf_counter() - t0
            out["jars"] = len(list(broker.jars.libs.glob("*.jar")))
        t1 = time.perf_counter()
        info = broker.start(log=log, timeout=120)
        t2 = time.perf_counter()
        # BrokerInfo.started_at is stamped just before the broker JVM is spawned (after the format).
        jvm_s = time.time() - info.started_at
        out["format_start_metadata_s"] = t2 - t1
        out["jvm_to_metadata_s"] = jvm_s
        out["format_s"] = max(0.0, (t2 - t1) - jvm_s)
        out["total_s"] = t2 - t0
    finally:
        t3 = time.perf_counter()
        stopped = broker.stop(log=log)
        out["stop_s"] = time.perf_counter() - t3 if stopped else None
    return out


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="warm starts to time (default 3)")
    parser.add_argument("--skip-cold", action="store_true", help="only the warm starts")
    parser.add_argument(
        "--fresh-maven-repo",
        action="store_true",
        help="cold start with an empty Maven local repository: real download from Maven Central",
    )
    args = parser.parse_args()
    settings = load_settings()
    if settings.bootstrap_servers:
        log("KAFKA_BOOTSTRAP_SERVERS is set but ignored: this benchmark times starting a local broker")

    result: dict[str, Any] = {
        "benchmark": "broker_start",
        "kafka_version": KAFKA_VERSION,
        "machine": machine(),
        "readiness": "first successful metadata request (LocalBroker.start polls every 0.25 s)",
    }
    tmp_root = Path(tempfile.mkdtemp(prefix="canary-bench-start-"))
    saved_maven_opts = os.environ.get("MAVEN_OPTS")
    try:
        with sigterm_as_exit():
            if not args.skip_cold:
                home = tmp_root / "cold-home"
                m2 = Path.home() / ".m2" / "repository"
                if args.fresh_maven_repo:
                    m2 = tmp_root / "m2"
                    os.environ["MAVEN_OPTS"] = f"{saved_maven_opts or ''} -Dmaven.repo.local={m2}".strip()
                    maven_source = f"empty Maven repository {m2} (downloads from Maven Central)"
                else:
                    maven_source = f"existing Maven repository {m2} ({_dir_mb(m2):.0f} MB before the run)"
                log(f"cold start: fresh CANARY home {home}; Maven uses {maven_source}")
                cold = start_once(home, tmp_root / "cold-data", resolve_separately=True)
                cold["maven_repository"] = maven_source
                if args.fresh_maven_repo:
                    cold["downloaded_mb"] = round(_dir_mb(m2), 1)
                    if saved_maven_opts is None:
                        os.environ.pop("MAVEN_OPTS", None)
                    else:
                        os.environ["MAVEN_OPTS"] = saved_maven_opts
                result["cold"] = cold
                shutil.rmtree(home, ignore_errors=True)

            home = settings.home
            if not JarCache(home).ready:
                log(f"jar cache in {home} not resolved yet; resolving once (not timed as warm)")
                JarCache(home).ensure(log)
            warm_runs = []
            for i in range(args.runs):
                log(f"warm start {i + 1}/{args.runs} (jars cached in {home}, fresh data dir)")
                data = tmp_root / f"warm-data-{i}"
                warm_runs.append(start_once(home, data, resolve_separately=False))
                shutil.rmtree(data, ignore_errors=True)
            result["warm_runs"] = warm_runs
            result["warm"] = summary([r["total_s"] for r in warm_runs])
            result["warm_format"] = summary([r["format_s"] for r in warm_runs])
            result["warm_jvm_to_metadata"] = summary([r["jvm_to_metadata_s"] for r in warm_runs])
            result["warm_stop"] = summary([r["stop_s"] for r in warm_runs if r["stop_s"] is not None])
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
        if saved_maven_opts is None:
            os.environ.pop("MAVEN_OPTS", None)
        else:
            os.environ["MAVEN_OPTS"] = saved_maven_opts

    result["machine"]["loadavg_at_end"] = loadavg()
    m = result["machine"]
    lines = [
        f"machine: {m['cpus']} CPUs, load average at start {m['loadavg_at_start']}, at end {m['loadavg_at_end']}",
        f"Kafka {KAFKA_VERSION} local KRaft broker start (ready = answers a metadata request)",
    ]
    if "cold" in result:
        c = result["cold"]
        lines += [
            f"  cold  total {c['total_s']:6.2f} s = Maven resolve {c['resolve_s']:.2f} s ({c['jars']} jars) "
            f"+ storage format {c['format_s']:.2f} s + broker JVM to metadata {c['jvm_to_metadata_s']:.2f} s",
            f"        Maven source: {c['maven_repository']}"
            + (f", downloaded {c['downloaded_mb']} MB" if "downloaded_mb" in c else ""),
        ]
    if result["warm_runs"]:
        w = result["warm"]
        each = ", ".join(f"{r['total_s']:.2f}" for r in result["warm_runs"])
        lines.append(
            f"  warm  min {w['min']:.2f} s  median {w['median']:.2f} s  max {w['max']:.2f} s  "
            f"over {w['n']} runs ({each})"
        )
        lines.append(
            f"        median split: storage format {result['warm_format']['median']:.2f} s + "
            f"broker JVM to metadata {result['warm_jvm_to_metadata']['median']:.2f} s"
        )
        s = result["warm_stop"]
        if s["n"]:
            lines.append(f"  stop  median {s['median']:.2f} s (SIGTERM until the process is gone)")
    emit(result, "\n".join(lines), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
