#!/usr/bin/env python3
"""The spec's demo entry point: identical to `canary demo` (says how to install when run outside the venv)."""

import sys

from _entry import run

if __name__ == "__main__":
    raise SystemExit(run(__file__, ["demo", *sys.argv[1:]]))
