"""The optional native batch core (``native/``, Rust + PyO3; `make install` builds it where cargo is).

The one place it is imported: None without it, and the pure-Python path (the reference) runs alone.
``DEADLINE`` is its stop-deadline backstop (canary.runtime.StopDeadline), for the services to hand over. Its
stand-ins for the core's pure functions are handed over here (canary.core.accel), each answering as the Python
reference it replaces."""

from __future__ import annotations

from types import ModuleType

from canary.core import accel
from canary.runtime import NativeDeadline

DEADLINE: NativeDeadline | None
try:
    import canary_native as _native_module

    NATIVE: ModuleType | None = _native_module
    # An extension built before the backstop existed has no deadline_install: the Python deadline alone.
    DEADLINE = _native_module if hasattr(_native_module, "deadline_install") else None
    accel.install(_native_module)  # each stand-in it has (an older build lacks the newer ones)
except ImportError:  # pragma: no cover - depends on the machine
    NATIVE = None
    DEADLINE = None
