"""The optional native batch core (``native/``, Rust + PyO3; `make install` builds it where cargo is).

The one place it is imported: None without it, and the pure-Python path (the reference) runs alone."""

from __future__ import annotations

from types import ModuleType

try:
    import canary_native as _native_module

    NATIVE: ModuleType | None = _native_module
except ImportError:  # pragma: no cover - depends on the machine
    NATIVE = None
