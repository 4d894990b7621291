"""Where the demo and every prefix write (Kafka-free): the demo's own directory, never over files it did not
write; each topic prefix its own reports directory and audit log; a closing hint that is true."""

from __future__ import annotations

from pathlib import Path

import pytest

from canary.errors import ConfigError
from canary.settings import Settings, prefix_dir_name
from devtools.demo import DEMO_MARKER, claim_output, cli_command, closing_hint


def test_each_prefix_has_its_own_reports_directory(tmp_path: Path) -> None:
    base = tmp_path / "reports" / "canary"
    assert Settings(project_root=tmp_path).reports_dir == base
    assert Settings(project_root=tmp_path, topic_prefix="demo1796429890.").reports_dir == base / "demo1796429890"
    assert Settings(project_root=tmp_path).demo_reports_dir == base / "demo"
    # A prefix is free text: nothing of it escapes reports/canary, hides, or takes the demo's directory.
    for prefix in ("../x.", "a/b.", ".hidden.", "demo.", "."):
        name = prefix_dir_name(prefix)
        assert name.startswith("prefix-") and "/" not in name, (prefix, name)
    assert prefix_dir_name("t1.") == "t1" and prefix_dir_name("team_a-1.") == "team_a-1"


def test_the_demo_refuses_a_directory_with_files_it_did_not_write(tmp_path: Path) -> None:
    live = tmp_path / "reports" / "canary"
    live.mkdir(parents=True)
    (live / "audit.log").write_text('{"event_id": "control:live"}\n')
    with pytest.raises(ConfigError, match=r"holds audit\.log, which the demo did not write"):
        claim_output(live)
    assert (live / "audit.log").read_text() == '{"event_id": "control:live"}\n' and not (live / DEMO_MARKER).exists()
    exported = tmp_path / "exported"
    (exported / "promoted").mkdir(parents=True)
    (exported / "promoted" / "report.html").write_text("<html>")
    with pytest.raises(ConfigError, match=r"promoted/report\.html"):
        claim_output(exported)
    # A new directory, or one an earlier demo marked, is the demo's.
    own = tmp_path / "reports" / "canary" / "demo"
    claim_output(own)
    (own / "audit.log").write_text("{}\n")
    claim_output(own)
    assert (own / DEMO_MARKER).is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        claim_output(tmp_path / "file")


def test_the_closing_hint_works_after_the_broker_stopped(tmp_path: Path) -> None:
    settings = Settings(project_root=tmp_path, topic_prefix="demo1.", local_port=19670)
    out = tmp_path / "out"
    lines = closing_hint(settings, out, out / "audit.log", broker_stopped=True)
    cli = cli_command()
    assert lines[0].endswith(str(out / "report.html")) and lines[1].endswith(str(out / "promoted" / "report.html"))
    assert lines[2] == f"the demo's audit: {cli} audit --audit-log {out / 'audit.log'}"
    assert lines[3] == (
        f"its topics: {cli} kafka start --port 19670, then CANARY_TOPIC_PREFIX=demo1. CANARY_KAFKA_PORT=19670 "
        f"{cli} status"
    )
    running = closing_hint(Settings(topic_prefix="demo1."), out, out / "audit.log", broker_stopped=False)
    assert running[3] == f"its topics: CANARY_TOPIC_PREFIX=demo1. {cli} status"
    # The command names this interpreter's own CLI, not a `canary` that may not be on PATH.
    assert cli.endswith("canary") or cli.endswith("-m canary.cli")
