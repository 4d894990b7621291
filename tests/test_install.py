"""What a new user meets before any canary runs (issue #21): the spec's scripts outside the venv say how to
install instead of dying with a traceback, `make help` keeps escape codes out of pipes, and an editable
install builds without setuptools' import-hook warning. Kafka-free; real make, real interpreter, real build."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("script", "args"), [("canary_cli.py", ["list"]), ("demo_canary.py", ["--qps", "5"])])
def test_the_spec_scripts_without_the_dependencies_say_how_to_install(script: str, args: list[str]) -> None:
    # -S: this interpreter without its site-packages, as a system Python without canary's dependencies is.
    result = subprocess.run(
        [sys.executable, "-S", f"scripts/{script}", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.startswith(f"canary: error: {sys.executable} lacks canary's dependencies (")
    assert "numpy" in result.stderr and "pyyaml" in result.stderr  # names what is missing …
    assert "make install" in result.stderr  # … and the command that installs it


def test_the_spec_script_runs_with_the_dependencies() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/canary_cli.py", "list", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"candidate_high_recall"' in result.stdout


def _make_help_on_a_terminal(env: dict[str, str]) -> bytes:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(["make", "-s", "help"], cwd=ROOT, stdout=follower, stderr=follower, env=env)
        os.close(follower)
        out = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(30) == 0
        return out
    finally:
        os.close(leader)


def test_make_help_colours_only_a_terminal() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    piped = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, timeout=60, env=env)
    assert piped.returncode == 0 and b"install" in piped.stdout
    assert b"\x1b" not in piped.stdout  # into a pipe or a file: plain text
    assert b"\x1b[36m" in _make_help_on_a_terminal(env)  # on a terminal: the target names in colour
    assert b"\x1b" not in _make_help_on_a_terminal({**env, "NO_COLOR": "1"})


def test_an_editable_install_builds_a_plain_pth_without_the_finder_warning(tmp_path: Path) -> None:
    """`make install` is `pip install -e`: setuptools' PEP 660 hook, run here on a copy of the project (no
    build artefacts in the repository). With the flat layout declared (package-dir), it writes a .pth with
    the project root instead of an import-hook finder, and says nothing about "folders … with the same name
    as your package"."""
    import setuptools

    found = tuple(int(part) for part in setuptools.__version__.split(".")[:2])
    assert found >= (70, 1), (
        f"setuptools {setuptools.__version__} builds no wheel without the `wheel` package; the dev extra asks "
        "for >= 70.1: run `make install`"
    )
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    for package in ("canary", "router", "streams", "modules"):
        shutil.copytree(ROOT / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    out.mkdir()
    build = "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", build, str(out)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "same name" not in said and "meta path finder" not in said, said[-3000:]
    with zipfile.ZipFile(out / result.stdout.strip().splitlines()[-1]) as wheel:
        names = wheel.namelist()
        (pth,) = [n for n in names if n.endswith(".pth")]
        assert wheel.read(pth).decode().split() == [str(project)]
        assert not [n for n in names if "finder" in n]
