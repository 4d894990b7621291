"""The search request contract on ``search_requests`` (JSON), declared once as a Struct."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from canary.core import structs

NonEmpty = Annotated[str, Meta(min_length=1)]
MAX_LABELS = 10_000  # relevance labels per request (REQUEST's bounds keep the record to 256 KiB anyway)
MAX_ATTRIBUTES = 8
AttributeName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
AttributeValue = Annotated[str, Meta(max_length=128)]


class SearchRequest(msgspec.Struct, frozen=True):
    """One search request (docs/contracts.md, "Search request")."""

    request_id: NonEmpty
    query: NonEmpty
    collection: NonEmpty
    user_id: str | None = None
    ts: int | None = None  # epoch ms as the producer stamped it (not read by the router)
    relevant_ids: Annotated[tuple[str, ...], Meta(max_length=MAX_LABELS)] | None = None
    # What rings may target besides the user id (canary.core.rings): e.g. {"tenant": "acme"}.
    attributes: Annotated[dict[AttributeName, AttributeValue], Meta(max_length=MAX_ATTRIBUTES)] | None = None

    @property
    def routing_key(self) -> str:
        return self.user_id or self.request_id

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self)
        if self.relevant_ids is not None:  # to_builtins keeps a tuple a tuple; the JSON value is a list
            d["relevant_ids"] = list(self.relevant_ids)
        if self.attributes is None:  # absent without attributes: requests keep their exact JSON
            del d["attributes"]
        return d

    @classmethod
    def from_dict(cls, data: object) -> SearchRequest:
        """``data`` (a decoded ``search_requests`` value) as a request; InvalidEvent naming the field. Ids a
        producer wrote as numbers (``user_id``, ``relevant_ids``) are taken as their decimal text."""
        request_id = data.get("request_id") if isinstance(data, Mapping) else None
        if isinstance(data, Mapping):
            data = _ids_as_text(data)
        return structs.convert(cls, data, f"SearchRequest(request_id={request_id!r:.100})")


def _number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ids_as_text(data: Mapping[str, Any]) -> Mapping[str, Any]:
    user_id, labels = data.get("user_id"), data.get("relevant_ids")
    numeric_labels = isinstance(labels, list) and any(map(_number, labels))
    if not (_number(user_id) or numeric_labels):
        return data
    out = dict(data)
    if _number(user_id):
        out["user_id"] = str(user_id)
    if numeric_labels:
        out["relevant_ids"] = [str(x) if _number(x) else x for x in out["relevant_ids"]]
    return out


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


# -- result-diff metrics: how much a candidate changes the answer, against last_good's for the same query -----
RBO_P = 0.9  # rank-biased overlap's persistence: the top 10 carry ~0.65 of the weight, rank 1 alone 0.1
DIFF_K = 10


def _top(ranked: list[str]) -> list[str]:
    """The first 10 distinct ids (an engine repeating an id must not count its overlap twice)."""
    return list(dict.fromkeys(ranked[: DIFF_K * 4]))[:DIFF_K]


def rbo_at_10(candidate: list[str], baseline: list[str], p: float = RBO_P) -> float:
    """Extrapolated rank-biased overlap (Webber, Moffat & Zobel 2010, eq. 32) of the two top 10s: 1 for the
    same ranking, 0 for disjoint ones, and a swap near the top costs more than one near the bottom. With
    X_d the overlap of the two depth-d prefixes and k the evaluated depth (the longer list, at most 10; a
    shorter answer's missing ranks match nothing, so returning fewer results is a change):
    RBO_ext = X_k/k · p^k + (1 − p)/p · Σ_{d ≤ k} X_d/d · p^d. Two empty answers agree (1.0)."""
    a, b = _top(candidate), _top(baseline)
    k = max(len(a), len(b))
    if k == 0:
        return 1.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    overlap = 0
    total = 0.0
    for d in range(1, k + 1):
        x = a[d - 1] if d <= len(a) else None
        y = b[d - 1] if d <= len(b) else None
        if x is not None and x == y:
            overlap += 1
        else:
            overlap += (x is not None and x in seen_b) + (y is not None and y in seen_a)
        if x is not None:
            seen_a.add(x)
        if y is not None:
            seen_b.add(y)
        total += overlap / d * p**d
    return min(1.0, overlap / k * p**k + (1 - p) / p * total)


def jaccard_at_10(candidate: list[str], baseline: list[str]) -> float:
    """|A ∩ B| / |A ∪ B| of the two top-10 sets; two empty answers agree (1.0)."""
    a, b = set(_top(candidate)), set(_top(baseline))
    return len(a & b) / len(a | b) if a | b else 1.0


def top1_changed(candidate: list[str], baseline: list[str]) -> float:
    """1.0 when the first result differs (or only one answer has one), else 0.0."""
    return 0.0 if candidate[:1] == baseline[:1] else 1.0
