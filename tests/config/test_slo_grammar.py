"""One grammar for every ``slo`` section (issue #22): a preset, a ``--rules`` file, an environment override,
the Python API and a start command's snapshot read it with canary.core.policy and mean the same policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.config.environments import EnvironmentError_, apply_environment, load_environment
from canary.config.presets import Preset, PresetValidationError, load_preset
from canary.config.rules import load_policy_file, parse_policy
from canary.core.custom import CustomMetric
from canary.core.monitor import SLOMonitor
from canary.core.policy import SECTION_KEYS, SLORule, SLOSection, deployment_policy, parse_section
from canary.errors import ConfigError
from canary.pipeline.run import run_pipeline
from tests.pipeline.test_loop import metric_traffic, plain_start
from tests.pipeline.test_run import T0, W

ROOT = Path(__file__).resolve().parents[2]
PRESET_FILES = sorted((ROOT / "configs" / "presets").glob("*.yaml"))
SHAPES = ("whole-preset", "slo-key", "bare-section")


def _write(tmp_path: Path, data: object, suffix: str) -> Path:
    path = tmp_path / f"rules{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    return path


def _shaped(preset_file: Path, shape: str) -> object:
    data = yaml.safe_load(preset_file.read_text())
    return {"whole-preset": data, "slo-key": {"slo": data["slo"]}, "bare-section": data["slo"]}[shape]


def test_the_shipped_presets_are_all_here() -> None:
    assert [p.stem for p in PRESET_FILES] == [
        "candidate_high_recall",
        "candidate_low_recall",
        "candidate_progressive",
        "candidate_slow",
        "last_good",
    ]


@pytest.mark.parametrize("preset_file", PRESET_FILES, ids=lambda p: p.stem)
def test_a_preset_file_is_a_rules_file_as_it_is(preset_file: Path) -> None:
    assert load_policy_file(preset_file) == load_preset(preset_file).slo.policy()


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("preset_file", PRESET_FILES, ids=lambda p: p.stem)
def test_every_preset_slo_section_as_a_rules_file_gives_the_preset_policy(
    tmp_path: Path, preset_file: Path, shape: str, suffix: str
) -> None:
    preset = load_preset(preset_file)
    policy = load_policy_file(_write(tmp_path, _shaped(preset_file, shape), suffix))
    assert policy == preset.slo.policy()
    # ... and the same as the SLO agent resolves from the start command's snapshot (a plan adds its regimes).
    live = deployment_policy(preset.to_dict())
    assert policy.rules == live.rules
    assert (policy.inconclusive_limit, policy.min_samples, policy.custom_metrics) == (
        live.inconclusive_limit,
        live.min_samples,
        live.custom_metrics,
    )


@pytest.mark.parametrize("preset_file", PRESET_FILES, ids=lambda p: p.stem)
def test_a_snapshot_section_reads_back_to_the_same_model(preset_file: Path) -> None:
    preset = load_preset(preset_file)
    snapshot = json.loads(json.dumps(preset.to_dict()))["slo"]
    assert parse_section(snapshot, "<snapshot>") == preset.slo
    assert parse_section(snapshot, "<snapshot>").to_dict() == snapshot


# Sections a preset may hold (with its required p95_ms and recall_at_10): each must mean the same policy in a
# preset and in a rules file.
SECTIONS: dict[str, dict[str, Any]] = {
    "thresholds-only": {"p95_ms": 900, "recall_at_10": 0.4},
    "confidence-and-method": {"p95_ms": 900, "recall_at_10": 0.4, "confidence": 0.95, "method": "point"},
    "no-error-rule": {"p95_ms": 900, "recall_at_10": 0.4, "error_rate": None},
    "low-traffic": {"p95_ms": 900, "recall_at_10": 0.4, "min_samples": 5, "inconclusive_limit": 3},
    "horizon": {"p95_ms": 900, "recall_at_10": 0.4, "horizon_s": 3600},
    "relative-and-per-rule": {
        "p95_ms": 900,
        "recall_at_10": 0.4,
        "consecutive_buckets": 3,
        "rules": [
            {"name": "p99", "metric": "p99_ms", "operator": "le", "threshold": 1.5, "relative_to": "last_good"},
            {"name": "volume", "metric": "response_count", "operator": "ge", "threshold": 10, "min_samples": 0},
            {
                "name": "recall-drop",
                "metric": "recall_at_10",
                "operator": "ge",
                "threshold": -0.05,
                "relative_to": "last_good",
                "confidence": 0.999,
                "consecutive_buckets": 1,
            },
        ],
    },
    "custom-metrics": {
        "p95_ms": 900,
        "recall_at_10": 0.4,
        "metrics": [
            {"name": "ndcg_at_10", "aggregation": "mean", "description": "graded relevance"},
            {"name": "timeouts", "aggregation": "rate"},
            {"name": "rerank_ms", "aggregation": "p95", "low": 0, "high": 10000},
        ],
        "rules": [
            {"name": "ndcg", "metric": "ndcg_at_10", "operator": "ge", "threshold": 0.5},
            {"name": "timeouts", "metric": "timeouts", "operator": "le", "threshold": 0.05},
            {"name": "rerank", "metric": "rerank_ms", "operator": "le", "threshold": 800},
        ],
    },
}


def _preset_with(slo: dict[str, Any]) -> Preset:
    data = yaml.safe_load((ROOT / "configs" / "presets" / "last_good.yaml").read_text())
    data["slo"] = slo
    return Preset.from_dict(data)


@pytest.mark.parametrize("slo", SECTIONS.values(), ids=SECTIONS.keys())
def test_a_rules_file_takes_what_a_preset_takes(tmp_path: Path, slo: dict[str, Any]) -> None:
    preset = _preset_with(slo)
    assert load_policy_file(_write(tmp_path, {"slo": slo}, ".yaml")) == preset.slo.policy()
    assert parse_policy(slo, "bare") == preset.slo.policy()
    # The Python API judges with the same rules and settings.
    assert SLOMonitor(slo).rules == preset.slo.policy().rules


def test_p95_and_confidence_alone_are_a_rules_file(tmp_path: Path) -> None:
    """Refused by the old --rules parser although a preset section accepts these keys."""
    policy = load_policy_file(_write(tmp_path, {"p95_ms": 900, "confidence": 0.95}, ".yaml"))
    assert policy.rules == (
        SLORule("p95_ms", "p95_ms", "le", 900, confidence=0.95),
        SLORule("error_rate", "error_rate", "le", 0.01, confidence=0.95),
    )


def test_what_a_section_leaves_out() -> None:
    defaults = parse_section({}, "x").all_rules()
    assert [(r.name, r.threshold) for r in defaults] == [("p95_ms", 1200), ("recall_at_10", 0.3), ("error_rate", 0.01)]
    assert [r.confidence for r in parse_section({"confidence": 0.9}, "x").all_rules()] == [0.9] * 3
    assert [r.name for r in parse_section({"recall_at_10": 0.5}, "x").all_rules()] == ["recall_at_10", "error_rate"]
    assert [r.name for r in parse_section({"error_rate": 0.02}, "x").all_rules()] == ["error_rate"]
    explicit = {"rules": [{"name": "e", "metric": "error_rate", "operator": "le", "threshold": 0.05}]}
    assert [r.name for r in parse_section(explicit, "x").all_rules()] == ["e"]
    assert parse_section({"horizon_s": 600}, "x").policy().horizon_s == 600
    assert parse_section({}, "x").policy().horizon_s == 1800


def test_the_section_keys_are_the_ones_the_grammar_reads() -> None:
    every = {
        "p95_ms": 900,
        "recall_at_10": 0.4,
        "error_rate": 0.02,
        "consecutive_buckets": 3,
        "min_samples": 5,
        "confidence": 0.95,
        "method": "point",
        "inconclusive_limit": 4,
        "horizon_s": 900,
        "rules": [],
        "metrics": [],
    }
    assert set(every) == SECTION_KEYS
    section = parse_section(every, "x")
    assert isinstance(section, SLOSection) and section.horizon_s == 900 and section.method == "point"


@pytest.mark.parametrize(
    ("slo", "policy"),
    [
        pytest.param(
            SECTIONS["low-traffic"],
            {"inconclusive_limit": 3, "min_samples": 5},
            id="inconclusive_limit-and-min_samples",
        ),
        pytest.param(
            SECTIONS["custom-metrics"],
            {"metrics": [m.to_dict() for m in _preset_with(SECTIONS["custom-metrics"]).slo.metrics]},
            id="custom-metrics",
        ),
        pytest.param(SECTIONS["horizon"], {"horizon_s": 3600.0}, id="horizon"),
    ],
)
def test_a_backtest_keeps_the_whole_policy(tmp_path: Path, slo: dict[str, Any], policy: dict[str, Any]) -> None:
    rules = load_policy_file(_write(tmp_path, {"slo": slo}, ".json"))
    result = run_pipeline(
        metric_traffic(3, 10, 0.0), commands=[plain_start()], horizon_ms=T0 + 5 * W, rules_override=rules
    )
    used = result.recomputation.policies["d1"]
    assert used == rules.to_dict()
    assert {key: used[key] for key in policy} == policy


@pytest.mark.parametrize(
    ("slo", "expected"),
    [
        ({"p95_ms": "fast"}, ['slo.p95_ms = "fast": expected a number, got string']),
        ({"p95_ms": 900, "confidnce": 0.9}, ["slo.confidnce = 0.9: unknown field (did you mean 'confidence'?)"]),
        ({"confidence": 0.99999999, "method": "bayes"}, ['slo.method = "bayes": must be one of sequential, point']),
        ({"horizon_s": 10}, ["slo.horizon_s = 10: must be between 60 and 604800"]),
        ({"inconclusive_limit": True}, ["slo.inconclusive_limit = true: expected an integer, got boolean"]),
        (
            {
                "rules": [
                    {
                        "name": "r",
                        "metric": "recall_at_10",
                        "operator": "ge",
                        "threshold": 2,
                        "relative_to": "last_good",
                    }
                ]
            },
            ["slo.rules[0].threshold = 2: must be between -1 and 1"],
        ),
        (
            {"rules": [{"name": "Big Rule", "metric": "p95_ms", "operator": "le", "threshold": 100}]},
            ["slo.rules[0].name = \"Big Rule\": must be lower-case letters, digits, '_' or '-'"],
        ),
        (
            {"metrics": [{"name": "score", "low": 1, "high": 0}]},
            ["slo.metrics[0]: slo.metrics 'score': low (1) must be below high (0)"],
        ),
        (
            {"p95_ms": None, "recall_at_10": None, "error_rate": None},
            ["slo: names no rule (every threshold null and no rules); omit them for the defaults"],
        ),
        (  # every problem at once, in the order of the section
            {"min_samples": -1, "p95_ms": 0, "rules": [{"name": "x", "metric": "p95_ms", "operator": "eq"}]},
            [
                "slo.min_samples = -1: must be >= 0",
                "slo.p95_ms = 0: must be greater than 0",
                "slo.rules[0].threshold: missing required field",
                'slo.rules[0].operator = "eq": must be one of le, lt, ge, gt',
            ],
        ),
    ],
)
def test_refusals_name_the_file_the_field_the_value_and_why(
    tmp_path: Path, slo: dict[str, Any], expected: list[str]
) -> None:
    path = _write(tmp_path, {"slo": slo}, ".yaml")
    with pytest.raises(ConfigError) as info:
        load_policy_file(path)
    assert str(info.value).splitlines() == [f"{path}: {line}" for line in expected]


@pytest.mark.parametrize(
    "bad",
    [
        {"confidence": 1.5},
        {"consecutive_buckets": 0},
        {"error_rate": 2},
        {"horizon_s": 10},
        {"metrics": [{"name": "p95_ms"}]},
        {"rules": [{"name": "p95_ms", "metric": "p95_ms", "operator": "le", "threshold": 1}]},
        {"rules": [{"name": "n", "metric": "response_count", "operator": "ge", "threshold": -1}]},
    ],
)
def test_a_preset_and_a_rules_file_refuse_alike(tmp_path: Path, bad: dict[str, Any]) -> None:
    slo = {"p95_ms": 900, "recall_at_10": 0.4, **bad}
    with pytest.raises(PresetValidationError) as preset_error:
        _preset_with(slo)
    path = _write(tmp_path, {"slo": slo}, ".yaml")
    with pytest.raises(ConfigError) as rules_error:
        load_policy_file(path)
    assert [f"{e.field} = {json.dumps(e.value)}: {e.reason}" for e in preset_error.value.errors] == [
        line.removeprefix(f"{path}: ") for line in str(rules_error.value).splitlines()
    ]


def test_a_preset_states_its_thresholds(tmp_path: Path) -> None:
    with pytest.raises(PresetValidationError) as info:
        _preset_with({"p95_ms": 900, "confidence": 0.95})
    assert [(e.field, e.reason) for e in info.value.errors] == [("slo.recall_at_10", "missing required field")]


def test_an_environment_override_goes_through_the_grammar(tmp_path: Path) -> None:
    (tmp_path / "long.yaml").write_text("slo:\n  horizon_s: 3600\n  inconclusive_limit: 0\n")
    (tmp_path / "bad.yaml").write_text("slo:\n  horizon_s: 5\n")
    preset = load_preset(ROOT / "configs" / "presets" / "candidate_high_recall.yaml")
    there = apply_environment(preset, load_environment(tmp_path, "long"))
    assert (there.slo.horizon_s, there.slo.inconclusive_limit) == (3600, 0)
    assert deployment_policy(there.to_dict()).horizon_s == 3600
    with pytest.raises(EnvironmentError_, match=r"bad.yaml: .*slo.horizon_s = 5: must be between 60 and 604800"):
        apply_environment(preset, load_environment(tmp_path, "bad"))


def test_custom_metrics_survive_the_snapshot() -> None:
    preset = _preset_with(SECTIONS["custom-metrics"])
    assert preset.slo.metrics[0] == CustomMetric("ndcg_at_10", "mean", 0.0, 1.0, "graded relevance")
    assert Preset.from_snapshot(json.loads(json.dumps(preset.to_dict()))) == preset
