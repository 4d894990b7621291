"""Rings on the real broker (issue #23, item 5): a ring's users always land where the ring says, whatever the
sticky hash; their outcomes form window series of their own that the judge never judges, and the report
shows ring and random traffic apart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec.structs
import pytest

from canary.core.deployment import snapshot_hash
from canary.core.models import WindowResult
from canary.reports.model import build_report
from canary.reports.view import cards
from canary.settings import Settings
from devtools.harness import (
    WorkerProcess,
    end_command,
    fresh_worker,
    make_backend,
    preset_ref,
    read_all,
    read_judged,
    send_command,
    start_command,
)
from router.service import RouterService

pytestmark = pytest.mark.kafka

RINGS = [
    {"name": "internal", "attribute": "tenant", "values": ["acme"], "to": "candidate"},
    {"name": "vip", "attribute": "user_id", "values": ["user-7"], "to": "last_good"},
]


@pytest.fixture
def worker(base_settings: Settings, kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    with fresh_worker(kafka_bootstrap, "rings", tmp_path) as proc:
        yield proc


async def test_ring_users_always_land_where_the_ring_says_and_are_kept_apart(worker: WorkerProcess) -> None:
    router = RouterService(
        worker.bootstrap, worker.topics, make_backend(), preset_ref("last_good"), consume_requests=False
    )
    await router.start()
    cmd = start_command("candidate_high_recall", weight=0.1)
    snapshot = {**cmd.candidate_config, "rings": RINGS}
    cmd = msgspec.structs.replace(cmd, candidate_config=snapshot, candidate_config_hash=snapshot_hash(snapshot))
    dep = cmd.deployment_id
    used: list[tuple[str, dict[str, Any]]] = []
    try:
        await send_command(worker.bootstrap, worker.topics, cmd)
        while dep not in router.ledger.deployments:
            await asyncio.sleep(0.05)
        for i in range(240):  # 12 s at 20 requests/s: a third of them from tenant acme, some from user-7
            kind = ("acme", "vip", "random")[i % 3] if i % 9 else "vip"
            user = "user-7" if kind == "vip" else f"user-{100 + i}"
            attributes = {"tenant": "acme"} if kind == "acme" else {"tenant": "other"}
            _, config_used = await router.execute_search(f"q{i % 50}", "documents", user_id=user, attributes=attributes)
            used.append((kind, config_used))
            await asyncio.sleep(0.05)
        await asyncio.sleep(7)  # the last windows close and are judged
        await send_command(worker.bootstrap, worker.topics, end_command(dep))
        await asyncio.sleep(2)
    finally:
        await router.stop()

    assert all(u["arm"] == "candidate" and u.get("ring") == "internal" for k, u in used if k == "acme")
    assert all(u["arm"] == "last_good" and u.get("ring") == "vip" for k, u in used if k == "vip")
    random_arms = [u["arm"] for k, u in used if k == "random"]
    assert all("ring" not in u for k, u in used if k == "random")
    assert random_arms.count("candidate") < len(random_arms) / 2  # the 10 % split, not the ring

    windows = [
        WindowResult.from_dict(w)
        for w in await read_all(worker.bootstrap, worker.topics.windows)
        if w.get("deployment_id") == dep
    ]
    counts: dict[str, int] = {}
    for w in {w.window_id: w for w in windows}.values():
        counts[w.arm] = counts.get(w.arm, 0) + w.response_count
    acme = sum(1 for k, _ in used if k == "acme")
    assert counts.get("candidate@internal") == acme, counts
    assert counts.get("last_good@vip") == sum(1 for k, _ in used if k == "vip"), counts
    assert counts.get("candidate", 0) == random_arms.count("candidate"), counts  # the ring is not in it
    judged = await read_judged(worker.bootstrap, worker.topics, dep)
    assert judged and {w["arm"] for w in judged} == {"candidate"}  # ring windows are never judged

    control = [c for c in await read_all(worker.bootstrap, worker.topics.control) if c["deployment_id"] == dep]
    report = build_report(commands=control, windows=windows)
    ring_cards = {k["label"]: k for k in cards(report) if k["label"].startswith("Ring ")}
    assert set(ring_cards) == {"Ring internal → candidate", "Ring vip → last_good"}
    assert ring_cards["Ring internal → candidate"]["value"] == f"{acme:,} requests"
    assert "not judged" in ring_cards["Ring internal → candidate"]["compare"]
