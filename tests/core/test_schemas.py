"""docs/contracts.md carries the JSON Schema generated from the wire Structs, and cannot drift from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from canary.core import schemas
from canary.core.models import WIRE_MESSAGES


def test_the_committed_schemas_equal_what_the_generator_writes() -> None:
    text = schemas.CONTRACTS.read_text(encoding="utf-8")
    assert schemas.BEGIN in text, "docs/contracts.md has no generated block: run python -m canary.core.schemas"
    assert schemas.splice(text, schemas.render()) == text, "stale schemas: run python -m canary.core.schemas"


def test_every_wire_message_has_a_schema_with_its_closed_sets_and_bounds() -> None:
    generated = schemas.schemas()
    assert {cls.__name__ for cls in WIRE_MESSAGES} <= set(generated)
    outcome = generated["SearchOutcome"]
    assert isinstance(outcome, dict)
    props = outcome["properties"]
    assert props["arm"]["enum"] == ["candidate", "last_good"]
    assert props["recall_at_10"]["anyOf"][0] == {"type": "number", "minimum": 0.0, "maximum": 1.0}
    assert props["router_id"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def test_check_mode_fails_on_a_stale_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "contracts.md"
    doc.write_text("# Contracts\n", encoding="utf-8")
    assert schemas.main(["--path", str(doc), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert schemas.main(["--path", str(doc)]) == 0
    assert schemas.main(["--path", str(doc), "--check"]) == 0
    block = doc.read_text(encoding="utf-8").split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block)  # the blocks are JSON
