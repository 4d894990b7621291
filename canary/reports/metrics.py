"""The spec's metrics collector API over finalized windows (the spec's 5 s buckets).

``avg_p95_ms`` is the mean of the buckets' p95 (empty buckets have none and are skipped), as the spec
names it; ``avg_recall_at_10`` is weighted by each bucket's labeled samples, i.e. the mean recall over
all labeled requests. Missing data is ``None`` rather than 0, so "no data" never reads as "perfect".
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from canary.core.custom import result_diff
from canary.core.models import WindowResult


def summarize(windows: Iterable[WindowResult]) -> dict[str, Any]:
    """Summary statistics of some windows (any mix of configs/arms)."""
    ws = list(windows)
    p95s = [w.p95_ms for w in ws if w.p95_ms is not None and w.response_count > 0]
    labeled = [(w.recall_at_10, w.recall_samples) for w in ws if w.recall_at_10 is not None]
    samples = sum(max(n, 1) for _, n in labeled)
    recall = sum(r * max(n, 1) for r, n in labeled) / samples if labeled else None
    return {
        "avg_p95_ms": round(sum(p95s) / len(p95s), 3) if p95s else None,
        "max_p95_ms": round(max(p95s), 3) if p95s else None,
        "avg_recall_at_10": round(recall, 6) if recall is not None else None,
        "total_requests": sum(w.response_count for w in ws),
        "total_errors": sum(w.error_count for w in ws),
        "total_slo_violations": sum(w.slo_violations for w in ws),
        "buckets": len(ws),
        # Buckets the SLO judge judged (candidate buckets; last_good's are never judged), and of those the
        # ones in which a rule failed. slo_violations above counts *requests*, these count *buckets*.
        "judged_buckets": sum(1 for w in ws if w.verdicts),
        "failed_buckets": sum(1 for w in ws if any(v.outcome == "fail" for v in w.verdicts)),
        # rbo_at_10, jaccard_at_10, top1_changed over the sampled candidate requests (docs/contracts.md,
        # "Result-diff metrics"); None when no window holds one.
        "result_diff": result_diff([(w.stats or {}).get("custom") for w in ws]),
    }


class MetricsCollector:
    """Read-only view over window results: ``get_summary_stats(config_name, window_minutes=None)``."""

    def __init__(self, windows: Iterable[WindowResult]) -> None:
        by_id: dict[str, WindowResult] = {}
        for w in windows:  # at-least-once delivery: one window may arrive twice
            prev = by_id.get(w.window_id)
            if prev is None or w.emitted_at_ms >= prev.emitted_at_ms:
                by_id[w.window_id] = w
        self.windows: tuple[WindowResult, ...] = tuple(sorted(by_id.values(), key=lambda w: w.window_start_ms))

    def config_names(self) -> list[str]:
        return sorted({w.config_name for w in self.windows})

    def select(
        self,
        config_name: str | None = None,
        window_minutes: float | None = None,
        *,
        deployment_id: str | None = None,
        arm: str | None = None,
        now_ms: int | None = None,
    ) -> list[WindowResult]:
        cutoff = None
        if window_minutes is not None:
            now = now_ms if now_ms is not None else int(time.time() * 1000)
            cutoff = now - int(window_minutes * 60_000)
        return [
            w
            for w in self.windows
            if (config_name is None or w.config_name == config_name)
            and (deployment_id is None or w.deployment_id == deployment_id)
            and (arm is None or w.arm == arm)
            and (cutoff is None or w.window_end_ms > cutoff)
        ]

    def get_summary_stats(
        self,
        config_name: str,
        window_minutes: float | None = None,
        *,
        deployment_id: str | None = None,
        now_ms: int | None = None,
    ) -> dict[str, Any]:
        """Stats of ``config_name``'s windows; with ``window_minutes``, only windows ending in the last
        that many minutes (before ``now_ms``, default the wall clock)."""
        ws = self.select(config_name, window_minutes, deployment_id=deployment_id, now_ms=now_ms)
        stats = summarize(ws)
        stats.update(
            config_name=config_name,
            window_minutes=window_minutes,
            first_bucket=ws[0].to_dict()["timestamp"] if ws else None,
            last_bucket=ws[-1].to_dict()["timestamp"] if ws else None,
            deployments=sorted({w.deployment_id or "-" for w in ws}),
        )
        return stats

    def per_deployment(
        self,
        config_name: str,
        window_minutes: float | None = None,
        *,
        deployment_id: str | None = None,
        ends: Mapping[str, int] | None = None,
        now_ms: int | None = None,
    ) -> list[dict[str, Any]]:
        """``config_name``'s figures per deployment and arm it served in (oldest deployment first; ``"-"`` for
        windows of no deployment), each as :meth:`get_summary_stats` shapes them plus ``deployment_id`` and
        ``arm``. ``ends``: each ended deployment's end (the ledger's ``ended_at_ms``): its judged and failed
        buckets are counted until then, and ``buckets_after_end`` says how many came after (in flight)."""
        groups: dict[tuple[str, str], list[WindowResult]] = {}
        for w in self.select(config_name, window_minutes, deployment_id=deployment_id, now_ms=now_ms):
            groups.setdefault((w.deployment_id or "-", w.arm), []).append(w)
        out = []
        for (dep, arm), ws in sorted(groups.items(), key=lambda kv: (kv[1][0].window_start_ms, kv[0][1])):
            end = (ends or {}).get(dep)
            before = [w for w in ws if end is None or w.window_end_ms <= end]
            stats = summarize(ws)
            judged = summarize(before)
            stats.update(
                config_name=config_name,
                deployment_id=dep,
                arm=arm,
                window_minutes=window_minutes,
                judged_buckets=judged["judged_buckets"] if arm == "candidate" else 0,
                # last_good is never judged: no failed-bucket figure at all rather than a reassuring 0
                failed_buckets=judged["failed_buckets"] if arm == "candidate" else None,
                buckets_after_end=len(ws) - len(before),
                first_bucket=ws[0].to_dict()["timestamp"],
                last_bucket=ws[-1].to_dict()["timestamp"],
            )
            out.append(stats)
        return out
