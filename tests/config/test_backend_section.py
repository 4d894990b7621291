"""A preset's ``backend:`` section (issue #14, part 4): an allow-listed type, never an import path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from canary.config import Preset, PresetValidationError, load_preset
from canary.config.backend import HttpBackendSpec
from canary.errors import ConfigError

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "presets"


def snapshot(backend: object) -> dict[str, Any]:
    data = load_preset(PRESETS / "last_good.yaml").to_dict()
    data["backend"] = backend
    return data


def errors(backend: object) -> list[str]:
    with pytest.raises(PresetValidationError) as info:
        Preset.from_snapshot(snapshot(backend))
    return [str(e) for e in info.value.errors]


def test_bundled_is_what_presets_wrote_before_and_keeps_their_hash() -> None:
    before = load_preset(PRESETS / "last_good.yaml")
    assert before.backend is None and before.to_dict()["backend"] is None
    for same in (None, {"type": "bundled"}):
        again = Preset.from_snapshot(snapshot(same))
        assert again.backend is None and again.content_hash == before.content_hash


def test_an_http_backend_with_defaults_and_its_snapshot() -> None:
    preset = Preset.from_snapshot(snapshot({"type": "http", "url": "http://search.internal:8080/v1/search"}))
    assert preset.backend == HttpBackendSpec("http://search.internal:8080/v1/search")
    assert preset.to_dict()["backend"] == {
        "type": "http",
        "url": "http://search.internal:8080/v1/search",
        "timeout_ms": 1000,
        "params": "body",
        "max_connections": 64,
        "max_results": 100,
        "exact_url": None,
    }
    again = Preset.from_snapshot(preset.to_dict())  # what a start command carries
    assert again == preset and again.content_hash == preset.content_hash
    assert preset.content_hash != load_preset(PRESETS / "last_good.yaml").content_hash


def test_every_http_field() -> None:
    spec = {
        "type": "http",
        "url": "https://search.example/q",
        "timeout_ms": 250,
        "params": "query",
        "max_connections": 8,
        "max_results": 20,
        "exact_url": "https://search.example/exact",
    }
    backend = Preset.from_snapshot(snapshot(spec)).backend
    assert backend == HttpBackendSpec("https://search.example/q", 250, "query", 8, 20, "https://search.example/exact")


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        (
            "my_pkg.search:Backend",
            '<snapshot>: backend = "my_pkg.search:Backend": is an import path: a preset cannot name code to import',
        ),
        ({"type": "python", "factory": "os:system"}, 'backend.type = "python": must be one of bundled, http'),
        ({"type": "http"}, "<snapshot>: backend.url: missing required field (the search service's URL)"),
        ({"type": "http", "url": "file:///etc/passwd"}, 'backend.url = "file:///etc/passwd": must be an http://'),
        ({"type": "http", "url": "http://u:secret@host/s"}, "must not carry credentials"),
        ({"type": "http", "url": "http:///nohost"}, "must name a host"),
        ({"type": "http", "url": "http://h:99999/"}, "is not a valid URL"),
        ({"type": "http", "url": "http://h/", "timeout_ms": 0}, "backend.timeout_ms = 0: must be a positive integer"),
        ({"type": "http", "url": "http://h/", "timeout_ms": 600_000}, "must be between 1 and 60000"),
        ({"type": "http", "url": "http://h/", "timeout_ms": "fast"}, "expected an integer"),
        ({"type": "http", "url": "http://h/", "params": "header"}, 'backend.params = "header": must be one of body'),
        ({"type": "http", "url": "http://h/", "max_connections": 5000}, "must be between 1 and 1024"),
        ({"type": "http", "url": "http://h/", "headers": {"a": "b"}}, "backend.headers"),
        ({"type": "http", "url": "http://h/", "exact_url": "ftp://h/"}, "backend.exact_url"),
        ({"type": "bundled", "url": "http://h/"}, "backend.url"),
        (["http"], "backend"),
    ],
)
def test_invalid_backend_sections_name_field_value_and_reason(backend: object, expected: str) -> None:
    found = errors(backend)
    assert any(expected in e for e in found), found


def test_the_spec_checks_itself_too() -> None:
    with pytest.raises(ConfigError, match=r"backend.url = 'gopher://x': must be an http"):
        HttpBackendSpec("gopher://x")
    with pytest.raises(ConfigError, match=r"backend\.timeout_ms = True"):
        HttpBackendSpec("http://h/", timeout_ms=True)
    with pytest.raises(ConfigError, match="not an http backend section"):
        HttpBackendSpec.from_dict({"type": "http", "url": "http://h/", "import": "os:system"})


def test_a_yaml_preset_with_an_http_backend_loads(tmp_path: Path) -> None:
    text = (PRESETS / "last_good.yaml").read_text()
    path = tmp_path / "last_good.yaml"
    path.write_text(text + "\nbackend:\n  type: http\n  url: http://127.0.0.1:9000/search\n  timeout_ms: 300\n")
    preset = load_preset(path)
    assert preset.backend is not None and preset.backend.timeout_ms == 300
