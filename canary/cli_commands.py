"""Deployment-level commands (list, status, start, stop …) registered onto the main parser."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add deployment subcommands; filled in as the router and streams land."""
    _ = (sub, argparse)
