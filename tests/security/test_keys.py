"""Key files: private keys (mode 0600, refused when readable by others), the trusted directory, keys init."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from canary.errors import ConfigError
from canary.security import CommandSigner, ControlSecurity, KeyRing, Scope, TrustedKey, init_key, load_private_key
from canary.security.keys import key_id_for, read_trusted_dir, write_private_key, write_trusted
from canary.settings import Settings, load_settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_0600_key_in_a_0700_dir_and_trusts_it(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not leak into the key file
    try:
        made = init_key(tmp_path / "keys" / "op.key", tmp_path / "trusted", "operator", "operator:alice")
    finally:
        os.umask(old)
    assert made.created
    assert _mode(made.key_path) == 0o600
    assert _mode(made.key_path.parent) == 0o700
    assert made.trusted_path == tmp_path / "trusted" / f"{made.key_id}.json"
    body = json.loads(made.trusted_path.read_text())
    assert body["key_id"] == made.key_id and body["role"] == "operator" and body["name"] == "operator:alice"
    assert "PRIVATE" not in made.trusted_path.read_text()
    assert key_id_for(load_private_key(made.key_path).public_key()) == made.key_id


def test_init_is_idempotent_and_force_makes_a_new_key(tmp_path: Path) -> None:
    first = init_key(tmp_path / "k", tmp_path / "t")
    again = init_key(tmp_path / "k", tmp_path / "t")
    assert not again.created and again.key_id == first.key_id
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == [f"{first.key_id}.json"]
    fresh = init_key(tmp_path / "k", tmp_path / "t", force=True)
    assert fresh.created and fresh.key_id != first.key_id
    assert _mode(tmp_path / "k") == 0o600


def test_an_existing_key_file_is_never_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_private_key(path, Ed25519PrivateKey.generate())
    with pytest.raises(ConfigError, match="already exists"):
        write_private_key(path, Ed25519PrivateKey.generate())


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_private_key(path, Ed25519PrivateKey.generate())
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        load_private_key(path)


def test_missing_or_garbage_key_files_say_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="canary keys init"):
        load_private_key(tmp_path / "nope")
    garbage = tmp_path / "g"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="PKCS#8 PEM"):
        load_private_key(garbage)


def test_trusted_dir_ignores_mislabelled_and_broken_files(tmp_path: Path) -> None:
    good = TrustedKey.from_public(Ed25519PrivateKey.generate().public_key(), "op", "operator")
    write_trusted(tmp_path, good)
    other = TrustedKey.from_public(Ed25519PrivateKey.generate().public_key(), "w", "worker").to_dict()
    (tmp_path / "liar.json").write_text(json.dumps({**other, "key_id": good.key_id}))
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "role.json").write_text(json.dumps({**other, "role": "admin"}))
    keys, problems = read_trusted_dir(tmp_path)
    assert list(keys) == [good.key_id]
    assert len(problems) == 3
    assert any("does not match its public key" in p for p in problems)
    assert any("role must be one of" in p for p in problems)


def test_keyring_picks_up_a_key_trusted_later(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, reload_s=0.0)
    assert len(ring) == 0
    key = TrustedKey.from_public(Ed25519PrivateKey.generate().public_key(), "op", "operator")
    write_trusted(tmp_path, key)
    found = ring.get(key.key_id)
    assert found is not None and found.name == "op"


def test_role_permissions() -> None:
    pub = Ed25519PrivateKey.generate().public_key()
    worker = TrustedKey.from_public(pub, "w", "worker")
    operator = TrustedKey.from_public(pub, "o", "operator")
    assert worker.permits("rollback") and worker.permits("pause")
    assert not any(worker.permits(t) for t in ("start", "promote", "resume", "set_weight", "abort"))
    # A rollout plan's steps, only under rollout ids (the ledger then holds them to the plan).
    assert worker.permits("set_weight", "rollout-dep-1-step-1") and worker.permits("promote", "rollout-dep-1-promote")
    assert not worker.permits("start", "rollout-dep-1-step-1") and not worker.permits("resume", "rollout-x")
    assert all(operator.permits(t) for t in ("start", "rollback", "promote", "pause", "resume", "set_weight", "abort"))


def test_settings_locate_keys_under_home_and_read_overrides(tmp_path: Path) -> None:
    s = load_settings({"CANARY_HOME": str(tmp_path)})
    assert s.trusted_keys_dir == tmp_path / "trusted-keys"
    assert s.operator_key_path == tmp_path / "keys" / "operator.key"
    assert s.worker_key_path == tmp_path / "keys" / "worker.key"
    assert not s.insecure_control and s.command_ttl_s == 300.0
    s = load_settings(
        {
            "CANARY_TRUSTED_KEYS_DIR": str(tmp_path / "t"),
            "CANARY_OPERATOR_KEY": str(tmp_path / "o.key"),
            "CANARY_WORKER_KEY": str(tmp_path / "w.key"),
            "CANARY_INSECURE_CONTROL": "1",
            "CANARY_COMMAND_TTL_S": "60",
        }
    )
    assert (s.trusted_keys_dir, s.operator_key_path, s.worker_key_path) == (
        tmp_path / "t",
        tmp_path / "o.key",
        tmp_path / "w.key",
    )
    assert s.insecure_control and s.command_ttl_s == 60.0
    with pytest.raises(ConfigError, match="CANARY_INSECURE_CONTROL"):
        load_settings({"CANARY_INSECURE_CONTROL": "maybe"})
    with pytest.raises(ConfigError, match="CANARY_COMMAND_TTL_S"):
        load_settings({"CANARY_COMMAND_TTL_S": "-1"})


def test_control_security_requires_the_key_unless_insecure(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with pytest.raises(ConfigError, match=r"canary keys init --role worker"):
        ControlSecurity.worker(settings).signer("canary_control")
    assert ControlSecurity.worker(settings.with_overrides(insecure_control=True)).signer("canary_control") is None
    init_key(settings.worker_key_path, settings.trusted_keys_dir, "worker")
    signer = ControlSecurity.worker(settings).signer("canary_control")
    assert isinstance(signer, CommandSigner) and signer.ttl_ms == 300_000
    assert signer.scope == Scope(None, "canary_control")
    staging = settings.in_environment("staging")
    verifier = ControlSecurity.worker(staging).verifier("staging.canary_control")
    assert len(verifier.keys) == 0  # staging's own trusted keys directory
    assert verifier.scope == Scope("staging", "staging.canary_control")


def test_cli_keys_init_and_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from canary import cli

    for name in ("CANARY_TRUSTED_KEYS_DIR", "CANARY_OPERATOR_KEY", "CANARY_WORKER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CANARY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CANARY_PROJECT_ROOT", str(tmp_path / "repo"))
    assert cli.main(["keys", "init", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["created"] and made["role"] == "operator"
    assert Path(made["key_path"]) == tmp_path / "home" / "keys" / "operator.key"
    assert _mode(Path(made["key_path"])) == 0o600
    assert cli.main(["keys", "init", "--role", "worker", "--name", "worker:ci"]) == 0
    assert "created worker key" in capsys.readouterr().out
    assert cli.main(["keys", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {(k["role"], k["name"]) for k in listing["keys"]} == {
        ("operator", made["name"]),
        ("worker", "worker:ci"),
    }
    assert all(k["local"] for k in listing["keys"]) and listing["untrusted_local_keys"] == []
    # A private key inside the repository is refused.
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert cli.main(["keys", "init", "--key", str(tmp_path / "repo" / "op.key")]) == 2
    assert "inside the repository" in capsys.readouterr().err


def test_insecure_mode_says_so_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import argparse

    from canary.cli.commands import _security

    settings = Settings(home=tmp_path)
    secure = _security(argparse.Namespace(insecure=False), settings, "worker")
    insecure = _security(argparse.Namespace(insecure=True), settings, "worker")
    assert not secure.insecure and insecure.insecure and insecure.verifier("canary_control").insecure
    with caplog.at_level("WARNING", logger="canary.security"):
        secure.warn_if_insecure("worker")
        assert not caplog.records
        insecure.warn_if_insecure("worker")
    assert len(caplog.records) == 3 and all("INSECURE CONTROL MODE" in r.getMessage() for r in caplog.records)
