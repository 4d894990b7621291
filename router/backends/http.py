"""A search service over HTTP as a backend (a preset's ``backend: {type: http, ...}``).

One :class:`aiohttp.ClientSession` per service, with a bounded :class:`aiohttp.TCPConnector` pool
(``max_connections``) and a total per-request timeout (``timeout_ms``); created on first use inside the
router's event loop, closed when the router stops. Every answer is hostile until validated
(:func:`parse_response`): size-capped, JSON object, ``ids`` a list of short strings (at most
``max_results`` kept), optional ``metrics`` as the outcome contract allows them. Failures raise
:class:`~router.backends.base.BackendError` with the outcome error codes of docs/contracts.md:

=======================  ======================================================
``timeout``              no full answer within ``timeout_ms`` (``TimeoutError``)
``backend_http_5xx``     the service answered 5xx
``backend_http_4xx``     the service answered 4xx (it refuses what we send)
``backend_bad_response`` not JSON, not the contract, or larger than 1 MiB
``backend_unavailable``  no connection (refused, reset, DNS)
=======================  ======================================================
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp

from canary.config.backend import HttpBackendSpec
from canary.core import wire
from canary.core.models import MAX_OUTCOME_METRICS, SAFE_NAME
from router.backends.base import BackendError, RankedResults

__all__ = ["MAX_BODY_BYTES", "HttpBackend", "parse_response", "request_params"]

MAX_BODY_BYTES: Final = 1 << 20
MAX_ID_LENGTH: Final = 256
_SECTIONS: Final = ("derived_params", "retriever", "reranker")
_ANSWER: Final = wire.Limits("search service answer", MAX_BODY_BYTES, 8)


def _bad(reason: str) -> BackendError:
    return BackendError("backend_bad_response", f"search service answer: {reason}")


def parse_response(body: bytes, max_results: int) -> RankedResults:
    """``{"ids": [...], "metrics": {...}?}`` → ranked ids (the first ``max_results``) and metrics."""
    try:
        data = wire.decode_object(body, _ANSWER)
    except wire.Rejected as exc:  # bounded: a hostile service cannot stop the router either
        raise BackendError("backend_bad_response", f"{exc.code}: {exc.detail}") from None
    ids = data.get("ids")
    if not isinstance(ids, list):
        raise _bad(f"'ids' must be a list, got {ids!r:.100}")
    ranked: list[str] = []
    for i, doc in enumerate(ids[:max_results]):
        if isinstance(doc, bool) or not isinstance(doc, str | int) or len(str(doc)) > MAX_ID_LENGTH or doc == "":
            raise _bad(f"ids[{i}] must be a non-empty string of at most {MAX_ID_LENGTH} characters, got {doc!r:.100}")
        ranked.append(str(doc))
    raw_metrics = data.get("metrics")
    metrics: dict[str, float] = {}
    if raw_metrics is not None:
        if not isinstance(raw_metrics, dict) or len(raw_metrics) > MAX_OUTCOME_METRICS:
            limit = MAX_OUTCOME_METRICS
            raise _bad(f"'metrics' must be an object of at most {limit} numbers, got {raw_metrics!r:.100}")
        for name, value in raw_metrics.items():
            if not SAFE_NAME.fullmatch(name):
                raise _bad(f"metric name {name!r:.60} must be letters, digits, '_', '.' or '-'")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _bad(f"metrics.{name} must be a finite number, got {value!r:.60}")
            metrics[name] = float(value)
    return RankedResults(ranked, metrics)


def _k(params: Mapping[str, Any]) -> int:
    retriever = params.get("retriever")
    top_k = retriever.get("top_k") if isinstance(retriever, Mapping) else None
    return top_k if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0 else 10


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def request_params(query: str, collection: str, params: Mapping[str, Any]) -> dict[str, str]:
    """The ``params: query`` form: every search parameter as a dotted name (``retriever.alpha=0.5``)."""
    meta = params.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    out = {"query": query, "collection": collection, "k": str(_k(params))}
    for key in ("name", "version"):
        if key in meta:
            out[f"config.{key}"] = str(meta[key])
    for section in _SECTIONS:
        values = params.get(section)
        if isinstance(values, Mapping):
            for key, value in values.items():
                if value is not None and not isinstance(value, Mapping | list):
                    out[f"{section}.{key}"] = _scalar(value)
    return out


def request_body(query: str, collection: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``params: body`` form: ``{"query", "collection", "k", "config", "params": {sections}}``."""
    meta = params.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return {
        "query": query,
        "collection": collection,
        "k": _k(params),
        "config": {key: meta.get(key) for key in ("name", "version")},
        "params": {s: params[s] for s in _SECTIONS if isinstance(params.get(s), Mapping)},
    }


class HttpBackend:
    """The search backend of one :class:`HttpBackendSpec`."""

    def __init__(self, spec: HttpBackendSpec) -> None:
        self.spec = spec
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.spec.max_connections, ttl_dns_cache=60)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.spec.timeout_ms / 1000.0),
                headers={"User-Agent": "canary-router", "Accept": "application/json"},
            )
        return self._session

    async def search(self, query: str, collection: str, params: Mapping[str, Any]) -> Sequence[str]:
        return await self._call(self.spec.url, query, collection, params)

    @property
    def exact_search(self) -> Callable[[str, str, int], Awaitable[Sequence[str]]] | None:
        """The service's exact top-k (``exact_url``), for recall without labels; None without one."""
        if self.spec.exact_url is None:
            return None
        url = self.spec.exact_url

        async def exact(query: str, collection: str, k: int) -> Sequence[str]:
            return list(await self._call(url, query, collection, {"retriever": {"top_k": k}}))

        return exact

    async def _call(self, url: str, query: str, collection: str, params: Mapping[str, Any]) -> RankedResults:
        session = self._client()
        try:
            if self.spec.params == "body":
                request = session.post(url, json=request_body(query, collection, params))
            else:
                request = session.get(url, params=request_params(query, collection, params))
            async with request as response:
                if response.status >= 500:
                    raise BackendError("backend_http_5xx", f"search service answered {response.status}")
                if response.status >= 400:
                    raise BackendError("backend_http_4xx", f"search service answered {response.status}")
                if response.status != 200:
                    raise _bad(f"status {response.status}, expected 200")
                if (response.content_length or 0) > MAX_BODY_BYTES:
                    raise _bad(f"{response.content_length} bytes, more than {MAX_BODY_BYTES}")
                body = await response.content.read(MAX_BODY_BYTES + 1)
                if len(body) > MAX_BODY_BYTES:
                    raise _bad(f"more than {MAX_BODY_BYTES} bytes")
        except TimeoutError:
            raise  # the router reports it as error "timeout"
        except aiohttp.ClientPayloadError as exc:
            raise _bad(f"broken body ({exc})") from None
        except aiohttp.ClientError as exc:
            raise BackendError("backend_unavailable", f"search service unreachable: {exc}") from None
        return parse_response(body, self.spec.max_results)

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
