"""``canary keys``: the signing keys of control commands (see docs/contracts.md, "Control command")."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from canary.cli.output import emit
from canary.errors import ConfigError
from canary.settings import Settings


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def cmd_keys_init(args: argparse.Namespace, settings: Settings) -> int:
    from canary.security import init_key

    role = args.role
    default = settings.operator_key_path if role == "operator" else settings.worker_key_path
    key_path = Path(args.key).expanduser() if args.key else default
    trusted_dir = Path(args.trusted_dir).expanduser() if args.trusted_dir else settings.trusted_keys_dir
    if _inside(key_path, settings.project_root) and (settings.project_root / ".git").exists():
        raise ConfigError(
            f"--key {key_path}: refusing to write a private key inside the repository {settings.project_root}; "
            "choose a path outside it (default: under the canary home dir)"
        )
    made = init_key(key_path, trusted_dir, role, args.name, force=args.force)
    verb = "created" if made.created else "reused existing"
    human = (
        f"{verb} {role} key {made.key_id} ({made.name})\n"
        f"  private key: {made.key_path} (mode 0600; keep it secret, outside the repository)\n"
        f"  trusted:     {made.trusted_path}\n"
        "Every router, worker and CLI of this deployment must trust it: copy the .json file into their "
        f"trusted keys directory (CANARY_TRUSTED_KEYS_DIR, here {trusted_dir})."
    )
    emit(args, made.to_dict(), human)
    return 0


def cmd_keys_list(args: argparse.Namespace, settings: Settings) -> int:
    from canary.security import KeyRing, load_private_key
    from canary.security.keys import key_id_for

    trusted_dir = Path(args.trusted_dir).expanduser() if args.trusted_dir else settings.trusted_keys_dir
    ring = KeyRing(trusted_dir)
    mine: dict[str, str] = {}
    for role, path in (("operator", settings.operator_key_path), ("worker", settings.worker_key_path)):
        if path.exists():
            try:
                mine[key_id_for(load_private_key(path).public_key())] = f"{role} key {path}"
            except ConfigError as exc:
                ring.problems.append(str(exc))
    keys = [
        {**k.to_dict(), "path": str(k.path) if k.path else None, "local": mine.get(k.key_id)} for k in ring.trusted()
    ]
    payload: dict[str, Any] = {
        "trusted_dir": str(trusted_dir),
        "exists": trusted_dir.is_dir(),
        "insecure_control": settings.insecure_control,
        "keys": keys,
        "problems": ring.problems,
        "untrusted_local_keys": sorted(v for k, v in mine.items() if k not in {key["key_id"] for key in keys}),
    }
    rows = [f"trusted keys in {trusted_dir}" + ("" if trusted_dir.is_dir() else " (directory does not exist)")]
    rows.append(f"{'KEY ID':17} {'ROLE':9} NAME")
    for k in keys:
        rows.append(
            f"{k['key_id']:17} {k['role']:9} {k['name']}" + (f"   [this machine's {k['local']}]" if k["local"] else "")
        )
    if not keys:
        rows.append("(none: every signed command is rejected as unknown_key; run 'canary keys init')")
    rows += [f"problem: {p}" for p in ring.problems]
    rows += [f"NOT TRUSTED here: {v}" for v in payload["untrusted_local_keys"]]
    if settings.insecure_control:
        rows.append("CANARY_INSECURE_CONTROL is set: signatures are not verified")
    emit(args, payload, "\n".join(rows))
    return 0


def register(sub: Any) -> None:
    keys = sub.add_parser(
        "keys",
        help="signing keys for control commands: create an operator/worker key, list the trusted ones",
        description=(
            "Every control command is signed (Ed25519). Routers, the worker and the CLI accept only commands "
            "signed by a key in the trusted keys directory (CANARY_TRUSTED_KEYS_DIR)."
        ),
    )
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = ksub.add_parser(
        "init",
        help="create a signing key (private key mode 0600 outside the repo) and trust its public key",
        description=(
            "Creates the key if it does not exist (reuses it otherwise) and writes its public key into the "
            "trusted keys directory. operator: the CLI/API/demo key (CANARY_OPERATOR_KEY); worker: the SLO "
            "agent's key (CANARY_WORKER_KEY), which may only sign rollbacks and pauses."
        ),
    )
    init.add_argument("--role", choices=("operator", "worker"), default="operator", help="key role (operator)")
    init.add_argument(
        "--key",
        help="private key path (default: CANARY_OPERATOR_KEY / CANARY_WORKER_KEY, or ~/.cache/canary/keys/ROLE.key)",
    )
    init.add_argument(
        "--trusted-dir", help="trusted keys directory (default CANARY_TRUSTED_KEYS_DIR or ~/.cache/canary/trusted-keys)"
    )
    init.add_argument("--name", help="a name for the key in the trusted directory (default ROLE:user@host)")
    init.add_argument("--force", action="store_true", help="replace an existing key file with a new key")
    init.set_defaults(handler=cmd_keys_init)
    lst = ksub.add_parser("list", help="list the trusted public keys (and whether this machine's keys are among them)")
    lst.add_argument("--trusted-dir", help="trusted keys directory (default CANARY_TRUSTED_KEYS_DIR)")
    lst.set_defaults(handler=cmd_keys_list)
    for p in (init, lst):
        p.add_argument("--json", action="store_true", help="machine-readable output")
