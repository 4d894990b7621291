"""Where a backend's CPU work runs: the executor the router's admission lane chose for this search.

The bundled engine's searches are CPU work in worker threads. The router runs last_good's searches on the
event loop's default executor and every candidate's on threads of their own (:mod:`router.admission`),
chosen per search through :data:`CPU_POOL`: a candidate's stuck work never holds the threads last_good's
searches need.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = ["CPU_POOL", "run_cpu"]

T = TypeVar("T")

CPU_POOL: contextvars.ContextVar[Executor | None] = contextvars.ContextVar("canary_cpu_pool", default=None)


async def run_cpu(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the executor of this search (the loop's default one unless a lane chose another)."""
    return await asyncio.get_running_loop().run_in_executor(CPU_POOL.get(), functools.partial(fn, *args))
