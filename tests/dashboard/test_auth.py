"""The operator token file: created 0600 once, refused when others can read it, compared in constant time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from canary.dashboard.auth import bearer, load_or_create_token
from canary.errors import ConfigError


def test_token_is_created_once_with_mode_0600_then_read_back(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.token"
    first = load_or_create_token(path)
    assert first.created and len(first.value) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    again = load_or_create_token(path)
    assert not again.created and again.value == first.value


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.token"
    load_or_create_token(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644 .*chmod 600"):
        load_or_create_token(path)


def test_a_short_token_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "dashboard.token"
    path.write_text("secret\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match=r"at least 24 characters.*delete the file"):
        load_or_create_token(path)


def test_matches_only_the_exact_token(tmp_path: Path) -> None:
    token = load_or_create_token(tmp_path / "t")
    assert token.matches(token.value)
    assert not token.matches(token.value[:-1]) and not token.matches(token.value + "x")
    assert not token.matches(None) and not token.matches("")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer ", None), (None, None), ("", None)],
)
def test_bearer_header_parsing(header: str | None, expected: str | None) -> None:
    assert bearer(header) == expected
