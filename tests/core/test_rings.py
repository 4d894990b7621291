"""Rings (issue #23, item 5), Kafka-free: matching, the window series a ring's outcomes form, and what the
judge does with them (nothing)."""

from __future__ import annotations

import msgspec.structs
import pytest

from canary.core.judge import DeploymentJudge
from canary.core.models import SearchOutcome, WindowKey
from canary.core.rings import Ring, match_ring, ring_arm, rings_of_snapshot, split_ring_arm
from canary.core.slo import default_policy
from canary.errors import InvalidEvent
from canary.pipeline.policies import aggregator_for_policy
from tests.core.helpers import outcome, outcome_dict

INTERNAL = Ring("internal", "tenant", frozenset({"acme"}), "candidate")
VIP = Ring("vip", "user_id", frozenset({"u7"}), "last_good")


@pytest.mark.parametrize(
    ("user_id", "attributes", "ring"),
    [
        ("u1", {"tenant": "acme"}, "internal"),
        ("u7", {"tenant": "acme"}, "internal"),  # the first ring in the section's order wins
        ("u7", None, "vip"),
        ("u1", {"tenant": "other"}, None),
        (None, None, None),
    ],
)
def test_match_ring(user_id: str | None, attributes: dict[str, str] | None, ring: str | None) -> None:
    found = match_ring((INTERNAL, VIP), user_id, attributes)
    assert (found.name if found else None) == ring


def test_a_snapshot_round_trips_and_an_unreadable_one_has_no_rings() -> None:
    snapshot = {"rings": [INTERNAL.to_dict(), VIP.to_dict()]}
    assert rings_of_snapshot(snapshot) == (INTERNAL, VIP)
    assert rings_of_snapshot({"rings": [{"name": "Bad!", "attribute": "tenant", "values": [], "to": "x"}]}) == ()
    assert rings_of_snapshot({"rings": "x"}) == () and rings_of_snapshot(None) == ()
    assert split_ring_arm(ring_arm("candidate", "internal")) == ("candidate", "internal")
    assert split_ring_arm("candidate") == ("candidate", None)


def test_ring_outcomes_form_their_own_series_that_the_judge_never_judges() -> None:
    ringed = msgspec.structs.replace(outcome(1, 900.0), ring="internal")
    assert ringed.window_key.arm == "candidate@internal"
    assert outcome(1).window_key.arm == "candidate"
    assert "ring" not in outcome(1).to_dict()  # outcomes without a ring keep their JSON
    assert SearchOutcome.from_dict(ringed.to_dict()) == ringed
    with pytest.raises(InvalidEvent, match="ring"):
        SearchOutcome.from_dict(outcome_dict(ring="a@b"))
    agg = aggregator_for_policy(default_policy())
    state = agg.agg(agg.initialize(), [msgspec.structs.replace(outcome(i, 3000.0), ring="internal") for i in range(40)])
    window = agg.result(state, WindowKey("dep-1", "cand", "candidate@internal"), 0, 5000, (), 6000)
    assert DeploymentJudge("dep-1", default_policy()).observe(window, 6000) == []  # slow, but a ring: not judged


@pytest.mark.parametrize(
    ("rings", "problem"),
    [
        ([{"name": "X", "attribute": "tenant", "values": ["a"], "to": "candidate"}], 'rings[0].name = "X": lower-case'),
        ([{"name": "a", "attribute": "Tenant", "values": ["a"], "to": "candidate"}], 'rings[0].attribute = "Tenant"'),
        (
            [{"name": "a", "attribute": "tenant", "values": [], "to": "candidate"}],
            "rings[0].values = []: list at least one",
        ),
        ([{"name": "a", "attribute": "tenant", "values": ["a"], "to": "all"}], 'rings[0].to = "all": must be one of'),
        (
            [{"name": "a", "attribute": "tenant", "values": ["a"], "to": "candidate", "when": 1}],
            "rings[0].when = 1: unknown",
        ),
        ("internal", 'rings = "internal": expected a list of mappings'),
    ],
)
def test_a_bad_rings_section_names_file_field_value_and_why(tmp_path: object, rings: object, problem: str) -> None:
    from pathlib import Path

    import yaml

    from canary.config import PresetValidationError, load_preset

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "configs" / "presets" / "candidate_high_recall.yaml").read_text())
    data["rings"] = rings
    path = Path(str(tmp_path)) / "candidate_high_recall.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PresetValidationError) as info:
        load_preset(path)
    assert any(str(e).startswith(f"{path}: {problem}") for e in info.value.errors), info.value.errors
