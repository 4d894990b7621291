"""SLO templates (issue #23, item 6): presets name a shared, parameterised slo section; the expanded section and
the template's identity are in the snapshot (and so in the content hash); every bad input names file, field,
value and reason."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.config import Preset, PresetStore, PresetValidationError, load_preset
from canary.config.environments import apply_environment, load_environment
from canary.config.templates import load_template
from canary.core.policy import parse_section
from canary.core.slo import deployment_policy

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / "configs" / "presets" / "candidate_high_recall.yaml").read_text())
TEMPLATE = yaml.safe_load((ROOT / "configs" / "slo-templates" / "search-default.yaml").read_text())


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "presets").mkdir()
    shutil.copytree(ROOT / "configs" / "slo-templates", tmp_path / "slo-templates")
    return tmp_path


def _write(tree: Path, slo: object, name: str = "cand", **extra: Any) -> Path:
    data = {**BASE, "metadata": {**BASE["metadata"], "name": name}, "slo": slo, **extra}
    path = tree / "presets" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _template(tree: Path, data: object, name: str = "t") -> None:
    (tree / "slo-templates" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _problems(path: Path) -> list[str]:
    with pytest.raises(PresetValidationError) as info:
        load_preset(path)
    return [str(e) for e in info.value.errors]


def test_the_shipped_template_loads() -> None:
    template = load_template(ROOT / "configs" / "slo-templates", "search-default")
    assert not isinstance(template, list), template
    assert [a.name for a in template.args] == ["p95_ms", "recall_at_10", "error_rate"]


def test_expanded_like_written_out(tree: Path) -> None:
    """A template with arguments judges exactly as the section written out by hand."""
    preset = load_preset(_write(tree, {"template": "search-default", "args": {"p95_ms": 900}}))
    written = parse_section({"p95_ms": 900, "recall_at_10": 0.3, "error_rate": 0.01}, "x", preset=True)
    assert preset.slo == written
    assert deployment_policy(preset.to_dict()) == written.policy()
    stamp = preset.to_dict()["slo_template"]
    assert stamp["name"] == "search-default" and stamp["version"] == "1.0.0"
    assert stamp["args"] == {"p95_ms": 900, "recall_at_10": 0.30, "error_rate": 0.01}  # defaults filled in


def test_preset_keys_beside_the_template_replace_its_keys(tree: Path) -> None:
    preset = load_preset(_write(tree, {"template": "search-default", "consecutive_buckets": 3, "p95_ms": 700}))
    assert preset.slo.consecutive_buckets == 3
    assert preset.slo.p95_ms == 700.0  # the preset's own key wins over the template's placeholder


def test_snapshot_round_trip_and_environment(tree: Path) -> None:
    preset = load_preset(_write(tree, {"template": "search-default", "args": {"recall_at_10": 0.4}}))
    again = Preset.from_snapshot(preset.to_dict())
    assert again == preset and again.content_hash == preset.content_hash
    staged = apply_environment(preset, load_environment(ROOT / "configs" / "environments", "prod"))
    assert staged.to_dict()["slo_template"] == preset.to_dict()["slo_template"]


def test_the_hash_follows_the_template(tree: Path) -> None:
    """Editing the template changes every preset that uses it, even when the expanded rules are the same."""
    path = _write(tree, {"template": "search-default"})
    before = load_preset(path).content_hash
    edited = {**TEMPLATE, "metadata": {**TEMPLATE["metadata"], "description": "edited"}}
    _template(tree, edited, "search-default")
    after = load_preset(path)
    assert after.content_hash != before
    assert after.slo == load_preset(path).slo


def test_presets_without_a_template_keep_their_hash() -> None:
    preset = load_preset(ROOT / "configs" / "presets" / "candidate_high_recall.yaml")
    assert "slo_template" not in preset.to_dict()


def test_the_store_finds_templates_beside_its_directory(tree: Path) -> None:
    _write(tree, {"template": "search-default", "args": {"p95_ms": 1000}})
    assert PresetStore(tree / "presets").get("cand").slo.p95_ms == 1000.0
    assert [e.valid for e in PresetStore(tree / "presets").list()] == [True]


# (slo section of the preset, template files to add, expected problems: each as "FIELD ... REASON" fragments)
PRESET_CASES = {
    "unknown template": (
        {"template": "nope"},
        {},
        ['slo.template = "nope": unknown SLO template in', "(known: search-default)"],
    ),
    "bad template name": ({"template": "../etc"}, {}, ['slo.template = "../etc": must be lower-case']),
    "unknown argument": (
        {"template": "search-default", "args": {"p95": 900}},
        {},
        ["slo.args.p95 = 900: template 'search-default' has no such argument (its arguments: p95_ms,"],
    ),
    "argument out of range": (
        {"template": "search-default", "args": {"recall_at_10": 2}},
        {},
        ["slo.recall_at_10 = 2: must be between 0 and 1 (set by slo.args.recall_at_10)"],
    ),
    "argument of the wrong type": (
        {"template": "search-default", "args": {"p95_ms": "fast"}},
        {},
        ['slo.p95_ms = "fast": expected a number, got string (set by slo.args.p95_ms)'],
    ),
    "args not a mapping": (
        {"template": "search-default", "args": [900]},
        {},
        ["slo.args = [900]: must be a mapping of argument name to value, got list"],
    ),
    "a bad override": (
        {"template": "search-default", "consecutive_buckets": 0},
        {},
        ["slo.consecutive_buckets = 0: must be a positive integer"],
    ),
    "required argument missing": (
        {"template": "t"},
        {
            "t": {
                "metadata": {"name": "t", "version": "1.0.0"},
                "args": {"p": None},
                "slo": {"p95_ms": "{{ args.p }}", "recall_at_10": 0.3},
            }
        },
        ["slo.args.p: missing: template 't' has no default for it"],
    ),
    "a bad default, blamed on the template": (
        {"template": "t"},
        {
            "t": {
                "metadata": {"name": "t", "version": "1.0.0"},
                "args": {"p": {"default": -1}},
                "slo": {"p95_ms": "{{ args.p }}", "recall_at_10": 0.3},
            }
        },
        ["slo.p95_ms = -1: must be greater than 0", "t.yaml's default for args.p)"],
    ),
    "a bad fixed key, blamed on the template": (
        {"template": "t"},
        {
            "t": {
                "metadata": {"name": "t", "version": "1.0.0"},
                "slo": {"p95_ms": 900, "recall_at_10": 0.3, "confidnce": 0.9},
            }
        },
        ["slo.confidnce = 0.9: unknown field (did you mean 'confidence'?) (in template", "t.yaml)"],
    ),
}


@pytest.mark.parametrize("case", PRESET_CASES)
def test_bad_preset_sections(tree: Path, case: str) -> None:
    slo, templates, fragments = PRESET_CASES[case]
    for name, data in templates.items():
        _template(tree, data, name)
    path = _write(tree, slo)
    problems = _problems(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems)


# (template file content, expected problem fragments); the preset names it as "t"
TEMPLATE_CASES = {
    "placeholder inside text": (
        {
            "metadata": {"name": "t", "version": "1.0.0"},
            "args": {"p": {"default": 1}},
            "slo": {"p95_ms": "x{{ args.p }}", "recall_at_10": 0.3},
        },
        ['slo.p95_ms = "x{{ args.p }}": a placeholder must be the whole value'],
    ),
    "undeclared argument": (
        {"metadata": {"name": "t", "version": "1.0.0"}, "slo": {"p95_ms": "{{ args.q }}", "recall_at_10": 0.3}},
        ["names argument 'q', which args does not declare (declared: none)"],
    ),
    "declared, never used": (
        {
            "metadata": {"name": "t", "version": "1.0.0"},
            "args": {"p": {"default": 1}},
            "slo": {"p95_ms": 900, "recall_at_10": 0.3},
        },
        ["args.p = 1: declared but never used in slo"],
    ),
    "name mismatch": (
        {"metadata": {"name": "other", "version": "1.0.0"}, "slo": {"p95_ms": 900, "recall_at_10": 0.3}},
        ["metadata.name = \"other\": must match the file name 't'"],
    ),
    "template of a template": (
        {"metadata": {"name": "t", "version": "1.0.0"}, "slo": {"template": "search-default"}},
        ['slo.template = "search-default": a template cannot refer to another template'],
    ),
    "bad version": (
        {"metadata": {"name": "t", "version": "1"}, "slo": {"p95_ms": 900, "recall_at_10": 0.3}},
        ['metadata.version = "1": must be a semantic version'],
    ),
    "unknown key": (
        {"metadata": {"name": "t", "version": "1.0.0"}, "slo": {"p95_ms": 900, "recall_at_10": 0.3}, "argz": {}},
        ["argz = {}: unknown field (did you mean 'args'?)"],
    ),
    "not a mapping": ([1, 2], ["must be a mapping with metadata, args and slo"]),
}


@pytest.mark.parametrize("case", TEMPLATE_CASES)
def test_bad_templates(tree: Path, case: str) -> None:
    data, fragments = TEMPLATE_CASES[case]
    _template(tree, data)
    path = _write(tree, {"template": "t"})
    problems = _problems(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        f'{path}: slo.template = "t": the template is invalid: {tree / "slo-templates" / "t.yaml"}: '
    )
    for fragment in fragments:
        assert fragment in problems[0], (fragment, problems)


def test_a_hostile_template_file_is_a_problem_not_a_crash(tree: Path) -> None:
    (tree / "slo-templates" / "t.yaml").write_text("a: &x [1]\nb: *x\n")
    assert "aliases (*name) are not allowed" in _problems(_write(tree, {"template": "t"}))[0]
    (tree / "slo-templates" / "t.yaml").write_bytes(b"\xff\xfe")
    assert "not valid UTF-8" in _problems(_write(tree, {"template": "t"}))[0]


def test_a_snapshot_cannot_name_a_template_and_a_stamp(tree: Path) -> None:
    good = load_preset(_write(tree, {"template": "search-default"})).to_dict()["slo_template"]
    path = _write(tree, {"template": "search-default"}, slo_template=good)
    assert _problems(path) == [f"{path}: slo_template: written by canary when slo names a template; remove one of them"]


def test_a_preset_from_data_without_a_directory_says_where_templates_come_from() -> None:
    data = {**BASE, "slo": {"template": "search-default"}}
    with pytest.raises(PresetValidationError) as info:
        Preset.from_dict(data)
    assert "templates are read from files" in str(info.value)
