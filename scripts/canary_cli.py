#!/usr/bin/env python3
"""The spec's entry point: identical to the `canary` command (says how to install when run outside the venv)."""

from _entry import run

if __name__ == "__main__":
    raise SystemExit(run(__file__))
