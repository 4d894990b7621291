"""Who may start beside whom (issue #21): one canary at a time unless several are asked for, never the same
preset twice — refused with the running deployment and how to proceed, in the asker's terms (Kafka-free:
the rules run on the ledger folded from real start commands and the shipped presets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.config import Preset, PresetStore
from canary.core.deployment import ControlLedger
from canary.core.models import ControlCommand
from canary.errors import ConfigError, DeploymentError
from canary.ops.commands import check_side_by_side, prepare_start
from canary.settings import load_settings

PRESETS = PresetStore(Path(__file__).resolve().parents[2] / "configs" / "presets")


def _running(*starts: tuple[str, str, float]) -> ControlLedger:
    """A ledger with one started deployment per (deployment id, preset, weight)."""
    ledger = ControlLedger()
    last_good = PRESETS.get("last_good")
    for i, (dep, name, weight) in enumerate(starts):
        preset = PRESETS.get(name)
        applied = ledger.apply(
            ControlCommand(
                command_id=f"start-{dep}",
                type="start",
                deployment_id=dep,
                candidate_config=preset.to_dict(),
                candidate_config_hash=preset.content_hash,
                last_good_config=last_good.to_dict(),
                weight=weight,
                reason=None,
                evidence=None,
                issued_by="cli:test",
                issued_at_ms=1000 + i,
            )
        )
        assert applied.applied, applied.note
    return ledger


def _check(ledger: ControlLedger, preset: Preset, weight: float = 0.1, **kw: object) -> None:
    check_side_by_side(ledger.live, preset, weight, 0.5, **kw)  # type: ignore[arg-type]


def test_nothing_running_any_start_passes() -> None:
    _check(ControlLedger(), PRESETS.get("candidate_slow"))
    _check(_running(), PRESETS.get("candidate_progressive"))


def test_a_second_start_is_refused_naming_the_running_one_and_how_to_proceed() -> None:
    ledger = _running(("canary_1_0001", "candidate_high_recall", 0.1))
    with pytest.raises(DeploymentError) as refused:
        _check(ledger, PRESETS.get("candidate_slow"))
    assert str(refused.value) == (
        "a canary is already running: canary_1_0001 (candidate_high_recall, weight 0.1, running). "
        "Starting candidate_slow would run another one beside it. End it first (canary stop --promote | "
        "--rollback), or ask for several candidates at once with --parallel"
    )
    with pytest.raises(DeploymentError) as api:
        _check(ledger, PRESETS.get("candidate_slow"), via="api")
    assert "End it first (stop_canary(promote=True | False))" in str(api.value)
    assert "start_canary(..., parallel=True)" in str(api.value)
    _check(ledger, PRESETS.get("candidate_slow"), parallel=True)  # asked for: allowed


def test_the_same_preset_twice_is_refused_even_in_parallel() -> None:
    ledger = _running(("canary_1_0001", "candidate_high_recall", 0.1))
    for parallel in (False, True):
        with pytest.raises(DeploymentError) as refused:
            _check(ledger, PRESETS.get("candidate_high_recall"), parallel=parallel)
        assert str(refused.value).startswith(
            "candidate_high_recall is already running as canary_1_0001 (weight 0.1, running); a preset runs at "
            "most once at a time"
        )
        assert str(refused.value).endswith(
            "End it first: canary stop --deployment canary_1_0001 --promote | --rollback"
        )
    with pytest.raises(DeploymentError) as api:
        _check(ledger, PRESETS.get("candidate_high_recall"), parallel=True, via="api")
    assert "stop_canary(deployment_id='canary_1_0001', promote=True | False)" in str(api.value)


def test_a_paused_canary_counts_as_running() -> None:
    ledger = _running(("canary_1_0001", "candidate_high_recall", 0.1))
    pause = ControlCommand("pause-1", "pause", "canary_1_0001", None, None, None, None, "hold", None, "cli:t", 2000)
    assert ledger.apply(pause).applied
    with pytest.raises(DeploymentError, match=r"canary_1_0001 \(candidate_high_recall, weight 0.1, paused\)"):
        _check(ledger, PRESETS.get("candidate_slow"))


def test_several_running_each_is_named_and_the_older_rules_still_hold() -> None:
    ledger = _running(("canary_1_0001", "candidate_high_recall", 0.2), ("canary_1_0002", "candidate_slow", 0.2))
    with pytest.raises(DeploymentError) as refused:
        _check(ledger, PRESETS.get("candidate_low_recall"))
    message = str(refused.value)
    assert message.startswith("2 canaries are already running: canary_1_0001 (candidate_high_recall, weight 0.2, ")
    assert "End them first (canary stop --deployment ID --promote | --rollback, for each)" in message
    # Asked for, a third is still held to last_good's minimum share and to plans running alone.
    with pytest.raises(DeploymentError, match=r"would leave last_good 0\.45 of traffic, under the minimum 0\.5"):
        _check(ledger, PRESETS.get("candidate_low_recall"), 0.15, parallel=True)
    with pytest.raises(DeploymentError, match="has a rollout plan, which runs alone"):
        _check(ledger, PRESETS.get("candidate_progressive"), parallel=True)
    _check(ledger, PRESETS.get("candidate_low_recall"), 0.1, parallel=True)


async def test_prepare_start_refuses_bad_input_in_the_askers_terms() -> None:
    """The one start path of the CLI and the API, before Kafka is contacted (exit 2 / ConfigError)."""
    settings = load_settings().with_overrides(project_root=PRESETS.directory.parents[1], environment=None)
    with pytest.raises(ConfigError, match="'last_good' is the baseline; start a candidate preset instead"):
        await prepare_start(settings, "last_good")
    with pytest.raises(ConfigError) as cli:
        await prepare_start(settings, "candidate_progressive", 0.5)
    assert str(cli.value).startswith("--weight 0.5: preset candidate_progressive has a rollout plan starting at 0.1")
    assert "leave --weight out or edit rollout.steps" in str(cli.value)
    with pytest.raises(ConfigError) as api:
        await prepare_start(settings, "candidate_progressive", 0.5, via="api")
    assert str(api.value).startswith("weight=0.5: preset candidate_progressive") and "leave weight out" in str(
        api.value
    )
    with pytest.raises(ConfigError, match=r"^weight=1\.5: must be a number in \(0, 1\]$"):
        await prepare_start(settings, "candidate_slow", 1.5, via="api")
    request = await prepare_start(settings, "candidate_progressive")
    assert (request.candidate.name, request.weight, request.environment) == ("candidate_progressive", 0.1, None)
    assert (await prepare_start(settings, "candidate_slow")).weight == 0.1
