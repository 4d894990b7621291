"""The optional native batch core (``native/``, Rust + PyO3; `make install` builds it where cargo is).

The one place it is imported: None without it, and the pure-Python path (the reference) runs alone.
``DEADLINE`` is its stop-deadline backstop (canary.runtime.StopDeadline), for the services to hand over. Its
``all_finite`` and ``structure`` are handed to the core here (``jsonio``'s NaN check before JSON is written,
``wire``'s depth and size bound of a record), each answering as the Python reference it replaces."""

from __future__ import annotations

from types import ModuleType

from canary.core import jsonio, wire
from canary.runtime import NativeDeadline

DEADLINE: NativeDeadline | None
try:
    import canary_native as _native_module

    NATIVE: ModuleType | None = _native_module
    # An extension built before the backstop existed has no deadline_install: the Python deadline alone.
    DEADLINE = _native_module if hasattr(_native_module, "deadline_install") else None
    # One built before these has neither: the Python references then.
    if hasattr(_native_module, "all_finite"):
        jsonio.use_finite_check(_native_module.all_finite)
    if hasattr(_native_module, "structure"):
        wire.use_structure_scan(_native_module.structure)
except ImportError:  # pragma: no cover - depends on the machine
    NATIVE = None
    DEADLINE = None
