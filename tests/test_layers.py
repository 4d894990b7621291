"""The import layers hold (`make lint` runs the same contract), and the contract bites: the same tree with one
upward import — the core importing the CLI — is refused, naming both ends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("canary", "router", "streams"):
        shutil.copytree(ROOT / package, tree / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    kept = _lint(tree)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout

    (tree / "canary" / "core" / "upward.py").write_text("from canary.cli.main import main\n")
    broken = _lint(tree)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "canary.core is not allowed to import canary.cli" in broken.stdout
    assert "canary.core.upward -> canary.cli.main" in broken.stdout
