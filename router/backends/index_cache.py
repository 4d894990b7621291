"""On-disk cache of the bundled backend's built indexes (faiss HNSW graph, bm25s score matrix).

Building them costs ~3 s per process (router start, every test process that builds the backend); loading a
cached copy takes a few tens of milliseconds. An entry is a directory ``<kind>-<key>/`` under
``$CANARY_HOME/index-cache`` (default ``~/.cache/canary/index-cache``) holding the engine's own files, written
with the engine's own save call, and a ``manifest.json`` with the sha256 of every file.

* **Key** – sha256 over the cache format, the engine and its version, the build parameters and the bytes of
  the data indexed (the corpus's vectors, or its BM25 postings): a change to the corpus generator, the
  engine or a parameter gives another key, never a stale hit.
* **Safe load** – every file's sha256 is checked against the manifest *before* the engine parses it (a
  truncated or flipped file never reaches faiss's C++ reader); the caller then validates what it loaded
  against the data (:class:`router.backends.hybrid.HnswIndex` compares the stored vectors and bounds-checks
  the graph links; :class:`~router.backends.hybrid.Bm25Index` compares probe scores with the corpus's exact
  BM25). Any failure logs a warning, removes the entry and falls back to building.
* **Atomic store** – an entry is written into a private temporary directory and renamed into place; a
  concurrent process that renamed first wins and ours is discarded (both are bit-identical builds).

``CANARY_INDEX_CACHE=off`` (or ``0`` / ``false`` / ``no``) disables the default cache; ``HybridBackend(
index_cache=...)`` takes a directory or ``False``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np

__all__ = ["FORMAT", "IndexCache", "cache_key", "default_cache_dir"]

log = logging.getLogger(__name__)

FORMAT: Final = 1  # bump when an entry's layout changes
_MANIFEST: Final = "manifest.json"
_OFF: Final = {"0", "off", "false", "no"}
T = TypeVar("T")


def default_cache_dir() -> Path | None:
    """``$CANARY_HOME/index-cache`` (canary's home as in canary.settings), or None if disabled by env."""
    if os.environ.get("CANARY_INDEX_CACHE", "").strip().lower() in _OFF:
        return None
    home = os.environ.get("CANARY_HOME", "").strip()
    if home:
        return Path(home) / "index-cache"
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "canary" / "index-cache"


def cache_key(kind: str, params: Mapping[str, Any], arrays: Iterable[np.ndarray]) -> str:
    """Hex key over the format, ``kind``, ``params`` (JSON) and the dtype, shape and bytes of ``arrays``."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "kind": kind, **params}, sort_keys=True).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class IndexCache:
    """Entries under ``root``; see the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entry(self, kind: str, key: str) -> Path:
        return self.root / f"{kind}-{key}"

    def get_or_build(
        self,
        kind: str,
        key: str,
        load: Callable[[Path], T],
        build: Callable[[], T],
        save: Callable[[T, Path], None],
    ) -> T:
        """``load(entry)`` if a verified entry exists (``load`` raises if what it read is wrong), else
        ``build()`` and store it with ``save(value, directory)``. Cache trouble never fails the caller."""
        path = self.entry(kind, key)
        if path.is_dir():
            try:
                self._verify(path)
                return load(path)
            except Exception as exc:  # corrupt, truncated, foreign or wrong: rebuild
                log.warning("index cache: discarding %s (%s: %s); rebuilding", path, type(exc).__name__, exc)
                shutil.rmtree(path, ignore_errors=True)
        value = build()
        try:
            self._store(path, value, save)
        except Exception as exc:  # read-only home, full disk, ...: the built index is still good
            log.warning("index cache: could not store %s (%s: %s)", path, type(exc).__name__, exc)
        return value

    @staticmethod
    def _verify(path: Path) -> None:
        manifest = json.loads((path / _MANIFEST).read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"manifest format {manifest.get('format') if isinstance(manifest, dict) else '?'}")
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ValueError("manifest lists no files")
        present = {p.name for p in path.iterdir()} - {_MANIFEST}
        if present != set(files):
            raise ValueError(f"files {sorted(present)} != manifest {sorted(files)}")
        for name, digest in files.items():
            if _sha256(path / name) != digest:
                raise ValueError(f"{name}: sha256 mismatch")

    def _store(self, path: Path, value: T, save: Callable[[T, Path], None]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=self.root))
        try:
            save(value, tmp)
            files = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
            (tmp / _MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1, sort_keys=True))
            for p in tmp.iterdir():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
            try:
                tmp.rename(path)
            except OSError:
                if not path.is_dir():  # not "another process stored it first"
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
