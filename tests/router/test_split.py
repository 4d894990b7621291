"""The sticky split, table-driven and statistically (Kafka-free)."""

from __future__ import annotations

import pytest

from router.split import assign_arm, bucket


@pytest.mark.parametrize(
    ("weight", "deployment"),
    [(0.10, "canary_a"), (0.10, "canary_b"), (0.05, "canary_a"), (0.25, "canary_c"), (0.5, "canary_d")],
)
def test_candidate_share_within_one_point_over_20k_requests(weight: float, deployment: str) -> None:
    arms = [assign_arm(f"user-{i}", deployment, weight) for i in range(20_000)]
    share = arms.count("candidate") / len(arms)
    assert abs(share - weight) <= 0.01, share


def test_user_never_switches_arm_while_weight_unchanged() -> None:
    first = {u: assign_arm(f"user-{u}", "canary_x", 0.1) for u in range(5000)}
    for _ in range(3):
        assert all(assign_arm(f"user-{u}", "canary_x", 0.1) == arm for u, arm in first.items())


def test_raising_the_weight_only_moves_users_to_the_candidate() -> None:
    low = {u: assign_arm(f"u{u}", "canary_y", 0.1) for u in range(5000)}
    high = {u: assign_arm(f"u{u}", "canary_y", 0.3) for u in range(5000)}
    assert all(high[u] == "candidate" for u, arm in low.items() if arm == "candidate")


@pytest.mark.parametrize(
    ("deployment", "weight", "expected"),
    [(None, 0.5, "last_good"), ("canary_z", 0.0, "last_good"), ("canary_z", 1.0, "candidate")],
)
def test_edges(deployment: str | None, weight: float, expected: str) -> None:
    assert assign_arm("anyone", deployment, weight) == expected


def test_each_deployment_samples_different_users() -> None:
    a = {u for u in range(5000) if assign_arm(f"u{u}", "canary_1", 0.1) == "candidate"}
    b = {u for u in range(5000) if assign_arm(f"u{u}", "canary_2", 0.1) == "candidate"}
    assert len(a & b) < 0.25 * len(a)
    assert 0.0 <= bucket("x", "y") < 1.0
