"""The judge's checkpoint, declared once (``JudgeState``): a checkpoint written by the code before the
declaration (a literal sample captured from ``DeploymentJudge.to_dict`` at da5b9c6) restores and judges on,
older ones still restore, and each kind of bad field is refused naming it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from canary.core.evidence import dispersion
from canary.core.judge import DeploymentJudge
from canary.errors import InvalidEvent
from tests.core.test_judge import make_window, requests

SAMPLE: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "judge_checkpoint_da5b9c6.json").read_text()
)


def _today(older: dict[str, Any], decisive: dict[str, Any]) -> dict[str, Any]:
    """``older`` as today's code writes it: ``decisive`` where ``strongest`` was, and no clustering measured yet
    (the sample's windows carry no user groups) right before ``shock``."""
    out: dict[str, Any] = {}
    for k, v in older.items():
        if k == "shock":
            out["clustering"] = {}
        out["decisive" if k == "strongest" else k] = decisive if k == "strongest" else v
    return out


def test_a_checkpoint_written_before_the_declaration_restores_to_the_same_json() -> None:
    judge = DeploymentJudge.from_dict(copy.deepcopy(SAMPLE))
    # p95_ms's strongest window was decisive (log e 7.65 of 4.83): a later bucket may not lean on it; lat_rel's
    # (log e -1e9) was not.
    today = _today(
        SAMPLE, {"p95_ms": {"stats": SAMPLE["strongest"]["p95_ms"]["stats"], "starts": [15_000], "shared": []}}
    )
    assert json.loads(json.dumps(judge.to_dict())) == today
    assert list(judge.to_dict()) == list(today)  # same fields, same order
    assert (judge.deployment_id, judge.candidate_windows, judge.rolled_back) == ("dep-1", 4, True)
    assert sorted(judge.pending_baseline) == [20_000] and judge.last_good_recent[0].count == 4
    assert [w.window_start_ms for w, _ in judge.waiting] == [25_000]
    assert list(judge.decisive) == ["p95_ms"] and judge.regime_index == 1
    again = DeploymentJudge.from_dict(judge.to_dict())
    assert again.to_dict() == judge.to_dict()


def test_a_decisive_strongest_window_of_an_older_checkpoint_stays_left_out() -> None:
    older = copy.deepcopy(SAMPLE)
    older["strongest"]["lat_rel"]["log_e"] = 30.0  # its own data alone proved the rule broken
    judge = DeploymentJudge.from_dict(older)
    assert judge.decisive["lat_rel"].starts == [15_000]
    assert judge.decisive["lat_rel"].stats.to_dict() == older["strongest"]["lat_rel"]["stats"]
    assert DeploymentJudge.from_dict(judge.to_dict()).to_dict() == judge.to_dict()


def test_the_restored_judge_judges_on_like_the_one_that_wrote_it() -> None:
    judge = DeploymentJudge.from_dict(copy.deepcopy(SAMPLE))
    policy = judge.policy
    # The waiting candidate window (start 25000) is released by last_good's window of its slot.
    (judged,) = judge.observe(make_window(5, requests(4, slow=1, recall=None), arm="last_good", policy=policy), 31_000)
    assert judged.window.window_start_ms == 25_000
    assert judged.decision is None  # rolled back before the checkpoint: never twice
    assert judge.candidate_windows == 5


def test_a_checkpoint_from_before_the_change_detector_restores_with_an_empty_history() -> None:
    older = {
        k: v
        for k, v in SAMPLE.items()
        if k
        not in (
            "baseline_wait_ms",
            "regime_start_ms",
            "regime_index",
            "next_regime_ms",
            "recent",
            "strongest",
            "last_good_recent",
        )
    }
    judge = DeploymentJudge.from_dict(older)
    assert (judge.baseline_wait_ms, judge.regime_index, judge.recent, judge.decisive) == (2000, 0, [], {})
    assert judge.regime_start_ms is None and judge.last_good_recent == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"deployment_id": ""}, "DeploymentJudge.deployment_id: must not be empty"),
        ({"candidate_windows": -1}, "DeploymentJudge.candidate_windows: must be >= 0, got -1"),
        ({"candidate_windows": "4"}, "DeploymentJudge.candidate_windows: expected an integer, got '4'"),
        ({"rolled_back": "yes"}, "DeploymentJudge.rolled_back: expected true/false, got 'yes'"),
        ({"last_judged_start": 1.5}, "DeploymentJudge.last_judged_start: expected an integer"),
        ({"pending_baseline": {"soon": {}}}, "DeploymentJudge.pending_baseline: expected every key valid: must match"),
        ({"waiting": [[{}, "x"]]}, "DeploymentJudge.waiting: expected every item valid: [0][1]: expected an integer"),
        ({"streaks": {"p95_ms": 3}}, "DeploymentJudge.streaks: expected every item valid: [...]: expected a list"),
        (
            {"strongest": {"lat_rel": {"log_e": 1.0}}},
            "DeploymentJudge.strongest[...].start: required field is missing",
        ),
        ({"decisive": {"lat_rel": {"starts": []}}}, "DeploymentJudge.decisive[...].stats: required field is missing"),
        ({"policy": {"rules": "all"}}, "DeploymentJudge(deployment_id='dep-1'): SLOPolicy: malformed"),
        ({"candidate": {"count": 1}}, "DeploymentJudge(deployment_id='dep-1'): WindowStats: malformed"),
        ({"waiting": [[{"arm": "candidate"}, 1]]}, "DeploymentJudge(deployment_id='dep-1'): WindowResult."),
        ({"clustering": {"p95_ms": [-1.0, 2.0, 1.0]}}, "DeploymentJudge.clustering: expected every item valid"),
        ({"clustering": {"p95_ms": [1.0, 2.0]}}, "DeploymentJudge.clustering: expected every item valid"),
        ({"clustering": {"p95_ms": [1e301, 2.0, 1.0]}}, "DeploymentJudge.clustering: expected every item valid"),
    ],
)
def test_each_bad_field_is_refused_naming_it(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        DeploymentJudge.from_dict({**copy.deepcopy(SAMPLE), **change})
    assert message in str(caught.value)


@pytest.mark.parametrize("missing", ["deployment_id", "policy", "candidate", "waiting", "streaks", "rolled_back"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    with pytest.raises(InvalidEvent, match=rf"DeploymentJudge\.{missing}: required field is missing"):
        DeploymentJudge.from_dict({k: v for k, v in SAMPLE.items() if k != missing})


def test_the_clustering_measured_so_far_survives_a_checkpoint() -> None:
    judge = DeploymentJudge.from_dict({**copy.deepcopy(SAMPLE), "clustering": {"p95_ms": [125.0, 50.0, 40.0]}})
    rule = next(r for r in judge.policy.rules if r.name == "p95_ms")
    assert judge.dispersion(rule) == dispersion(125.0, 50.0, 40.0) > 2.0
    assert DeploymentJudge.from_dict(judge.to_dict()).clustering == {"p95_ms": (125.0, 50.0, 40.0)}


def test_a_shock_that_is_not_an_object_reads_as_none_as_before() -> None:
    assert DeploymentJudge.from_dict({**SAMPLE, "shock": [1]}).shock is None
    assert DeploymentJudge.from_dict({**SAMPLE, "shock": {"rule": "p95_ms"}}).shock == {"rule": "p95_ms"}


def _as_the_standard_library_writes(judge: DeploymentJudge) -> Any:
    return json.loads(json.dumps(judge.to_dict()))


def test_the_checkpoint_as_json_is_the_dict_the_standard_library_writes() -> None:
    """``to_json`` (what the SLO agent writes after every window: each window statistics encoded once, kept) reads
    back as ``json.dumps(to_dict())`` does, before and after the judge takes more windows."""
    judge = DeploymentJudge.from_dict(copy.deepcopy(SAMPLE))
    assert json.loads(judge.to_json()) == _as_the_standard_library_writes(judge)
    policy = judge.policy
    for i in range(5, 9):
        for arm in ("last_good", "candidate"):
            judge.observe(make_window(i, requests(6, slow=2, recall=0.4), arm=arm, policy=policy), (i + 2) * 5000)
        assert json.loads(judge.to_json()) == _as_the_standard_library_writes(judge)
    assert DeploymentJudge.from_dict(json.loads(judge.to_json())).to_dict() == judge.to_dict()


def test_a_statistics_without_its_fragment_is_encoded_from_the_dict(monkeypatch: pytest.MonkeyPatch) -> None:
    """A window statistics orjson cannot write as the standard library does has no fragment: the whole checkpoint is
    then written from the dict, as before."""
    from canary.core.aggregations import WindowStats

    judge = DeploymentJudge.from_dict(copy.deepcopy(SAMPLE))
    monkeypatch.setattr(WindowStats, "shared_fragment", lambda self: None)
    assert json.loads(judge.to_json()) == _as_the_standard_library_writes(judge)
