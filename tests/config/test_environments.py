"""Environments: the namespace a name gives, the file's validation, the overrides a start carries."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.config import PresetStore
from canary.config.environments import EnvironmentError_, apply_environment, load_environment
from canary.errors import ConfigError
from canary.kafka.topics import Topics
from canary.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PRESETS = PresetStore(ROOT / "configs" / "presets")
ENVS = ROOT / "configs" / "environments"


def test_an_environment_namespaces_topics_keys_caches_audit_and_reports(tmp_path: Path) -> None:
    base = load_settings(
        {"CANARY_HOME": str(tmp_path), "CANARY_PROJECT_ROOT": str(tmp_path), "CANARY_TOPIC_PREFIX": "t1."}
    )
    prod, staging = base.in_environment("prod"), base.in_environment("staging")
    assert (prod.topic_prefix, staging.topic_prefix) == ("t1.prod.", "t1.staging.")
    assert (
        Topics(prod.topic_prefix).control != Topics(staging.topic_prefix).control != Topics(base.topic_prefix).control
    )
    assert Topics(prod.topic_prefix).windows == "t1.prod.canary_windows"
    assert prod.trusted_keys_dir == tmp_path / "envs" / "prod" / "trusted-keys"
    assert prod.operator_key_path == tmp_path / "envs" / "prod" / "keys" / "operator.key"
    # Under the base prefix's own directory: another prefix's prod shares nothing with this one.
    assert prod.reports_dir == tmp_path / "reports" / "canary" / "t1" / "prod" != staging.reports_dir
    assert prod.dashboard_token_path != staging.dashboard_token_path
    assert prod.sibling("staging") == staging
    assert load_settings({"CANARY_ENV": "prod", "CANARY_TOPIC_PREFIX": "t1."}).topic_prefix == "t1.prod."


@pytest.mark.parametrize("name", ["Prod", "pr od", "../x", "", "a" * 40])
def test_bad_environment_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="environment"):
        Settings().in_environment(name or " ")


def test_an_unknown_environment_names_the_missing_file_and_the_known_ones() -> None:
    with pytest.raises(EnvironmentError_) as info:
        load_environment(ENVS, "qa")
    assert f"unknown environment 'qa': no {ENVS / 'qa.yaml'} (known: prod, staging)" == str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("weight: 2\n", "weight = 2: must be between 0 and 1"),
        ("weight: 0\n", "weight = 0.0: must be above 0"),
        ("requires_passed_in: case\n", 'requires_passed_in = "case": an environment cannot require itself'),
        ("requires_passed_in: nowhere\n", 'requires_passed_in = "nowhere": no such environment in'),
        ("alerts:\n  - url: ftp://x\n", 'alerts[0].url = "ftp://x": must be an http:// or https:// URL'),
        ("alerts:\n  - url: http://x\n    events: [rollbak]\n", 'alerts[0].events[0] = "rollbak": must be one of'),
        ("slo: 3\n", "slo = 3: must be a mapping"),
        ("wieght: 0.1\n", "wieght = 0.1: unknown field (did you mean 'weight'?)"),
    ],
)
def test_bad_environment_files_name_file_field_value_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "case.yaml").write_text(text)
    with pytest.raises(EnvironmentError_) as info:
        load_environment(tmp_path, "case")
    assert f"{tmp_path / 'case.yaml'}: {expected}" in str(info.value)


def test_a_start_in_prod_carries_the_overrides_and_the_preset_hash_before_them() -> None:
    prod = load_environment(ENVS, "prod")
    preset = PRESETS.get("candidate_high_recall")
    there = apply_environment(preset, prod)
    assert there.slo.p95_ms == 1000.0 and preset.slo.p95_ms == 1200.0
    assert there.environment is not None and there.environment.name == "prod"
    assert there.environment.preset_hash == preset.content_hash != there.content_hash
    # The stamped snapshot is a valid preset for every reader (the verifier re-validates starts).
    assert type(there).from_snapshot(there.to_dict()) == there


def test_an_override_that_breaks_the_preset_names_the_environment_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("slo:\n  p95_ms: -5\n")
    env = load_environment(tmp_path, "bad")
    with pytest.raises(EnvironmentError_) as info:
        apply_environment(PRESETS.get("candidate_high_recall"), env)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: applying environment 'bad' to preset candidate_high_recall")
    assert "slo.p95_ms = -5" in message


def test_an_environment_may_replace_or_remove_rollout_plans(tmp_path: Path) -> None:
    (tmp_path / "noplan.yaml").write_text("rollout: null\n")
    (tmp_path / "slow.yaml").write_text(
        "rollout:\n  steps: [{weight: 0.05}, {weight: 0.2}]\n  min_total_duration_s: 900\n"
    )
    progressive = PRESETS.get("candidate_progressive")
    assert apply_environment(progressive, load_environment(tmp_path, "noplan")).rollout is None
    slow = apply_environment(progressive, load_environment(tmp_path, "slow")).rollout
    assert slow is not None and slow.weights == (0.05, 0.2) and slow.min_total_duration_s == 900
