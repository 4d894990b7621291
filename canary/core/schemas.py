"""The JSON Schema of every wire message, generated from the msgspec Structs that declare them.

docs/contracts.md carries the generated text between two markers; ``python -m canary.core.schemas`` rewrites
it, ``--check`` exits 1 if the committed text differs (tests/core/test_schemas.py runs the same check), so
the schemas in the docs cannot drift from the code. The prose around them stays hand-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from canary.core.models import WIRE_MESSAGES

BEGIN = "<!-- BEGIN GENERATED: python -m canary.core.schemas (do not edit by hand) -->"
END = "<!-- END GENERATED -->"
CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def schemas() -> dict[str, object]:
    """``$defs``-style components, one per message (and per nested Struct), keyed by name."""
    _, components = msgspec.json.schema_components(WIRE_MESSAGES, ref_template="#/$defs/{name}")
    return dict(sorted(components.items()))


def render() -> str:
    """The generated block, markers included."""
    parts = [
        BEGIN,
        "",
        "Generated from the Structs in `canary/core/models.py`. Readers ignore fields they do not know (a newer",
        "producer may add some); a field whose type admits `null` may also be left out. Checked besides, at the",
        "same gate (`__post_init__` / `from_dict`): names match the `pattern` shown, numbers are finite, an",
        "outcome's `recall_source` comes only with a `recall_at_10` (missing with a recall: `labels`). `to_dict`",
        "adds the ISO 8601 twins (`issued_at`, `applied_at`, `window_start`/`timestamp`, `window_end`,",
        "`emitted_at`) and a window's `window_id`; `from_dict` takes an ISO twin where its `*_ms` field is missing.",
        "",
    ]
    for name, schema in schemas().items():
        parts += [f"#### `{name}`", "", "```json", json.dumps(schema, indent=2, ensure_ascii=False), "```", ""]
    parts.append(END)
    return "\n".join(parts)


def splice(text: str, block: str) -> str:
    """``text`` with its generated block replaced by ``block`` (appended under a heading if it has none)."""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + block + tail
    return text.rstrip("\n") + "\n\n## Wire message schemas (generated)\n\n" + block + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--path", type=Path, default=CONTRACTS, help="the contracts document (default: docs/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the document's schemas are stale")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = splice(text, render())
    if args.check:
        if new != text:
            print(f"{args.path}: the generated schemas are stale; run python -m canary.core.schemas", file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.path.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
