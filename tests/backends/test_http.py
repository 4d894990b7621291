"""The HTTP search backend against a real local HTTP service (tests/http_service.py): both ways of sending
parameters, the connection pool bound, timeouts, 4xx/5xx, garbage answers, an unreachable service."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from canary.config import load_preset
from canary.config.backend import HttpBackendSpec
from router.backends.base import BackendError, RankedResults, exact_searcher
from router.backends.http import HttpBackend, parse_response, request_params
from router.backends.memory import relevant_for
from tests.config.test_backend_section import PRESETS
from tests.http_service import SearchService

PARAMS: dict[str, Any] = load_preset(PRESETS / "last_good.yaml").to_dict()


async def _with(spec_kw: dict[str, Any], fn: Any) -> Any:
    async with SearchService() as service:
        backend = HttpBackend(HttpBackendSpec(url=f"{service.url}/search", **spec_kw))
        try:
            return await fn(service, backend)
        finally:
            await backend.close()


def test_body_mode_sends_the_arms_parameters_and_reads_ids_and_metrics() -> None:
    async def run(service: SearchService, backend: HttpBackend) -> None:
        ids = await backend.search("q7", "documents", PARAMS)
        assert isinstance(ids, RankedResults) and list(ids) == relevant_for(7)
        assert ids.metrics == {"cost_units": 2.0}
        (seen,) = service.requests
        assert seen["method"] == "POST" and seen["query"] == "q7" and seen["k"] == PARAMS["retriever"]["top_k"]
        assert seen["config"] == {"name": "last_good", "version": PARAMS["metadata"]["version"]}
        assert seen["params"]["retriever"] == PARAMS["retriever"]
        assert set(seen["params"]) == {"derived_params", "retriever", "reranker"}

    asyncio.run(_with({}, run))


def test_query_mode_sends_dotted_parameters() -> None:
    async def run(service: SearchService, backend: HttpBackend) -> None:
        assert list(await backend.search("q3", "documents", PARAMS)) == relevant_for(3)
        (seen,) = service.requests
        assert seen["method"] == "GET" and seen["retriever.alpha"] == str(PARAMS["retriever"]["alpha"])
        assert seen["derived_params.ef"] == str(PARAMS["derived_params"]["ef"])

    asyncio.run(_with({"params": "query"}, run))
    assert request_params("x", "c", {"reranker": {"type": "none", "model": None}})["reranker.type"] == "none"


def test_a_slow_answer_is_a_timeout() -> None:
    async def run(service: SearchService, backend: HttpBackend) -> None:
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            await backend.search("slow:1000 q1", "documents", PARAMS)
        assert time.perf_counter() - started < 0.8  # the 300 ms timeout, not the 1 s answer
        assert list(await backend.search("slow:50 q1", "documents", PARAMS)) == relevant_for(1)  # still usable

    asyncio.run(_with({"timeout_ms": 300}, run))


def test_the_connection_pool_is_bounded() -> None:
    async def run(service: SearchService, backend: HttpBackend) -> None:
        # 6 requests at once through a pool of 2 connections: never more than 2 at the service
        results = await asyncio.gather(*(backend.search("slow:100 q2", "documents", PARAMS) for _ in range(6)))
        assert all(list(r) == relevant_for(2) for r in results)
        assert service.max_in_flight == 2

    asyncio.run(_with({"timeout_ms": 5000, "max_connections": 2}, run))


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("boom", "backend_http_5xx"),
        ("reject", "backend_http_4xx"),
        ("junk", "backend_bad_response"),
        ("shape", "backend_bad_response"),
        ("huge", "backend_bad_response"),
    ],
)
def test_failures_carry_their_error_code(query: str, code: str) -> None:
    async def run(service: SearchService, backend: HttpBackend) -> str:
        with pytest.raises(BackendError) as info:
            await backend.search(query, "documents", PARAMS)
        return info.value.error_code

    assert asyncio.run(_with({}, run)) == code


def test_an_unreachable_service_is_unavailable() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def run() -> str:
        backend = HttpBackend(HttpBackendSpec(url=f"http://127.0.0.1:{port}/search", timeout_ms=2000))
        try:
            with pytest.raises(BackendError) as info:
                await backend.search("q1", "documents", PARAMS)
            return info.value.error_code
        finally:
            await backend.close()

    assert asyncio.run(run()) == "backend_unavailable"


def test_exact_search_only_with_an_exact_url() -> None:
    assert exact_searcher(HttpBackend(HttpBackendSpec(url="http://h/search"))) is None

    async def run() -> list[str]:
        async with SearchService() as service:
            spec = HttpBackendSpec(url=f"{service.url}/search", exact_url=f"{service.url}/exact")
            backend = HttpBackend(spec)
            try:
                exact = exact_searcher(backend)
                assert exact is not None
                return list(await exact.exact_search("q4", "documents", 10))
            finally:
                await backend.close()

    assert asyncio.run(run()) == relevant_for(4)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1, 2]", "expected a JSON object"),
        (b'{"ids": [true]}', r"ids\[0\] must be a non-empty string"),
        (b'{"ids": [""]}', r"ids\[0\] must be a non-empty string"),
        (b'{"ids": ["' + b"a" * 300 + b'"]}', "at most 256 characters"),
        (b'{"ids": [], "metrics": {"bad name": 1}}', "metric name"),
        (b'{"ids": [], "metrics": {"cost": "1"}}', "metrics.cost must be a finite number"),
        (b'{"ids": [], "metrics": {"cost": NaN}}', "metrics.cost must be a finite number"),
        (b'{"ids": [], "metrics": [1]}', "'metrics' must be an object"),
        (b"\xff\xfe", "not_utf8"),
        (b"not json", "not_json"),
        (b"[" * 3000 + b"]" * 3000, "too_deep"),
        (b'{"ids": [], "x": "' + b"y" * (1 << 20) + b'"}', "too_large"),
    ],
)
def test_hostile_answers_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(BackendError, match=reason) as info:
        parse_response(body, 100)
    assert info.value.error_code == "backend_bad_response"


def test_answers_are_bounded_to_max_results_and_ints_become_ids() -> None:
    ranked = parse_response(json.dumps({"ids": list(range(500))}).encode(), 20)
    assert ranked == [str(i) for i in range(20)] and ranked.metrics == {}
