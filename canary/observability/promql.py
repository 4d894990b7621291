"""Reading external metrics from Prometheus: one instant query per external metric and window.

The SLO agent asks :class:`PrometheusSource` for a window's values before it judges the window
(docs/contracts.md, "External metrics"). Every answer is hostile until decoded: bounded size, the
documented JSON shape (``status: success``, ``data.result[0].value[1]``), a finite number — anything else
is a *missing* value with its reason, never an exception: ``timeout``, ``error`` (HTTP status, connection,
a Prometheus error), ``bad_response`` (not the shape), ``empty`` (no series; NaN), ``not_configured``
(no ``CANARY_PROMETHEUS_URL``). A missing value leaves the window inconclusive for the rule: never a pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from canary.core.custom import CustomMetric, render_query

log = logging.getLogger("canary.observability.promql")

MAX_ANSWER_BYTES: Final = 1 << 20


class PrometheusSource:
    """Instant queries against one Prometheus server (``url``: e.g. ``http://127.0.0.1:9090``)."""

    def __init__(self, url: str | None) -> None:
        self.url = url.rstrip("/") if url else None

    async def values(
        self,
        metrics: Sequence[CustomMetric],
        deployment_id: str,
        arm: str,
        config: str,
        start_ms: int,
        end_ms: int,
    ) -> dict[str, float | str]:
        """Each external metric's value for the window (a float), or why there is none (a reason)."""
        external = [m for m in metrics if m.external]
        if not external:
            return {}
        if self.url is None:
            return dict.fromkeys((m.name for m in external), "not_configured")
        # A session per window (one every few seconds): nothing to keep open, or to close, between them.
        async with aiohttp.ClientSession(trust_env=False) as session:
            answers = await asyncio.gather(
                *(
                    self._one(session, m, render_query(m, deployment_id, arm, config, start_ms, end_ms), end_ms)
                    for m in external
                )
            )
        return {m.name: a for m, a in zip(external, answers, strict=True)}

    async def _one(self, session: aiohttp.ClientSession, metric: CustomMetric, query: str, end_ms: int) -> float | str:
        params = {"query": query, "time": format(end_ms / 1000, ".3f")}
        try:
            async with asyncio.timeout(metric.timeout_ms / 1000):
                async with session.get(f"{self.url}/api/v1/query", params=params) as response:
                    body = await response.content.read(MAX_ANSWER_BYTES + 1)
                    if response.status != 200:
                        log.warning("external metric %s: Prometheus answered HTTP %s", metric.name, response.status)
                        return "error"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError as exc:
            log.warning("external metric %s: Prometheus unreachable (%s)", metric.name, exc)
            return "error"
        if len(body) > MAX_ANSWER_BYTES:
            return "bad_response"
        return decode_answer(body)


def decode_answer(body: bytes) -> float | str:
    """A Prometheus instant-query answer's first sample, or the reason there is none."""
    try:
        doc: Any = json.loads(body)
    except (ValueError, RecursionError):
        return "bad_response"
    if not isinstance(doc, dict):
        return "bad_response"
    if doc.get("status") != "success":
        return "error"
    data = doc.get("data")
    if not isinstance(data, dict):
        return "bad_response"
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        sample: Any = result
    elif data.get("resultType") == "vector" and isinstance(result, list):
        if not result:
            return "empty"
        first = result[0]
        if not isinstance(first, dict):
            return "bad_response"
        sample = first.get("value")
    else:
        return "bad_response"
    if not isinstance(sample, list) or len(sample) != 2 or not isinstance(sample[1], str):
        return "bad_response"
    try:
        value = float(sample[1])
    except ValueError:
        return "bad_response"
    return value if math.isfinite(value) else "empty"
