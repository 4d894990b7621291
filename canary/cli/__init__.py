"""The ``canary`` command line: ``main`` parses, dispatches and maps errors to exit codes; one module per
command family (``kafka`` in ``main``, ``ops``, ``commands``, ``reports``, ``replay``, ``keys``)."""

from canary.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
