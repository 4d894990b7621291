"""Reading a preset file into plain data, with problems reported as FieldErrors instead of raw exceptions."""

from __future__ import annotations

from pathlib import Path

import yaml

from canary.core.validation import NO_VALUE, FieldError


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

MAX_YAML_BYTES = 256 << 10  # a preset, environment or rules file is a few kB; PyYAML parses ~2 MB/s
MAX_YAML_DEPTH = 32


class _BoundedLoader(_StrictLoader):
    """No aliases (a few lines of anchors expand to gigabytes: the "billion laughs"), and nesting bounded
    before PyYAML's recursive composer meets it. No canary file needs either."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in canary files", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_yaml_text(text: str, label: str) -> tuple[object, FieldError | None]:
    """Parse YAML ``text`` (bounded: size, depth, no aliases); (data, None) or (NO_VALUE, error)."""
    if len(text) > MAX_YAML_BYTES:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"{len(text)} characters, more than {MAX_YAML_BYTES}")
    try:
        return yaml.load(text, Loader=_BoundedLoader), None  # a SafeLoader: builds no objects
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})"
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"invalid YAML{where}: {exc.problem}")
    except yaml.YAMLError as exc:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"invalid YAML: {exc}")
    except RecursionError:  # PyYAML's scanner also recurses on flow collections: bounded here anyway
        return NO_VALUE, FieldError(label, "", NO_VALUE, "invalid YAML: nested too deep")
    except (ValueError, OverflowError) as exc:  # a scalar its constructor cannot build (an int of 5000 digits)
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"invalid YAML value: {str(exc)[:200]}")


def read_yaml(path: Path, label: str) -> tuple[object, FieldError | None]:
    """Parse ``path``; return (data, None) or (NO_VALUE, error) naming the file under ``label``."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            return NO_VALUE, FieldError(label, "", NO_VALUE, f"{size} bytes, more than {MAX_YAML_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"cannot read file: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return NO_VALUE, FieldError(label, "", NO_VALUE, f"not valid UTF-8 text ({exc.reason})")
    return parse_yaml_text(text, label)
