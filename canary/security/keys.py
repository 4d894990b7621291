"""Ed25519 key files: a process's private signing key, and the directory of trusted public keys.

* A private key is one PKCS#8 PEM file, created with mode 0600 in a directory of mode 0700, outside the
  repository (default under the canary home dir). A key file that group or others can read is refused,
  the way ssh refuses one.
* The key id is derived from the public key (first 16 hex of sha256 over its 32 raw bytes), so a key
  id can never name another key and a signer needs no metadata besides its key file.
* The trusted directory holds one ``<key_id>.json`` per trusted public key: ``key_id``, ``name``,
  ``role`` (``operator``: any command; ``worker``: only the SLO agent's ``rollback`` and ``pause``),
  ``public_key`` (base64 of the raw 32 bytes), ``created_at_ms``. A file whose key id does not match its
  public key, or that does not parse, is ignored with the reason (see :meth:`KeyRing.problems`).
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import os
import socket
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from canary.core import wire
from canary.errors import CanaryError, ConfigError

Role = Literal["operator", "worker"]
ROLES: tuple[Role, ...] = ("operator", "worker")
# What each role may sign. The worker's agents issue rollbacks and pauses, and walk a rollout plan — the
# latter only under rollout command ids (ROLE_ID_PREFIXES), which the ledger holds to the deployment's
# operator-signed plan: a stolen worker key can stop a canary, never ship a config or skip a step.
ROLE_COMMANDS: dict[Role, frozenset[str]] = {
    "operator": frozenset({"start", "rollback", "promote", "pause", "resume", "set_weight", "abort"}),
    "worker": frozenset({"rollback", "pause", "set_weight", "promote", "resume"}),
}
ROLE_ID_PREFIXES: dict[tuple[Role, str], str] = {
    ("worker", "set_weight"): "rollout-",
    ("worker", "promote"): "rollout-",
    # After a shock shared with last_good is over (canary.core.judge): the ledger applies it only to a
    # deployment the SLO agent itself paused for that shock.
    ("worker", "resume"): "resume-shared-",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def public_bytes(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_for(public: Ed25519PublicKey) -> str:
    """First 16 hex of sha256 over the raw public key: the id every signature names."""
    return hashlib.sha256(public_bytes(public)).hexdigest()[:16]


def default_name(role: Role) -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    host = socket.gethostname() or "localhost"
    return f"{role}:{user}@{host}" if role == "operator" else f"{role}:{host}"


# -- private keys ---------------------------------------------------------------------------------------------
def _loose_mode(mode: int) -> bool:
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def write_private_key(path: Path, key: Ed25519PrivateKey, *, force: bool = False) -> None:
    """Write ``key`` as PKCS#8 PEM with mode 0600 (its directory 0700 if created); never over an existing
    file unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file exists: never overwrite a key by accident
    except FileExistsError:
        raise ConfigError(f"{path}: a key file already exists (use --force to replace it)") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path``; ConfigError naming the file and the fix otherwise."""
    try:
        st = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no signing key there; create one with 'canary keys init'") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the signing key: {exc.strerror or exc}") from None
    if _loose_mode(st.st_mode):
        raise ConfigError(
            f"{path}: private key file has mode {stat.S_IMODE(st.st_mode):04o}; it must be readable by its owner "
            f"only (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{path}: not an unencrypted PKCS#8 PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key ({type(key).__name__})")
    return key


# -- trusted public keys ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TrustedKey:
    key_id: str
    name: str
    role: Role
    public_key: Ed25519PublicKey = field(compare=False)
    created_at_ms: int | None = None
    path: Path | None = field(default=None, compare=False)

    def permits(self, command_type: str, command_id: str = "") -> bool:
        if command_type not in ROLE_COMMANDS[self.role]:
            return False
        prefix = ROLE_ID_PREFIXES.get((self.role, command_type))
        return prefix is None or command_id.startswith(prefix)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "public_key": base64.b64encode(public_bytes(self.public_key)).decode(),
            "created_at_ms": self.created_at_ms,
        }

    @classmethod
    def from_public(
        cls, public: Ed25519PublicKey, name: str, role: Role, created_at_ms: int | None = None
    ) -> TrustedKey:
        return cls(key_id_for(public), name, role, public, created_at_ms)

    @classmethod
    def from_dict(cls, d: object, path: Path | None = None) -> TrustedKey:
        if not isinstance(d, Mapping):
            raise ValueError("expected a JSON object")
        role = d.get("role")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        name, key_text, key_id = d.get("name"), d.get("public_key"), d.get("key_id")
        if not isinstance(name, str) or not isinstance(key_text, str) or not isinstance(key_id, str):
            raise ValueError("key_id, name and public_key must be strings")
        try:
            raw = base64.b64decode(key_text, validate=True)
            public = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ValueError(f"public_key is not a base64 raw Ed25519 public key: {exc}") from None
        if key_id_for(public) != key_id:
            raise ValueError(f"key_id {key_id} does not match its public key ({key_id_for(public)})")
        created = d.get("created_at_ms")
        return cls(key_id, name, cast(Role, role), public, created if isinstance(created, int) else None, path)


def trusted_file(trusted_dir: Path, key_id: str) -> Path:
    return trusted_dir / f"{key_id}.json"


def write_trusted(trusted_dir: Path, key: TrustedKey) -> Path:
    """Trust ``key``: write ``<trusted_dir>/<key_id>.json`` atomically (readable by all: it is public)."""
    trusted_dir.mkdir(parents=True, exist_ok=True)
    path = trusted_file(trusted_dir, key.key_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(key.to_dict(), indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


_KEY_FILE = wire.Limits("trusted key file", 64 << 10, 4)


def read_trusted_dir(trusted_dir: Path) -> tuple[dict[str, TrustedKey], list[str]]:
    """Every valid trusted key in the directory, and one problem line per file that is not."""
    keys: dict[str, TrustedKey] = {}
    problems: list[str] = []
    try:
        paths = sorted(trusted_dir.glob("*.json"))
    except OSError as exc:
        return keys, [f"{trusted_dir}: {exc}"]
    for path in paths:
        try:
            key = TrustedKey.from_dict(wire.decode_object(path.read_bytes(), _KEY_FILE), path)
        except (OSError, ValueError, CanaryError) as exc:  # wire.Rejected is a CanaryError
            problems.append(f"{path}: ignored: {exc}")
            continue
        keys[key.key_id] = key
    return keys, problems


class KeyRing:
    """The trusted keys of one process: a directory, re-read when an unknown key id is asked for (at most
    once a second), so a key trusted while services run is picked up without a restart. Removing a key
    takes effect at the next start — and then also for the history re-verified at start (see
    docs/contracts.md: never remove a key whose commands are still on the control topic)."""

    def __init__(self, trusted_dir: Path | None = None, keys: Iterable[TrustedKey] = (), reload_s: float = 1.0) -> None:
        self.trusted_dir = trusted_dir
        self._fixed = {k.key_id: k for k in keys}
        self._keys: dict[str, TrustedKey] = dict(self._fixed)
        self.problems: list[str] = []
        self._reload_s = reload_s
        self._loaded_at = float("-inf")
        self.reload()

    def reload(self) -> None:
        self._loaded_at = time.monotonic()
        if self.trusted_dir is None:
            return
        found, self.problems = read_trusted_dir(self.trusted_dir)
        self._keys = {**found, **self._fixed}

    def get(self, key_id: str) -> TrustedKey | None:
        key = self._keys.get(key_id)
        if key is None and time.monotonic() - self._loaded_at >= self._reload_s:
            self.reload()
            key = self._keys.get(key_id)
        return key

    def trusted(self) -> list[TrustedKey]:
        return sorted(self._keys.values(), key=lambda k: (k.role, k.name, k.key_id))

    def __len__(self) -> int:
        return len(self._keys)


# -- keys init --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class KeyInit:
    key_id: str
    role: Role
    name: str
    key_path: Path
    trusted_path: Path
    created: bool  # False: an existing key file was reused (and trusted again)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = msgspec.to_builtins(self, enc_hook=str)  # the paths as text
        return d


def init_key(
    key_path: Path, trusted_dir: Path, role: Role = "operator", name: str | None = None, *, force: bool = False
) -> KeyInit:
    """Create the key at ``key_path`` (or reuse the one there) and trust its public key in ``trusted_dir``."""
    created = force or not key_path.exists()
    if created:
        write_private_key(key_path, Ed25519PrivateKey.generate(), force=force)
    private = load_private_key(key_path)
    existing, _ = read_trusted_dir(trusted_dir)
    key_id = key_id_for(private.public_key())
    previous = existing.get(key_id)
    if previous is not None and name is None and previous.role == role:
        trusted = previous
        trusted_path = previous.path or trusted_file(trusted_dir, key_id)
    else:
        trusted = TrustedKey.from_public(private.public_key(), name or default_name(role), role, now_ms())
        trusted_path = write_trusted(trusted_dir, trusted)
    return KeyInit(key_id, role, trusted.name, key_path, trusted_path, created)
