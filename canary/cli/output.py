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


def safe_name(kind: str) -> Any:
    """An argparse ``type=`` for deployment ids and router ids: refuses names outside the safe set
    (canary.core.models.SAFE_NAME) with the rule, before anything is sent or read."""
    from canary.core.models import SAFE_NAME, SAFE_NAME_HINT

    def check(value: str) -> str:
        if not SAFE_NAME.fullmatch(value):
            raise argparse.ArgumentTypeError(f"{kind} {value!r}: {SAFE_NAME_HINT}")
        return value

    check.__name__ = kind.replace(" ", "_")
    return check
