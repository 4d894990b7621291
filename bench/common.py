"""Shared plumbing for the benchmarks: a real Kafka (external or a throwaway local broker), unique
topic prefixes, statistics and output (human summary or ``--json``).

Benchmarks print figures; they are not tests and assert nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/xxx.py` as well as `python -m bench.xxx`
    sys.path.insert(0, str(ROOT))

from canary.kafka.clients import Cluster, client_kwargs, connection_for  # noqa: E402
from canary.settings import load_settings  # noqa: E402

# aiokafka logs retried produce errors right after topic creation (leader not elected yet) at WARNING.
logging.getLogger("aiokafka").setLevel(logging.ERROR)


def log(message: str) -> None:
    """Progress goes to stderr so ``--json`` keeps stdout machine-readable."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(name: str) -> str:
    return f"bench{name}{uuid.uuid4().hex[:6]}."


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    return parser


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` (broker stop, worker stop) still runs."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    bootstrap: Cluster  # with the SASL/SSL settings of the environment, for an external cluster
    external: bool
    broker_start_s: float | None  # time to start the local broker (None when external)

    def describe(self) -> str:
        if self.external:
            return f"external Kafka at {self.bootstrap} (KAFKA_BOOTSTRAP_SERVERS)"
        return f"local KRaft broker at {self.bootstrap} (started for this run in {self.broker_start_s:.1f}s)"


@contextlib.contextmanager
def kafka() -> Iterator[KafkaTarget]:
    """KAFKA_BOOTSTRAP_SERVERS if set, else a local broker on a free port with a temporary data dir,
    stopped (and its data dir removed) on the way out, whatever happens."""
    settings = load_settings()
    if settings.bootstrap_servers:
        yield KafkaTarget(connection_for(settings), True, None)
        return
    from devtools.broker import LocalBroker

    data_dir = Path(tempfile.mkdtemp(prefix="canary-bench-kafka-"))
    broker = LocalBroker(settings.home, free_port(), data_dir=data_dir)
    try:
        started = time.perf_counter()
        info = broker.start(log=log)
        yield KafkaTarget(info.bootstrap, False, time.perf_counter() - started)
    finally:
        try:
            broker.stop(log=log)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


def delete_prefixed_topics(bootstrap: Cluster, prefix: str) -> int:
    """Remove every topic a run created (declared ones and Faust's internal ones) from an external cluster."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def run() -> int:
        admin = AIOKafkaAdminClient(**client_kwargs(bootstrap), request_timeout_ms=15000)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if names:
                await admin.delete_topics(names, timeout_ms=15000)
            return len(names)
        finally:
            await admin.close()

    try:
        return asyncio.run(run())
    except Exception as exc:  # cleanup must never hide the figures
        log(f"could not delete topics with prefix {prefix!r}: {exc}")
        return 0


# -- statistics ------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was actually observed."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def summary(values: Sequence[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0, "min": math.nan, "median": math.nan, "p95": math.nan, "max": math.nan}
    return {
        "n": len(values),
        "min": float(min(values)),
        "median": float(statistics.median(values)),
        "p95": percentile(values, 95),
        "max": float(max(values)),
    }


def rate(count: int | float, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


def fmt_rate(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.0f}/s"


def emit(result: dict[str, Any], text: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(text)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def machine() -> dict[str, Any]:
    """Where the figures come from; the load average shows whether other work shared the CPUs."""
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "loadavg_at_start": loadavg(),
    }


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def control_keys(tmp: Path) -> Iterator[str]:
    """Control commands must be signed (and the worker needs its key): use the keys the environment names,
    or make a throwaway operator + worker key pair in ``tmp`` for this run (never the developer's home)."""
    names = ("CANARY_TRUSTED_KEYS_DIR", "CANARY_OPERATOR_KEY", "CANARY_WORKER_KEY")
    if all(os.environ.get(n) for n in names):
        yield "from the environment"
        return
    from canary.security import init_key

    paths = {
        "CANARY_TRUSTED_KEYS_DIR": tmp / "trusted",
        "CANARY_OPERATOR_KEY": tmp / "keys" / "operator.key",
        "CANARY_WORKER_KEY": tmp / "keys" / "worker.key",
    }
    init_key(paths["CANARY_OPERATOR_KEY"], paths["CANARY_TRUSTED_KEYS_DIR"], "operator", "operator:bench")
    init_key(paths["CANARY_WORKER_KEY"], paths["CANARY_TRUSTED_KEYS_DIR"], "worker", "worker:bench")
    saved = {n: os.environ.get(n) for n in (*names, "CANARY_INSECURE_CONTROL")}
    os.environ.update({n: str(p) for n, p in paths.items()})
    os.environ.pop("CANARY_INSECURE_CONTROL", None)
    try:
        yield "throwaway keys for this run"
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v
