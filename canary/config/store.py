"""The preset directory: listing for humans (never fails on one bad file) and lookup by name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from canary.config.presets import NAME_PATTERN, Preset, default_templates_dir, load_preset
from canary.errors import ConfigError, PresetNotFound

DEFAULT_PRESET_DIR: Final = Path("configs/presets")
SUFFIX: Final = ".yaml"  # one spelling only, so a name maps to exactly one file


@dataclass(frozen=True, slots=True)
class PresetEntry:
    name: str  # file stem; the name to ask get() for
    path: Path
    version: str | None  # None when the file is invalid
    description: str | None
    content_hash: str | None
    valid: bool
    error: str | None  # every problem of the file, one per line


class PresetStore:
    def __init__(
        self,
        directory: str | os.PathLike[str] = DEFAULT_PRESET_DIR,
        templates_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        # SLO templates the presets may name (canary.config.templates); default: slo-templates beside them.
        self.templates_dir = Path(templates_dir) if templates_dir is not None else default_templates_dir(self.directory)

    def _paths(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if p.suffix == SUFFIX and p.is_file())

    def names(self) -> list[str]:
        """Stems of all preset files, valid or not, sorted."""
        return [p.stem for p in self._paths()]

    def list(self) -> list[PresetEntry]:
        entries = []
        for path in self._paths():
            try:
                preset = load_preset(path, templates_dir=self.templates_dir)
            except ConfigError as exc:
                entries.append(PresetEntry(path.stem, path, None, None, None, valid=False, error=str(exc)))
            else:
                meta = preset.metadata
                entries.append(
                    PresetEntry(path.stem, path, meta.version, meta.description, preset.content_hash, True, None)
                )
        return entries

    def get(self, name: str) -> Preset:
        """Load preset ``name``; PresetNotFound lists the known names, PresetValidationError the problems."""
        path = self.directory / f"{name}{SUFFIX}"
        # The pattern check also stops names like "../secrets" from reaching outside the directory.
        if not NAME_PATTERN.fullmatch(name) or not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise PresetNotFound(f"unknown preset '{name}' in {self.directory}; known presets: {known}")
        return load_preset(path, templates_dir=self.templates_dir)
