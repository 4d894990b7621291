"""Session-wide real Kafka for the tests.

Same rule as everywhere: KAFKA_BOOTSTRAP_SERVERS set → that cluster, start nothing. Otherwise the local
KRaft broker on a free port with a throwaway data dir (jars come from the shared Maven cache), or —
when CANARY_TEST_KAFKA=testcontainers and a Docker engine answers — testcontainers' Kafka.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary.kafka.topics import Topics, ensure_topics
from devtools.broker import listen_port

# An explicit choice for the routers the suite spawns (`canary router`): three test processes run at once, each
# with brokers, workers and routers at up to 150 requests/s, on 2 cores. They serve the Cranfield collection
# but wait the model's cost per query instead of spending it (router/backends/hybrid.py, "modeled"); the
# real model runs in tests/backends (test_cranfield, test_reranker), in the README's "Running the pieces"
# test (tests/integration/test_running_the_pieces.py) and in `make demo`, which .ci/run runs.
os.environ.setdefault("CANARY_RERANK", "modeled")
from canary.security import init_key
from canary.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


# The control-view cache files (canary/ops/view.py) the CLI writes into CANARY_HOME for the session's own
# topic prefixes (`t<8 hex>.` here, `h<6 hex>.` in test_hostile_flood; an environment's suffix after them).
_SESSION_VIEW_CACHE = re.compile(r"control-view-(t[0-9a-f]{8}|h[0-9a-f]{6})\.([a-z0-9_-]+\.)?\.(json|tmp)")
_SESSION_STARTED = time.time()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave no cache file of the session's throwaway topics in the developer's CANARY_HOME. Only the
    controlling process cleans up (with xdist, after every worker has finished)."""
    if hasattr(session.config, "workerinput"):
        return
    with contextlib.suppress(Exception):  # a cleanup: never a test failure
        for path in load_settings().home.glob("control-view-*"):
            if _SESSION_VIEW_CACHE.fullmatch(path.name) and path.stat().st_mtime >= _SESSION_STARTED - 1:
                path.unlink(missing_ok=True)


def _free_port() -> int:
    """Below the ephemeral range: an outgoing connection cannot take it before the listener binds it."""
    return listen_port()


@pytest.fixture(scope="session", autouse=True)
def control_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Signing keys of the test session, never the developer's: an operator key and a worker key in a
    temporary directory, both trusted. Set in the environment for the whole session, so in-process routers,
    the CLI and worker subprocesses sign and verify with them."""
    root = tmp_path_factory.mktemp("control-keys")
    paths = {
        "CANARY_TRUSTED_KEYS_DIR": root / "trusted",
        "CANARY_OPERATOR_KEY": root / "keys" / "operator.key",
        "CANARY_WORKER_KEY": root / "keys" / "worker.key",
    }
    init_key(paths["CANARY_OPERATOR_KEY"], paths["CANARY_TRUSTED_KEYS_DIR"], "operator", "operator:tests")
    init_key(paths["CANARY_WORKER_KEY"], paths["CANARY_TRUSTED_KEYS_DIR"], "worker", "worker:tests")
    with pytest.MonkeyPatch.context() as mp:
        for name, path in paths.items():
            mp.setenv(name, str(path))
        mp.delenv("CANARY_INSECURE_CONTROL", raising=False)
        yield paths


@pytest.fixture(scope="session")
def base_settings(control_keys: dict[str, Path]) -> Settings:
    return load_settings().with_overrides(project_root=ROOT)


@pytest.fixture(scope="session")
def kafka_bootstrap(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if base_settings.bootstrap_servers:
        yield base_settings.bootstrap_servers
        return
    if os.environ.get("CANARY_TEST_KAFKA") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from devtools.broker import LocalBroker, main_log

    broker = LocalBroker(base_settings.home, _free_port(), data_dir=tmp_path_factory.mktemp("kafka"))
    info = broker.start(log=main_log)
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def settings(base_settings: Settings, kafka_bootstrap: str) -> Settings:
    """Settings for one test: the session's cluster, and topics of its own."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return base_settings.with_overrides(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)


@pytest.fixture
def topics(settings: Settings) -> Topics:
    names = Topics(settings.topic_prefix)
    ensure_topics(settings.effective_bootstrap, names)
    return names
