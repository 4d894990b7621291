"""SLO templates: one ``slo`` section, with parameters, shared by many presets (Argo Rollouts' analysis
templates with arguments, for canary's one SLO grammar).

A template is a file ``configs/slo-templates/NAME.yaml``::

    metadata: {name: search-default, description: "...", version: 1.0.0}
    args:
      p95_ms: {default: 1200, description: "p95 latency bound (ms)"}
      recall_at_10: {}                      # no default: every preset must give it
    slo:
      p95_ms: "{{ args.p95_ms }}"
      recall_at_10: "{{ args.recall_at_10 }}"
      consecutive_buckets: 2

and a preset refers to it instead of writing the section out::

    slo: {template: search-default, args: {recall_at_10: 0.35}, consecutive_buckets: 3}

A placeholder is a whole YAML value, ``"{{ args.NAME }}"``: it is replaced by the argument's value *with its
type* (a number stays a number, ``null`` drops a shorthand rule), so the expanded section is read by the one
grammar (:func:`canary.core.policy.read_section`) exactly as if it had been written out. No string
interpolation, no expressions: a template cannot compute, only fill in, so what a preset deploys is what its
snapshot shows. Keys the preset writes beside ``template`` and ``args`` replace the template's, key by key
(as an environment's ``slo:`` does). The expanded section is what the snapshot carries under ``slo``; the
snapshot's ``slo_template`` records which template (name, version, content hash) and which arguments made
it, so the preset's content hash changes when the template does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from canary.config.yamlfile import read_yaml
from canary.core.deployment import snapshot_hash
from canary.core.validation import NO_VALUE, Collector, FieldError, Section, kind

TEMPLATE_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_NAME_HINT: Final = "must be lower-case letters, digits, '_' or '-' (at most 64 characters)"
ARG_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_PLACEHOLDER: Final = re.compile(r"\{\{\s*args\.([A-Za-z0-9_]+)\s*\}\}")
_SEMVER: Final = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
MAX_ARGS: Final = 32
SUFFIX: Final = ".yaml"
# The keys a preset's slo section may hold when it names a template; every other key overrides the template's.
REFERENCE_KEYS: Final = ("template", "args")


@dataclass(frozen=True, slots=True)
class TemplateArg:
    name: str
    default: object = NO_VALUE  # NO_VALUE: required
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is NO_VALUE


@dataclass(frozen=True, slots=True)
class SLOTemplate:
    """A validated template file. ``body`` is its ``slo`` section with placeholders still in it."""

    name: str
    version: str
    description: str
    args: tuple[TemplateArg, ...]
    body: Mapping[str, Any]
    source: str
    content_hash: str

    def arg(self, name: str) -> TemplateArg | None:
        return next((a for a in self.args if a.name == name), None)


@dataclass(frozen=True, slots=True)
class TemplateStamp:
    """What a snapshot records of the template that made its ``slo`` section."""

    name: str
    version: str
    hash: str
    args: Mapping[str, Any]  # every argument, defaults filled in

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hash": self.hash, "args": dict(self.args)}


def template_names(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.iterdir() if p.suffix == SUFFIX and p.is_file())


def load_template(directory: Path, name: str) -> SLOTemplate | list[FieldError]:
    """Template ``name`` from ``directory``, or the problems of its file (each naming it, field, value, why)."""
    path = directory / f"{name}{SUFFIX}"
    label = str(path)
    data, error = read_yaml(path, label)
    if error is not None:
        return [error]
    out = Collector(label)
    if not isinstance(data, Mapping):
        out.add("", data if data is not None else NO_VALUE, "must be a mapping with metadata, args and slo")
        return out.errors
    root = Section(out, "", data)
    meta = root.section("metadata")
    meta_name = meta.string("name", pattern=TEMPLATE_NAME, hint=_NAME_HINT)
    if out.ok("metadata.name") and meta_name != name:
        out.add("metadata.name", meta_name, f"must match the file name '{name}'")
    description = meta.string("description", required=False)
    version = meta.string("version", pattern=_SEMVER, hint="must be a semantic version like 1.2.0")
    meta.close()
    args = _read_args(root)
    body = root.take("slo")
    if body is NO_VALUE:
        out.add("slo", NO_VALUE, "missing required section")
    elif not isinstance(body, Mapping):
        out.add("slo", body, f"must be a mapping, got {kind(body)}")
    elif "template" in body:
        out.add("slo.template", body["template"], "a template cannot refer to another template")
    else:
        used: set[str] = set()
        _check_placeholders(out, "slo", body, {a.name for a in args}, used)
        for a in args:
            if a.name not in used:
                out.add(f"args.{a.name}", NO_VALUE if a.required else a.default, "declared but never used in slo")
    root.close()
    if out.errors:
        return out.errors
    assert isinstance(body, Mapping)
    content = {"metadata": dict(data["metadata"]), "args": data.get("args") or {}, "slo": dict(body)}
    return SLOTemplate(meta_name, version, description, args, body, label, snapshot_hash(content))


def _read_args(root: Section) -> tuple[TemplateArg, ...]:
    raw = root.take("args")
    if raw is NO_VALUE or raw is None:
        return ()
    if not isinstance(raw, Mapping):
        root.out.add("args", raw, f"must be a mapping of argument name to {{default, description}}, got {kind(raw)}")
        return ()
    if len(raw) > MAX_ARGS:
        root.out.add("args", NO_VALUE, f"{len(raw)} arguments, more than {MAX_ARGS}")
        return ()
    args = []
    for key, spec in raw.items():
        field = f"args.{key}"
        if not isinstance(key, str) or not ARG_NAME.fullmatch(key):
            root.out.add(field, key, "an argument name must be lower-case letters, digits or '_'")
            continue
        s = Section(root.out, field, {} if spec is None else spec)
        default = s.take("default")
        if default is not NO_VALUE and not _scalar(default):
            root.out.add(f"{field}.default", default, f"must be a number, string, boolean or null, got {kind(default)}")
        description = s.string("description", required=False)
        s.close()
        args.append(TemplateArg(key, default, description))
    return tuple(args)


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _check_placeholders(out: Collector, path: str, node: object, declared: set[str], used: set[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            _check_placeholders(out, f"{path}.{key}", value, declared, used)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_placeholders(out, f"{path}[{i}]", value, declared, used)
    elif isinstance(node, str) and "{{" in node:
        match = _PLACEHOLDER.fullmatch(node.strip())
        if match is None:
            out.add(path, node, "a placeholder must be the whole value, exactly '{{ args.NAME }}'")
            used.update(m.group(1) for m in _PLACEHOLDER.finditer(node))  # reported once, not also as unused
        elif match.group(1) not in declared:
            known = ", ".join(sorted(declared)) or "none"
            out.add(path, node, f"names argument '{match.group(1)}', which args does not declare (declared: {known})")
        else:
            used.add(match.group(1))


def _fill(node: object, values: Mapping[str, object], path: str, origins: dict[str, str]) -> object:
    """The body with every placeholder replaced by its argument's value; ``origins`` maps each filled field to
    the argument that filled it (so a grammar error there can name the argument)."""
    if isinstance(node, Mapping):
        return {k: _fill(v, values, f"{path}.{k}", origins) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values, f"{path}[{i}]", origins) for i, v in enumerate(node)]
    if isinstance(node, str) and (match := _PLACEHOLDER.fullmatch(node.strip())):
        origins[path] = match.group(1)
        return values[match.group(1)]
    return node


@dataclass(frozen=True, slots=True)
class Expansion:
    section: Mapping[str, Any]  # the slo section to read with the grammar
    stamp: TemplateStamp
    origins: Mapping[str, str]  # "slo.p95_ms" -> the argument that filled it
    given: frozenset[str]  # the arguments the preset gave (the rest are the template's defaults)
    overrides: frozenset[str]  # slo keys the preset wrote beside template/args, replacing the template's
    template: SLOTemplate


def expand(s: Section, directory: Path | None) -> Expansion | None:
    """The preset's ``slo`` section ``s`` names a template: expand it, reporting every problem into ``s.out``.
    None when it cannot be expanded (the problems are reported)."""
    name = s.string("template", pattern=TEMPLATE_NAME, hint=_NAME_HINT)
    raw_args = s.take("args")
    if raw_args in (NO_VALUE, None):
        raw_args = {}
    if not isinstance(raw_args, Mapping):
        s.out.add(s.field("args"), raw_args, f"must be a mapping of argument name to value, got {kind(raw_args)}")
        return None
    if not s.out.ok(s.field("template")):
        return None
    if directory is None:
        s.out.add(s.field("template"), name, "templates are read from files: load the preset from a file or a store")
        return None
    if not (directory / f"{name}{SUFFIX}").is_file():
        known = ", ".join(template_names(directory)) or "none"
        s.out.add(s.field("template"), name, f"unknown SLO template in {directory} (known: {known})")
        return None
    loaded = load_template(directory, name)
    if isinstance(loaded, list):
        for e in loaded:
            s.out.add(s.field("template"), name, f"the template is invalid: {e}")
        return None
    template = loaded
    # A value of the wrong type is left to the grammar, which names the field and (through explain) the arg.
    values: dict[str, object] = {}
    missing = False
    for key, value in raw_args.items():
        if template.arg(str(key)) is None:
            known = ", ".join(a.name for a in template.args) or "none"
            s.out.add(
                f"{s.field('args')}.{key}", value, f"template '{name}' has no such argument (its arguments: {known})"
            )
        else:
            values[str(key)] = value
    for a in template.args:
        if a.name not in values:
            if a.required:
                s.out.add(f"{s.field('args')}.{a.name}", NO_VALUE, f"missing: template '{name}' has no default for it")
                missing = True
            else:
                values[a.name] = a.default
    if missing:
        return None
    origins: dict[str, str] = {}
    body = _fill(template.body, values, s.path, origins)
    assert isinstance(body, dict)
    # The preset's own keys replace the template's, as an environment's do; they are not filled from args.
    overrides = [key for key in s.written() if key not in REFERENCE_KEYS]
    for key in overrides:
        body[key] = s.take(key)
        for path in [p for p in origins if _under(p, s.field(key))]:
            del origins[path]
    stamp = TemplateStamp(template.name, template.version, template.content_hash, dict(sorted(values.items())))
    given = frozenset(map(str, raw_args))
    return Expansion(body, stamp, origins, given, frozenset(s.field(k) for k in overrides), template)


def _under(field: str, path: str) -> bool:
    return field == path or field.startswith(path + ".") or field.startswith(path + "[")


def explain(e: FieldError, expansion: Expansion) -> FieldError:
    """A grammar error in an expanded section, with the argument (or the template's default) that set it."""
    arg = next((a for p, a in expansion.origins.items() if _under(e.field, p)), None)
    if arg is None:
        if any(_under(e.field, p) for p in expansion.overrides):
            return e  # the preset wrote that key itself
        return FieldError(e.file, e.field, e.value, f"{e.reason} (in template {expansion.template.source})")
    where = (
        f"set by slo.args.{arg}"
        if arg in expansion.given
        else f"template {expansion.template.source}'s default for args.{arg}"
    )
    return FieldError(e.file, e.field, e.value, f"{e.reason} ({where})")


def read_stamp(root: Section) -> TemplateStamp | None:
    """A snapshot's ``slo_template`` record (a snapshot's ``slo`` is already expanded)."""
    if root.take("slo_template") in (NO_VALUE, None):
        return None
    s = root.section("slo_template")
    name = s.string("name", pattern=TEMPLATE_NAME, hint=_NAME_HINT)
    version = s.string("version", pattern=_SEMVER, hint="a semantic version")
    digest = s.string("hash", pattern=re.compile(r"[0-9a-f]{16}"), hint="16 hex digits")
    args = s.take("args")
    if args is NO_VALUE:
        args = {}
    if not isinstance(args, Mapping) or not all(isinstance(k, str) and _scalar(v) for k, v in args.items()):
        s.out.add(s.field("args"), args, "must be a mapping of argument name to a number, string, boolean or null")
        args = {}
    s.close()
    return TemplateStamp(name, version, digest, dict(args))
