"""Config presets: the versioned search/retrieval settings that canary deploys, validated on load.

A preset is immutable once loaded. ``Preset.to_dict()`` is the resolved snapshot (defaults filled in) that
travels inside start commands, and ``content_hash`` fingerprints it, so every process can tell whether it
runs exactly the configuration that was deployed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Final

from canary.config.backend import HttpBackendSpec, parse_backend
from canary.config.sections import (
    RERANKER_TYPES,
    RETRIEVER_TYPES,
    DerivedParams,
    MacroKnobs,
    Metadata,
    RerankerConfig,
    RetrieverConfig,
    SLOConfig,
)
from canary.config.templates import TemplateStamp, expand, explain, read_stamp
from canary.config.yamlfile import read_yaml
from canary.core.bake import MAX_BAKE_S
from canary.core.deployment import snapshot_hash
from canary.core.policy import SLORule, SLOSection, read_section
from canary.core.rings import ATTRIBUTE, MAX_RING_VALUES, MAX_RINGS, TARGETS, Ring
from canary.core.rings import NAME as RING_NAME
from canary.core.rollout import (
    DEFAULT_MIN_TOTAL_DURATION_S,
    DEFAULT_MIN_WINDOWS,
    GATES,
    RolloutPlan,
    RolloutStep,
    plan_problems,
)
from canary.core.validation import NO_VALUE, Collector, FieldError, Section
from canary.errors import ConfigError

# The section types are part of this module's API; they live in sections.py only to keep files small.
# SLORule is canary.core.policy's, re-exported: config and the SLO agent share one rule type.
__all__ = [
    "NAME_PATTERN",
    "DerivedParams",
    "MacroKnobs",
    "Metadata",
    "Preset",
    "PresetValidationError",
    "RerankerConfig",
    "RetrieverConfig",
    "SLOConfig",
    "SLORule",
    "load_preset",
]

# Lower-case, file- and Kafka-key-friendly; also keeps PresetStore.get() from walking outside its directory.
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_SEMVER: Final = re.compile(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
MAX_RERANK_TOKENS: Final = 512  # max_position_embeddings of the rerank model (router/backends/reranker.py)


class PresetValidationError(ConfigError):
    """A preset file or snapshot is invalid. ``errors`` lists every problem found, one per line in str()."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors

    def __reduce__(self) -> tuple[type[PresetValidationError], tuple[list[FieldError]]]:
        return type(self), (self.errors,)  # keeps the exception picklable despite the custom __init__


def _plain(value: object) -> Any:
    """Dataclass tree -> JSON-ready dicts/lists (dataclasses.asdict would keep tuples)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Preset:
    """A validated preset. Build it with load_preset / from_dict / from_snapshot: the constructor itself
    does not validate (the parser needs to build one from placeholders while collecting errors)."""

    metadata: Metadata
    macro_knobs: MacroKnobs
    derived_params: DerivedParams
    retriever: RetrieverConfig
    reranker: RerankerConfig
    slo: SLOConfig
    # Which engine serves it, from an allow-list of types (canary.config.backend); None = the router's own
    # (bundled) backend. Never an import path: a preset does not choose code to run.
    backend: HttpBackendSpec | None = None
    rollout: RolloutPlan | None = None  # progressive delivery (canary.core.rollout); None = one fixed weight
    # Set by canary.config.environments.apply_environment on the candidate a start carries: which
    # environment's overrides it has and the hash of the preset file before them.
    environment: EnvironmentStamp | None = None
    # The SLO template the slo section was expanded from (canary.config.templates); None: written out.
    slo_template: TemplateStamp | None = None
    # Bake after promotion (canary.core.bake); None: not written (a plan bakes for the default, else none).
    bake: BakeSection | None = None
    # Targeted traffic (canary.core.rings): who always, or never, gets the candidate.
    rings: tuple[Ring, ...] = ()
    source: str | None = field(default=None, compare=False)  # where it was loaded from; not content
    _hash: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Computed once: the hash tags every routed request, so it must be cheap to read. The same function
        # the routers apply to a start command's snapshot, so both sides agree on the hash.
        object.__setattr__(self, "_hash", snapshot_hash(self.to_dict()))

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def content_hash(self) -> str:
        """``canary.core.deployment.snapshot_hash(self.to_dict())``: first 16 hex of sha256 over canonical JSON."""
        return self._hash

    def to_dict(self) -> dict[str, Any]:
        """The resolved snapshot: every field with defaults applied, JSON types only."""
        sections = ("metadata", "macro_knobs", "derived_params", "retriever", "reranker")
        snapshot: dict[str, Any] = {name: _plain(getattr(self, name)) for name in sections}
        if snapshot["reranker"]["max_tokens"] is None:  # absent, not null: older presets keep their hashes
            del snapshot["reranker"]["max_tokens"]
        if snapshot["reranker"]["model"] is None:  # a reranker of type none names no model: absent, not null
            del snapshot["reranker"]["model"]
        snapshot["slo"] = self.slo.to_dict()  # the shape canary.core.policy.parse_section reads
        snapshot["backend"] = self.backend.to_dict() if self.backend is not None else None
        if self.rollout is not None:  # absent, not null, without a plan: older presets keep their hashes
            snapshot["rollout"] = self.rollout.to_dict()
        if self.bake is not None:  # absent unless written: older presets keep their hashes
            snapshot["bake"] = {"duration_s": self.bake.duration_s}
        if self.rings:  # absent without rings: older presets keep their hashes
            snapshot["rings"] = [r.to_dict() for r in self.rings]
        if self.slo_template is not None:  # absent, not null, without a template: older presets keep their hashes
            snapshot["slo_template"] = self.slo_template.to_dict()
        if self.environment is not None:
            snapshot["environment"] = {"name": self.environment.name, "preset_hash": self.environment.preset_hash}
        return snapshot

    @classmethod
    def from_dict(
        cls,
        data: object,
        source: str | os.PathLike[str] | None = None,
        *,
        templates_dir: str | os.PathLike[str] | None = None,
    ) -> Preset:
        """Validate parsed YAML. With a ``source`` path, metadata.name must equal the file's stem, and an
        ``slo.template`` is looked up in ``templates_dir`` (default: ``slo-templates`` beside the preset's
        directory, e.g. ``configs/slo-templates`` for ``configs/presets/x.yaml``)."""
        templates = Path(templates_dir) if templates_dir is not None else None
        if source is None:
            return _parse(data, "<preset>", stem=None, source=None, templates=templates)
        if templates is None:
            templates = default_templates_dir(Path(source).parent)
        return _parse(data, str(source), stem=Path(source).stem, source=str(source), templates=templates)

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Preset:
        """Rebuild from :meth:`to_dict` output (e.g. received in a start command), validating it again."""
        return _parse(snapshot, "<snapshot>", stem=None, source=None, templates=None)


def default_templates_dir(presets_dir: Path) -> Path:
    """Where a preset directory's SLO templates live: ``slo-templates`` beside it."""
    return presets_dir.parent / "slo-templates"


def load_preset(path: str | os.PathLike[str], *, templates_dir: str | os.PathLike[str] | None = None) -> Preset:
    """Read and validate one preset file; raises PresetValidationError listing every problem."""
    data, error = read_yaml(Path(path), str(path))
    if error is not None:
        raise PresetValidationError([error])
    return Preset.from_dict(data, source=path, templates_dir=templates_dir)


def _parse(data: object, label: str, *, stem: str | None, source: str | None, templates: Path | None) -> Preset:
    out = Collector(label)
    if data is None or data is NO_VALUE:
        raise PresetValidationError([FieldError(label, "", NO_VALUE, "file is empty")])
    if not isinstance(data, Mapping):
        reason = "must be a mapping with metadata, macro_knobs, derived_params, retriever, reranker, slo"
        raise PresetValidationError([FieldError(label, "", data, reason)])
    root = Section(out, "", data)
    # Read in file order, so the problems are listed in the order a reader meets them.
    metadata = _metadata(root.section("metadata"), stem)
    macro_knobs = _macro_knobs(root.section("macro_knobs"))
    derived_params = _derived_params(root.section("derived_params"))
    retriever = _retriever(root.section("retriever"))
    reranker = _reranker(root.section("reranker"))
    slo, slo_template = _slo(root, templates)
    preset = Preset(
        metadata=metadata,
        macro_knobs=macro_knobs,
        derived_params=derived_params,
        retriever=retriever,
        reranker=reranker,
        slo=slo,
        backend=parse_backend(root),
        rollout=_rollout(root),
        bake=_bake(root),
        rings=_rings(root),
        environment=_environment_stamp(root),
        slo_template=slo_template,
        source=source,
    )
    root.close()
    _cross_checks(out, preset)
    if out.errors:
        raise PresetValidationError(out.errors)
    return preset


def _metadata(s: Section, stem: str | None) -> Metadata:
    name_hint = "must be lower-case letters, digits, '_' or '-' (at most 64 characters)"
    name = s.string("name", pattern=NAME_PATTERN, hint=name_hint)
    if stem is not None and s.out.ok(s.field("name")) and name != stem:
        s.out.add(s.field("name"), name, f"must match the file name '{stem}'")
    meta = Metadata(
        name=name,
        description=s.string("description"),
        version=s.string("version", pattern=_SEMVER, hint="must be a semantic version like 1.2.0"),
        tags=s.strings("tags"),
    )
    s.close()
    return meta


def _macro_knobs(s: Section) -> MacroKnobs:
    knobs = MacroKnobs(
        latency_guard=s.number("latency_guard", low=0, high=1),
        recall_bias=s.number("recall_bias", low=0, high=1),
    )
    s.close()
    return knobs


def _derived_params(s: Section) -> DerivedParams:
    params = DerivedParams(
        T=s.integer("T"),
        Ncand_max=s.integer("Ncand_max"),
        batch_size=s.integer("batch_size"),
        ef=s.integer("ef"),
        rerank_multiplier=s.integer("rerank_multiplier"),
    )
    s.close()
    return params


def _retriever(s: Section) -> RetrieverConfig:
    retriever = RetrieverConfig(
        type=s.string("type", choices=RETRIEVER_TYPES),
        alpha=s.number("alpha", low=0, high=1),
        vector_top_k=s.integer("vector_top_k"),
        bm25_top_k=s.integer("bm25_top_k"),
        top_k=s.integer("top_k"),
    )
    s.close()
    return retriever


def _reranker(s: Section) -> RerankerConfig:
    kind = s.string("type", choices=RERANKER_TYPES)
    # A reranker is useless without a model; "none" needs no model, so it is optional there.
    model = s.string("model", required=kind != "none") or None
    max_tokens = None if s.take("max_tokens") is NO_VALUE else s.integer("max_tokens", minimum=2)
    if max_tokens is not None and max_tokens > MAX_RERANK_TOKENS:
        s.out.add(s.field("max_tokens"), max_tokens, f"must be <= {MAX_RERANK_TOKENS} (the model's positions)")
    reranker = RerankerConfig(type=kind, model=model, top_k=s.integer("top_k"), max_tokens=max_tokens)
    s.close()
    return reranker


def _optional_number(s: Section, key: str, default: float, *, low: float, high: float, open_ends: bool) -> float:
    value = s.take(key)
    if value is NO_VALUE:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        s.out.add(s.field(key), value, "expected a finite number")
    elif open_ends and not low < value < high:
        s.out.add(s.field(key), value, f"must be strictly between {low:g} and {high:g}")
    elif not open_ends and not low <= value <= high:
        s.out.add(s.field(key), value, f"must be between {low:g} and {high:g}")
    else:
        return float(value)
    return default


def _slo(root: Section, templates: Path | None) -> tuple[SLOConfig, TemplateStamp | None]:
    """The one grammar of an slo section (canary.core.policy); a preset must also state p95_ms and
    recall_at_10. A section naming a ``template`` is expanded first (canary.config.templates); a snapshot's
    section is already expanded and its ``slo_template`` says from what."""
    s = root.section("slo")
    stamp = read_stamp(root)
    if not s.has("template"):
        return read_section(s, preset=True), stamp
    if stamp is not None:
        root.out.add("slo_template", NO_VALUE, "written by canary when slo names a template; remove one of them")
    expansion = expand(s, templates)
    if expansion is None:
        return SLOSection(None, None), None  # placeholder: the problems are reported, it never escapes
    errors_before = len(s.out.errors)
    section = read_section(Section(s.out, s.path, expansion.section), preset=True)
    s.out.errors[errors_before:] = [explain(e, expansion) for e in s.out.errors[errors_before:]]
    return section, expansion.stamp


def _rings(root: Section) -> tuple[Ring, ...]:
    """``rings: [{name, attribute, values, to}]``: at most 8, names unique, values non-empty strings."""
    entries = root.sections("rings")
    if len(entries) > MAX_RINGS:
        root.out.add("rings", NO_VALUE, f"at most {MAX_RINGS} rings, got {len(entries)}")
        return ()
    rings: list[Ring] = []
    for s in entries:
        name = s.string("name", pattern=RING_NAME, hint="lower-case letters, digits, '_' or '-' (at most 32)")
        attribute = s.string(
            "attribute", pattern=ATTRIBUTE, hint="'user_id' or a request attribute name (lower-case, at most 32)"
        )
        to = s.string("to", choices=TARGETS)
        values = s.strings("values")
        if s.out.ok(s.field("values")) and not values:
            s.out.add(s.field("values"), [], "list at least one value to match")
        elif len(values) > MAX_RING_VALUES:
            s.out.add(s.field("values"), len(values), f"at most {MAX_RING_VALUES} values")
        if name and any(r.name == name for r in rings):
            s.out.add(s.field("name"), name, "another ring has this name")
        s.close()
        rings.append(Ring(name, attribute, frozenset(values), to))  # type: ignore[arg-type]
    return tuple(rings)


@dataclass(frozen=True, slots=True)
class BakeSection:
    duration_s: float  # 0: no bake (a plan's default bake turned off)


def _bake(root: Section) -> BakeSection | None:
    """``bake: {duration_s: N}`` (0 < N ≤ a week; 0 turns a plan's default bake off), or ``bake: null``."""
    raw = root.take("bake")
    if raw is NO_VALUE:
        return None
    if raw is None:
        return BakeSection(0.0)
    s = root.section("bake")
    seconds = _optional_number(s, "duration_s", -1.0, low=0, high=MAX_BAKE_S, open_ends=False)
    if seconds == -1.0 and s.out.ok(s.field("duration_s")):
        s.out.add(s.field("duration_s"), NO_VALUE, f"missing required field (seconds, 0 to {MAX_BAKE_S:g}; 0: no bake)")
    s.close()
    return BakeSection(max(seconds, 0.0))


@dataclass(frozen=True, slots=True)
class EnvironmentStamp:
    name: str
    preset_hash: str


def _environment_stamp(root: Section) -> EnvironmentStamp | None:
    if root.take("environment") in (NO_VALUE, None):
        return None
    s = root.section("environment")
    stamp = EnvironmentStamp(
        s.string("name", pattern=re.compile(r"[a-z][a-z0-9_-]{0,31}"), hint="an environment name"),
        s.string("preset_hash", pattern=re.compile(r"[0-9a-f]{16}"), hint="16 hex digits"),
    )
    s.close()
    return stamp


def _rollout(root: Section) -> RolloutPlan | None:
    raw = root.take("rollout")
    if raw is NO_VALUE or raw is None:
        return None
    s = root.section("rollout")
    errors_before = len(s.out.errors)
    steps: list[RolloutStep] = []
    for step in s.sections("steps"):
        weight = step.number("weight", low=0, high=1)
        min_windows = step.integer("min_windows", minimum=0, default=DEFAULT_MIN_WINDOWS)
        min_duration = _optional_number(step, "min_duration_s", 0.0, low=0, high=math.inf, open_ends=False)
        gate = step.string("gate", choices=GATES, required=False) or "auto"
        mirror = _optional_number(step, "mirror", 0.0, low=0, high=1, open_ends=False)
        step.close()
        steps.append(RolloutStep(weight, min_windows, min_duration, gate, mirror))  # type: ignore[arg-type]
    if s.take("steps") is NO_VALUE:
        s.out.add(s.field("steps"), NO_VALUE, "missing required field (a list of {weight, min_windows, ...})")
    min_total = _optional_number(
        s, "min_total_duration_s", DEFAULT_MIN_TOTAL_DURATION_S, low=0, high=math.inf, open_ends=False
    )
    raw_max = s.take("max_duration_s")
    max_duration = None
    if raw_max not in (NO_VALUE, None):
        max_duration = _optional_number(s, "max_duration_s", 0.0, low=0, high=math.inf, open_ends=False)
    auto_promote = s.take("auto_promote")
    if auto_promote is NO_VALUE:
        auto_promote = True
    elif not isinstance(auto_promote, bool):
        s.out.add(s.field("auto_promote"), auto_promote, "expected true or false")
        auto_promote = True
    s.close()
    if len(s.out.errors) > errors_before:
        return None
    problems = plan_problems(tuple(steps), min_total, max_duration)
    for path, value, reason in problems:
        s.out.add(s.field(path), value, reason)
    if problems:
        return None
    return RolloutPlan(tuple(steps), min_total, max_duration, auto_promote)


def _cross_checks(out: Collector, p: Preset) -> None:
    """Relations between fields; skipped when a field involved is already reported as broken."""
    top_k = p.retriever.top_k
    for key in ("vector_top_k", "bm25_top_k"):
        value = getattr(p.retriever, key)
        if out.ok(f"retriever.{key}", "retriever.top_k") and value < top_k:
            out.add(f"retriever.{key}", value, f"must be >= retriever.top_k ({top_k})")
    if out.ok("reranker.top_k", "retriever.top_k") and p.reranker.top_k > top_k:
        out.add("reranker.top_k", p.reranker.top_k, f"must not exceed retriever.top_k ({top_k})")
