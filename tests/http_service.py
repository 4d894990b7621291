"""A real HTTP search service on loopback for tests: aiohttp, a real keyword engine, scripted misbehaviour.

The query text picks the behaviour: ``slow:<ms> …`` answers after ``ms``; ``boom`` answers 503; ``reject``
400; ``junk`` a non-JSON body; ``shape`` a JSON object without an id list; ``huge`` a 2 MiB body; anything
else is searched in :func:`router.backends.memory.numbered_corpus` (``POST /search`` with the JSON body, or
``GET /search`` with query parameters), answering ``{"ids": [...], "metrics": {"cost_units": …}}``.
``/exact`` answers the exhaustive ranking (recall without labels).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from router.backends.memory import KeywordBackend, numbered_corpus


@dataclass
class SearchService:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    force_status: int | None = None  # answer every search with this status (an outage)
    _runner: web.AppRunner | None = None
    _engine: KeywordBackend = field(default_factory=lambda: KeywordBackend(numbered_corpus()))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> SearchService:
        app = web.Application()
        app.router.add_route("*", "/search", self._search)
        app.router.add_route("*", "/exact", self._exact)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> SearchService:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _read(self, request: web.Request) -> dict[str, Any]:
        if request.method == "POST":
            body: dict[str, Any] = await request.json()
            self.requests.append({"method": "POST", **body})
            return body
        args = dict(request.query)
        self.requests.append({"method": "GET", **args})
        return {"query": args.get("query", ""), "collection": args.get("collection", ""), "k": int(args.get("k", 10))}

    async def _search(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            body = await self._read(request)
            if self.force_status is not None:
                return web.Response(status=self.force_status, text="forced")
            query = str(body.get("query", ""))
            words = query.split()
            head = words[0] if words else ""
            if head.startswith("slow:"):
                await asyncio.sleep(int(head.split(":", 1)[1]) / 1000)
                query = " ".join(words[1:])
            if head == "boom":
                return web.Response(status=503, text="overloaded")
            if head == "reject":
                return web.Response(status=400, text="bad request")
            if head == "junk":
                return web.Response(status=200, text="<html>not json</html>", content_type="text/html")
            if head == "shape":
                return web.json_response({"ids": "doc-1"})
            if head == "huge":
                return web.Response(status=200, body=b'{"ids": ["' + b"x" * (2 << 20) + b'"]}')
            ids = await self._engine.search(query, "documents", {"retriever": {"top_k": int(body.get("k", 10))}})
            return web.json_response({"ids": list(ids), "metrics": {"cost_units": float(len(query))}})
        finally:
            self.in_flight -= 1

    async def _exact(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        ids = await self._engine.exact_search(str(body.get("query", "")), "documents", int(body.get("k", 10)))
        return web.Response(text=json.dumps({"ids": list(ids)}), content_type="application/json")
