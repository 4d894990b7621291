"""The optional native batch core (``native/``, Rust + PyO3; `make install` builds it where cargo is).

The one place it is imported: None without it, and the pure-Python path (the reference) runs alone.
``DEADLINE`` is its stop-deadline backstop (canary.runtime.StopDeadline), for the services to hand over. Its
``all_finite`` is handed to ``canary.core.jsonio`` here (the NaN check before JSON is written)."""

from __future__ import annotations

from types import ModuleType

from canary.core import jsonio
from canary.runtime import NativeDeadline

DEADLINE: NativeDeadline | None
try:
    import canary_native as _native_module

    NATIVE: ModuleType | None = _native_module
    # An extension built before the backstop existed has no deadline_install: the Python deadline alone.
    DEADLINE = _native_module if hasattr(_native_module, "deadline_install") else None
    if hasattr(_native_module, "all_finite"):  # one built before it has none: the Python walk
        jsonio.use_finite_check(_native_module.all_finite)
except ImportError:  # pragma: no cover - depends on the machine
    NATIVE = None
    DEADLINE = None
