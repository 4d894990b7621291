"""bench_replay runs on the shipped pipeline (it broke silently once when the decoder lost its offset argument):
its in-process part, small, through the command line, counts what it claims."""

from __future__ import annotations

import json
import subprocess
import sys

from devtools.harness import ROOT


def test_the_in_process_part_runs_and_agrees_with_the_reference_decoding() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_replay", "-n", "20000", "--strict-n", "2000", "--kafka-n", "0", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    part = result["in_process"]
    assert part["n"] == 20000
    assert part["decode_fast"]["rate"] > 0 and part["windows_only"]["rate"] > 0
    assert part["recompute"]["windows"] > 0 and part["recompute"]["invalid"] == 0
    assert part["recompute_reference"]["identical_windows"] is True
    assert "kafka" not in result
