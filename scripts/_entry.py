"""Shared start of the spec's entry points (canary_cli.py, demo_canary.py): the repository's packages on the
path, and — when this Python cannot run canary (too old, or its dependencies are not installed for it) — a
clear "how to install", exit 2, instead of a traceback from deep inside the first command that needs one.

Kept to syntax every Python 3 parses, so an old interpreter gets the message too.
"""

import os
import re
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN = ("canary", "router", "streams", "modules")  # a missing module of ours is a bug: its traceback stays
EXIT_INVALID = 2  # canary's exit code for invalid input or setup (canary.cli.main)


def _command(*words):
    return " ".join(shlex.quote(w) for w in words)


def _how_to_install(script, args):
    venv = os.path.join(ROOT, ".venv")
    venv_python = os.path.join(venv, "bin", "python")
    same_python = os.path.exists(venv_python) and os.path.samefile(venv_python, sys.executable)
    if os.path.realpath(sys.prefix) == os.path.realpath(venv) or same_python:
        return "The install in " + venv + " is incomplete; complete it:\n  " + _command("cd", ROOT) + " && make install"
    if os.path.exists(venv_python):
        return (
            "canary is installed in "
            + os.path.join(ROOT, ".venv")
            + "; run it with that Python:\n  "
            + _command(venv_python, script, *args)
        )
    return (
        "Install it first (creates .venv with every dependency):\n  " + _command("cd", ROOT) + " && make install\n"
        "then:\n  " + _command(".venv/bin/python", script, *args) + "\n"
        "(or `source .venv/bin/activate` and use the `canary` command)"
    )


def _fail(script, what):
    sys.stderr.write("canary: error: " + what + " " + _how_to_install(script, sys.argv[1:]) + "\n")
    raise SystemExit(EXIT_INVALID)


def missing_requirements():
    """The distributions pyproject.toml's [project].dependencies name that this Python does not have."""
    import importlib.metadata
    import tomllib

    path = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(path):
        return []
    with open(path, "rb") as fh:
        requirements = tomllib.load(fh).get("project", {}).get("dependencies", [])
    missing = []
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _script(path):
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def run(path, argv=None):
    """Run ``canary.cli.main(argv)``; exit 2 saying how to install when this interpreter cannot run canary."""
    script = _script(path)
    if sys.version_info < (3, 11):  # noqa: UP036 -- this file runs on any Python 3, to say which it needs
        found = ".".join(str(n) for n in sys.version_info[:3])
        _fail(script, "Python >= 3.11 is needed; " + sys.executable + " is " + found + ".")
    missing = missing_requirements()
    if missing:
        _fail(
            script,
            sys.executable + " lacks canary's dependencies (" + ", ".join(missing) + " not installed for it).",
        )
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        from canary.cli import main

        return main(argv)
    except ModuleNotFoundError as exc:  # one installed outside pyproject.toml (e.g. the rerank model's weights)
        name = exc.name or ""
        if not name or name.partition(".")[0] in OWN:
            raise
        _fail(script, sys.executable + " cannot import '" + name + "', which canary needs.")
