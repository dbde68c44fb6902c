"""``superpose creds create|ls|revoke``: users of a role, minted with the lattice's
account key.

Minting needs the account's seed (``keys/SP.nk``), so it runs where ``superpose up``
runs, in its state folder; nothing is asked of the server (it trusts any user its
account signed). What was minted is listed in ``creds/index.json`` (names, roles,
apps, when, public keys; never a seed), so ``creds ls`` can show it and ``creds
revoke`` knows which key to revoke (``security/revocations.py``). A node user also
gets an executor signer of its own, written beside its creds and listed in the account
(``security/node_signers.py``): a running lattice must reload its accounts before the
node's executors can connect (``cli/creds.py`` asks for it).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from superpose import protocol
from superpose.errors import BadRequestError, LatticeError, UserError
from superpose.security import executor_identity, jwt, nkeys, node_signers, revocations, roles
from superpose.security.creds import read_creds
from superpose.security.files import private_dir, write_private
from superpose.security.identities import CREDS_DIR, KEYS_DIR, LATTICE_ACCOUNT, load_or_create
from superpose.security.nkeys import KeyKind

INDEX = "index.json"


@dataclass(frozen=True)
class Minted:
    """One user ``creds create`` made (the index's row)."""

    name: str
    role: str
    app: str | None
    created: float
    path: str
    public_key: str = ""
    """The user's ``U…`` key ("" in rows written before revocation: read from ``path``)."""


def check_role(role: str) -> str:
    if role not in roles.MINTABLE:
        raise BadRequestError(
            f"--role {role!r} is not a role creds can be made for: use one of "
            f"{', '.join(roles.MINTABLE)} (admin is `superpose up`'s own)"
        )
    return role


def check_app(role: str, app: str | None) -> str | None:
    if app is None:
        return None
    if not protocol.is_valid_name(app):
        raise BadRequestError(f"--app {app!r} is not an app name ({protocol.NAME_PATTERN})")
    if role == "node":
        raise BadRequestError("--app does not apply to --role node: a node serves every app")
    return app


def check_name(name: str | None, role: str) -> str:
    """The user's name, which its clients' ids start with (so: a NATS token)."""
    if name is None:
        return f"{role}-{secrets.token_hex(4)}"
    if roles.owner_of_name(name) is None or name in roles.ROLES:
        raise BadRequestError(
            f"--name {name!r} cannot name a user: letters, digits, _ and -, at most "
            f"{roles.OWNER_MAX_CHARS}, and not a role's own name"
        )
    return name


def create(
    state_dir: Path, role: str, *, app: str | None, name: str | None, out: Path | None
) -> Minted:
    """Mint a user of ``role`` (limited to ``app``) into ``out`` (default
    ``creds/<name>.creds``) and record it in the index."""
    role = check_role(role)
    app, name = check_app(role, app), check_name(name, role)
    _require_keys(state_dir)
    listed = listing(state_dir)
    if any(m.name == name for m in listed):
        raise BadRequestError(f"--name {name!r} is taken: `superpose creds ls` lists the users")
    if out is None and role == "node":  # the pair in a folder of its own, ready to copy
        out = private_dir(state_dir / CREDS_DIR / name)
    path = (out or state_dir / CREDS_DIR).absolute()
    if path.is_dir():  # --out DIR: the file is named after the user
        path = path / f"{name}.creds"
    if path.exists():
        raise BadRequestError(f"{path} exists: creds are never overwritten; choose another --out")
    if not path.parent.is_dir():
        raise BadRequestError(f"--out {out}: no folder {path.parent}")
    identities = load_or_create(state_dir)
    signer = nkeys.new_seed(KeyKind.ACCOUNT) if role == "node" else None
    if signer is not None:
        _check_signer_slot(path.parent / executor_identity.SIGNER_FILE)
    permissions = roles.permissions(role, owner=name, app=app)
    identities.mint_user(name, permissions=permissions, path=path)
    public_key = str(jwt.claims_of(read_creds(path)[0])["sub"])
    minted = Minted(
        name=name, role=role, app=app, created=time.time(), path=str(path), public_key=public_key
    )
    _write_index(state_dir, [*listed, minted])
    if signer is not None:  # a worker given this folder mints its executors' users
        write_private(path.parent / executor_identity.SIGNER_FILE, signer + "\n")
        node_signers.add(state_dir / KEYS_DIR, name, nkeys.public_key(signer))
    return minted


def _check_signer_slot(path: Path) -> None:
    """Each node's creds go beside an executor signer of its own: an
    ``executor-signer.nk`` already there (another node's, another lattice's) is never
    overwritten."""
    if path.exists():
        raise BadRequestError(
            f"{path} holds another node's executor signer (each node has its own, and "
            "it is never overwritten): choose another --out folder for this node's creds"
        )


def revoke(state_dir: Path, name: str) -> Minted:
    """Revoke the user ``create`` minted as ``name``: its key joins the account JWT's
    revocations (kept across restarts). Revoking it again changes nothing. A running
    lattice applies it on its next account reload (``cli/creds.py`` asks for one)."""
    _require_keys(state_dir)
    listed = listing(state_dir)
    minted = next((m for m in listed if m.name == name), None)
    if minted is None:
        known = ", ".join(m.name for m in listed) or "none yet"
        raise BadRequestError(
            f"no user named {name!r} was minted in {state_dir} (users: {known}); "
            "`superpose creds ls` lists them"
        )
    revocations.add(state_dir / KEYS_DIR, public_key_of(minted))
    node_signers.remove(state_dir / KEYS_DIR, minted.name)  # its executors go with it
    return minted


def revoked(state_dir: Path) -> dict[str, int]:
    """The revoked users' public keys → since when (unix seconds)."""
    return revocations.load(state_dir / KEYS_DIR)


def public_key_of(minted: Minted) -> str:
    """The user's public key: from the index, or from its creds file for older rows."""
    if minted.public_key:
        return minted.public_key
    try:
        return str(jwt.claims_of(read_creds(Path(minted.path))[0])["sub"])
    except (OSError, LatticeError) as exc:
        raise UserError(
            f"user {minted.name!r}: its public key is not in the index and its creds file "
            f"{minted.path} cannot be read ({exc}); it cannot be revoked by name"
        ) from exc


def listing(state_dir: Path) -> list[Minted]:
    """What ``create`` minted here, oldest first."""
    path = state_dir / CREDS_DIR / INDEX
    try:
        rows = json.loads(path.read_text())
        return [Minted(**row) for row in rows]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path} is not a creds index ({exc}); fix or remove it") from exc


def _write_index(state_dir: Path, minted: list[Minted]) -> None:
    folder = private_dir(state_dir / CREDS_DIR)
    write_private(folder / INDEX, json.dumps([asdict(m) for m in minted], indent=2) + "\n")


def _require_keys(state_dir: Path) -> None:
    """Minting signs with the account's key: only where the lattice was made."""
    key = state_dir / KEYS_DIR / f"{LATTICE_ACCOUNT}.nk"
    if not key.is_file():
        raise UserError(
            f"no lattice account key in {key.parent}: creds are made where `superpose up` "
            "runs (its state folder, SUPERPOSE_HOME), with the key it made there"
        )
