"""Reading a preset file into plain data, with problems reported as FieldErrors instead of raw exceptions."""

from __future__ import annotations

from pathlib import Path

import yaml

from canary.config.validation import NO_VALUE, FieldError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys; plain PyYAML silently keeps the last one, hiding edits."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key; the base constructor reports it properly
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: Path, label: str) -> tuple[object, FieldError | None]:
    """Parse ``path``; return (data, None) or (NO_VALUE, error) naming the file under ``label``."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"cannot read file: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"not valid UTF-8 text ({exc.reason})")
    try:
        return yaml.load(text, Loader=_StrictLoader), None  # a SafeLoader: builds no objects
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"invalid YAML{where}: {exc.problem}")
    except yaml.YAMLError as exc:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"invalid YAML: {exc}")
