"""Shadow starts (issue #23, item 1), Kafka-free: how the one start path reads --shadow / --mirror and a plan's
shadow step, how the ledger folds a shadow start, and the shadow step's grammar in a preset."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from canary.config import PresetStore, PresetValidationError, load_preset
from canary.core.deployment import ControlLedger
from canary.core.models import ControlCommand
from canary.errors import ConfigError
from canary.ops.commands import prepare_start
from canary.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
PRESETS = PresetStore(ROOT / "configs" / "presets")
SHADOW_PLAN = {
    "steps": [{"weight": 0, "mirror": 0.2, "min_windows": 2}, {"weight": 0.1}, {"weight": 1.0}],
    "min_total_duration_s": 0,
}


def _start(weight: float, mirror: float | None, dep: str = "d1") -> ControlCommand:
    preset, last_good = PRESETS.get("candidate_high_recall"), PRESETS.get("last_good")
    return ControlCommand(
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
        issued_at_ms=1000,
        mirror=mirror,
    )


def test_the_ledger_folds_a_shadow_start_and_a_step_with_users_ends_it() -> None:
    ledger = ControlLedger()
    assert ledger.apply(_start(0.0, 0.3)).applied
    dep = ledger.deployments["d1"]
    assert (dep.weight, dep.mirror, dep.shadow_share) == (0.0, 0.3, 0.3)
    assert not dep.arc.holds(0.0) and dep.candidate_weight == 0.0  # no user lands on the candidate
    set_weight = ControlCommand("w1", "set_weight", "d1", None, None, None, 0.1, None, None, "cli:test", 2000)
    assert ledger.apply(set_weight).applied
    assert ledger.deployments["d1"].shadow_share == 0.0  # users on the candidate: no more mirroring
    refused = ControlLedger().apply(_start(0.0, None, "d2"))
    assert not refused.applied and "weight 0 and no mirror share" in refused.note


async def test_prepare_start_reads_shadow_and_mirror_in_the_askers_terms() -> None:
    settings = load_settings().with_overrides(project_root=ROOT, environment=None)
    request = await prepare_start(settings, "candidate_slow", shadow=True)
    assert (request.weight, request.mirror) == (0.0, 0.10)
    assert (await prepare_start(settings, "candidate_slow", mirror=0.5)).mirror == 0.5
    with pytest.raises(
        ConfigError, match=r"^--weight 0\.2: a shadow start serves no user \(weight 0\); leave --weight"
    ):
        await prepare_start(settings, "candidate_slow", 0.2, shadow=True)
    with pytest.raises(ConfigError, match=r"^mirror=1\.5: the mirror share must be a number in \(0, 1\]$"):
        await prepare_start(settings, "candidate_slow", mirror=1.5, via="api")
    with pytest.raises(ConfigError, match=r"has a rollout plan starting at 0\.1; give its first step weight 0"):
        await prepare_start(settings, "candidate_progressive", shadow=True)
    assert (await prepare_start(settings, "candidate_slow")).mirror is None


async def test_a_plan_with_a_shadow_step_starts_in_shadow(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    path = tmp_path / "configs" / "presets" / "candidate_shadowed.yaml"
    data = yaml.safe_load((ROOT / "configs" / "presets" / "candidate_high_recall.yaml").read_text())
    data["metadata"]["name"] = "candidate_shadowed"
    data["rollout"] = SHADOW_PLAN
    path.write_text(yaml.safe_dump(data))
    settings = load_settings().with_overrides(project_root=tmp_path, environment=None)
    request = await prepare_start(settings, "candidate_shadowed")
    assert (request.weight, request.mirror) == (0.0, 0.2)
    assert request.candidate.to_dict()["rollout"]["steps"][0]["mirror"] == 0.2
    assert "mirror" not in request.candidate.to_dict()["rollout"]["steps"][1]


@pytest.mark.parametrize(
    ("steps", "problem"),
    [
        ([{"weight": 0}, {"weight": 0.5}], "rollout.steps[0].weight = 0.0: must be in (0, 1] (weight 0 only for"),
        (
            [{"weight": 0.1, "mirror": 0.2}, {"weight": 0.5}],
            "rollout.steps[0].mirror = 0.2: only a first step with weight 0 mirrors (a shadow step)",
        ),
        (
            [{"weight": 0, "mirror": 0.2}, {"weight": 0, "mirror": 0.2}],
            "rollout.steps[1].mirror = 0.2: only a first step with weight 0 mirrors",
        ),
        ([{"weight": 0, "mirror": 1.5}, {"weight": 0.5}], "rollout.steps[0].mirror = 1.5: must be between 0 and 1"),
    ],
)
def test_a_bad_shadow_step_names_file_field_value_and_why(
    tmp_path: Path, steps: list[dict[str, float]], problem: str
) -> None:
    data = yaml.safe_load((ROOT / "configs" / "presets" / "candidate_high_recall.yaml").read_text())
    data["rollout"] = {"steps": steps, "min_total_duration_s": 0}
    path = tmp_path / "candidate_high_recall.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PresetValidationError) as info:
        load_preset(path)
    assert any(str(e).startswith(f"{path}: {problem}") for e in info.value.errors), info.value.errors
