"""A/B/n split: arcs of users on a circle, folded from the control topic (Kafka-free)."""

from __future__ import annotations

from collections import Counter

import pytest

from canary.core.deployment import ControlLedger
from canary.core.models import ControlCommand
from canary.core.split import Arc, baseline_of, candidate_of, place

USERS = [f"user-{i}" for i in range(20_000)]


def cmd(type_: str, dep: str, weight: float | None = None, command_id: str | None = None) -> ControlCommand:
    snapshot = {"metadata": {"name": f"cand-{dep}", "version": "1.0.0"}} if type_ == "start" else None
    return ControlCommand(
        command_id=command_id or f"{type_}-{dep}-{weight}",
        type=type_,  # type: ignore[arg-type]
        deployment_id=dep,
        candidate_config=snapshot,
        candidate_config_hash=None,
        last_good_config={"metadata": {"name": "lg", "version": "1.0.0"}} if type_ == "start" else None,
        weight=weight,
        reason=None,
        evidence=None,
        issued_by="t",
        issued_at_ms=1000,
    )


def assignment(ledger: ControlLedger) -> dict[str, str | None]:
    running = [d.arc for d in ledger.live if d.status == "running"]
    return {u: candidate_of(u, running) for u in USERS}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (Arc("a", 0.1, 0.2), Arc("b", 0.3, 0.1), False),  # touching ends
        (Arc("a", 0.1, 0.2), Arc("b", 0.25, 0.1), True),
        (Arc("a", 0.9, 0.2), Arc("b", 0.05, 0.1), True),  # a wraps around 1.0
        (Arc("a", 0.9, 0.1), Arc("b", 0.0, 0.1), False),
        (Arc("a", 0.5, 0.0), Arc("b", 0.5, 0.1), False),
    ],
)
def test_arcs_overlap(a: Arc, b: Arc, expected: bool) -> None:
    assert a.overlaps(b) is expected and b.overlaps(a) is expected


def test_place_takes_the_first_gap_that_fits() -> None:
    taken = [Arc("x", 0.0, 0.6)]
    start = place("new", 0.3, taken)
    assert start is not None and not Arc("new", start, 0.3).overlaps(taken[0])
    assert place("new", 0.5, taken) is None


def test_two_candidates_share_traffic_by_weight_and_never_a_user() -> None:
    ledger = ControlLedger()
    assert ledger.apply(cmd("start", "a", 0.1)).applied
    assert ledger.apply(cmd("start", "b", 0.2)).applied
    shares = Counter(assignment(ledger).values())
    assert abs(shares["a"] / len(USERS) - 0.1) < 0.01 and abs(shares["b"] / len(USERS) - 0.2) < 0.01
    # Every last_good request is the baseline of exactly one of them, about half each.
    base = Counter(baseline_of(u, ["a", "b"]) for u in USERS)
    assert set(base) == {"a", "b"} and abs(base["a"] / len(USERS) - 0.5) < 0.02


def test_when_one_ends_its_users_go_to_last_good_never_to_the_other() -> None:
    ledger = ControlLedger()
    ledger.apply(cmd("start", "a", 0.2))
    ledger.apply(cmd("start", "b", 0.2))
    before = assignment(ledger)
    assert ledger.apply(cmd("rollback", "a", 0.0)).applied
    after = assignment(ledger)
    assert all(after[u] is None for u, d in before.items() if d == "a")
    assert all(after[u] == "b" for u, d in before.items() if d == "b")


def test_raising_a_weight_moves_only_last_good_users_and_cannot_take_anothers() -> None:
    ledger = ControlLedger()
    ledger.apply(cmd("start", "a", 0.1))
    ledger.apply(cmd("start", "b", 0.1))
    before = assignment(ledger)
    a, b = ledger.deployments["a"].arc, ledger.deployments["b"].arc
    fits = not Arc("a", a.start, 0.2).overlaps(b)  # arcs start where the deployment id puts them
    assert ledger.apply(cmd("set_weight", "a", 0.2)).applied is fits
    after = assignment(ledger)
    assert all(after[u] == d for u, d in before.items() if d is not None)  # nobody leaves a or b
    grab = ledger.apply(cmd("set_weight", "a", 0.95))
    assert not grab.applied and "would overlap the users of b" in grab.note


def test_starts_that_do_not_fit_and_a_foreign_baseline_are_refused() -> None:
    ledger = ControlLedger()
    ledger.apply(cmd("start", "a", 0.6))
    t = ledger.apply(cmd("start", "b", 0.5))
    assert not t.applied and "does not fit beside the running canaries" in t.note
    other = cmd("start", "c", 0.1)
    foreign = ControlCommand(
        **{
            **{f: getattr(other, f) for f in other.__struct_fields__},
            "last_good_config": {"metadata": {"name": "other", "version": "2.0.0"}},
        }
    )
    t = ledger.apply(foreign)
    assert not t.applied and "is not the baseline of the running canaries" in t.note


def test_promoting_one_candidate_aborts_the_others_whose_baseline_changed() -> None:
    ledger = ControlLedger()
    ledger.apply(cmd("start", "a", 0.1))
    ledger.apply(cmd("start", "b", 0.1))
    assert ledger.apply(cmd("promote", "a")).applied
    assert ledger.deployments["a"].status == "promoted" and ledger.last_good is not None
    assert ledger.last_good.name == "cand-a"
    b = ledger.deployments["b"]
    assert b.status == "aborted" and b.reason is not None and "cand-a (a) was promoted" in b.reason
    assert ledger.live == [] and ledger.current is None
