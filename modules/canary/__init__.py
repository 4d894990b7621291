"""The spec's import path, kept as an alias of :mod:`canary.api` (the primary, non-generic name)."""

from canary.api import *  # noqa: F403
from canary.api import __all__ as __all__
