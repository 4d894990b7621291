"""How every CLI command prints: a human text, or with ``--json`` one JSON document for scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any


def emit(args: argparse.Namespace, payload: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, sort_keys=True, default=str))
    else:
        print(human)
