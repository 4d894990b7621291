"""Config presets: loading, validation, snapshots and the preset directory."""

from canary.config.backend import HttpBackendSpec
from canary.config.knobs import derive_params
from canary.config.presets import (
    DerivedParams,
    MacroKnobs,
    Metadata,
    Preset,
    PresetValidationError,
    RerankerConfig,
    RetrieverConfig,
    SLOConfig,
    SLORule,
    load_preset,
)
from canary.config.store import DEFAULT_PRESET_DIR, PresetEntry, PresetStore
from canary.core.validation import FieldError

__all__ = [
    "DEFAULT_PRESET_DIR",
    "DerivedParams",
    "FieldError",
    "HttpBackendSpec",
    "MacroKnobs",
    "Metadata",
    "Preset",
    "PresetEntry",
    "PresetStore",
    "PresetValidationError",
    "RerankerConfig",
    "RetrieverConfig",
    "SLOConfig",
    "SLORule",
    "derive_params",
    "load_preset",
]
