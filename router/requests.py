"""The search request contract on ``search_requests`` (JSON)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canary.errors import InvalidEvent


@dataclass(frozen=True, slots=True)
class SearchRequest:
    request_id: str
    query: str
    collection: str
    user_id: str | None = None
    ts: int | None = None
    relevant_ids: tuple[str, ...] | None = None

    @property
    def routing_key(self) -> str:
        return self.user_id or self.request_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "query": self.query,
            "collection": self.collection,
            "user_id": self.user_id,
            "ts": self.ts,
            "relevant_ids": list(self.relevant_ids) if self.relevant_ids is not None else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> SearchRequest:
        if not isinstance(data, Mapping):
            raise InvalidEvent(f"SearchRequest: expected a JSON object, got {type(data).__name__}")
        request_id = data.get("request_id")
        where = f"SearchRequest(request_id={request_id!r})"
        for name in ("request_id", "query", "collection"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise InvalidEvent(f"{where}.{name}: required non-empty string, got {value!r:.100}")
        user_id = data.get("user_id")
        if user_id is not None and not isinstance(user_id, str | int):
            raise InvalidEvent(f"{where}.user_id: expected string, got {user_id!r:.100}")
        ts = data.get("ts")
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
            raise InvalidEvent(f"{where}.ts: expected epoch ms integer, got {ts!r:.100}")
        labels = data.get("relevant_ids")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str | int) for x in labels)):
            raise InvalidEvent(f"{where}.relevant_ids: expected a list of ids, got {labels!r:.100}")
        return cls(
            request_id=str(data["request_id"]),
            query=str(data["query"]),
            collection=str(data["collection"]),
            user_id=str(user_id) if user_id is not None else None,
            ts=ts,
            relevant_ids=tuple(str(x) for x in labels) if labels is not None else None,
        )


def ndcg_at_10(ranked_ids: list[str], relevant_ids: tuple[str, ...] | None) -> float | None:
    """Binary-relevance nDCG@10: DCG of the top 10 over the ideal DCG; None without labels."""
    if not relevant_ids:
        return None
    relevant = set(relevant_ids)
    dcg = sum(1.0 / math.log2(i + 2) for i, doc in enumerate(ranked_ids[:10]) if doc in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    return dcg / ideal


def mrr_at_10(ranked_ids: list[str], relevant_ids: tuple[str, ...] | None) -> float | None:
    """1 / rank of the first relevant result in the top 10 (0 if none); None without labels."""
    if not relevant_ids:
        return None
    relevant = set(relevant_ids)
    return next((1.0 / (i + 1) for i, doc in enumerate(ranked_ids[:10]) if doc in relevant), 0.0)


def recall_at_10(ranked_ids: list[str], relevant_ids: tuple[str, ...] | None) -> float | None:
    """|top-10 ∩ relevant| / min(10, |relevant|); None when the query carries no labels."""
    if not relevant_ids:
        return None
    relevant = set(relevant_ids)
    hits = sum(1 for doc in ranked_ids[:10] if doc in relevant)
    return hits / min(10, len(relevant))
