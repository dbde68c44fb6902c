"""Tenants: one NATS account each, beside the lattice's own account ``SP``.

An account is NATS's unit of isolation: subjects, JetStream streams, key-value
buckets and object stores of one account do not exist for another (no exports or
imports are ever made between them). So a tenant's apps, results, logs and bundles
are invisible to every other tenant without a line of superpose code checking
anything: a lookup from another tenant finds nothing, exactly as for a name or an id
that was never made.

Layout in the lattice's state folder (folders 0700, files 0600)::

    keys/tenants/<name>.nk        the tenant account's seed (signs its users)
    keys/tenants/executors/<name>.nk
                                  its scoped signing key for executors' users
    creds/<name>/<role>.creds     one user per role (admin, node, gateway)
    creds/<name>/executor-signer.nk
                                  a copy of that key beside the tenant's node.creds

A tenant's executors are narrowed as the lattice's own are (``executor_identity``):
its account lists a scoped key with the executor template, and its nodes mint each
executor a user of its own with it.

The servers learn the accounts from ``with_tenants`` (the operator signs each one's
JWT, JetStream on); users need no server change: any user JWT its account signed
is accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from superpose.errors import UserError
from superpose.security import executor_identity, jwt, nkeys, roles
from superpose.security.creds import write_creds
from superpose.security.files import private_dir, write_private
from superpose.security.identities import (
    CREDS_DIR,
    KEYS_DIR,
    LATTICE_ACCOUNT,
    OPERATOR,
    ROLES,
    SYSTEM_ACCOUNT,
    Identities,
)
from superpose.security.nkeys import KeyKind

TENANTS_DIR = "tenants"
"""Under ``keys/``: one seed per tenant account."""
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
RESERVED = frozenset({LATTICE_ACCOUNT.lower(), SYSTEM_ACCOUNT.lower(), OPERATOR, "default"})
"""Names that would read as the lattice's own accounts."""


@dataclass(frozen=True)
class Tenant:
    """A tenant's account and where its users' creds are."""

    name: str
    account: str
    """The account's public key (``A…``)."""
    creds_dir: Path

    def creds(self, role: str = "admin") -> Path:
        return self.creds_dir / f"{role}.creds"


def check_name(name: str) -> str:
    """``name`` if it can name a tenant, else a UserError saying what a name takes."""
    if not NAME_RE.fullmatch(name):
        raise UserError(
            f"{name!r} is not a tenant name: 1 to 32 lowercase letters, digits, _ and -, "
            "starting with a letter"
        )
    if name in RESERVED:
        raise UserError(f"{name!r} is reserved for the lattice's own accounts: pick another name")
    return name


def _seed_path(state_dir: Path, name: str) -> Path:
    return state_dir / KEYS_DIR / TENANTS_DIR / f"{name}.nk"


def names(state_dir: Path) -> list[str]:
    """The tenants made in ``state_dir``, sorted."""
    folder = state_dir / KEYS_DIR / TENANTS_DIR
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.nk") if NAME_RE.fullmatch(p.stem))


def load(state_dir: Path, name: str) -> Tenant:
    """The tenant ``name`` of ``state_dir``; a UserError naming it if there is none."""
    check_name(name)
    path = _seed_path(state_dir, name)
    if not path.is_file():
        known = ", ".join(names(state_dir)) or "none yet"
        raise UserError(
            f"no tenant named {name!r} in {state_dir} (tenants: {known}); make it with "
            f"`superpose tenant create {name}` where `superpose up` runs"
        )
    account = nkeys.public_key(_read_seed(path))
    return Tenant(name, account, state_dir / CREDS_DIR / name)


def create(state_dir: Path, name: str) -> Tenant:
    """A new tenant: its account key and one user per role. A name already taken is a
    UserError, and nothing is changed then."""
    check_name(name)
    if not (state_dir / KEYS_DIR / f"{OPERATOR}.nk").is_file():
        raise UserError(
            f"{state_dir} holds no lattice (no {KEYS_DIR}/{OPERATOR}.nk): run `superpose tenant "
            "create` where `superpose up` runs, with its SUPERPOSE_HOME"
        )
    path = _seed_path(state_dir, name)
    if path.exists():
        raise UserError(f"a tenant named {name!r} already exists in {state_dir}")
    private_dir(path.parent)
    account_seed = nkeys.new_seed(KeyKind.ACCOUNT)
    creds_dir = private_dir(private_dir(state_dir / CREDS_DIR) / name)
    for role in ROLES:  # the users first: a seed on disk is what makes the tenant exist
        user_seed = nkeys.new_seed(KeyKind.USER)
        user = f"{name}-{role}"
        wanted = roles.permissions(role, owner=user)  # a tenant's roles are the lattice's
        token = jwt.user(account_seed, nkeys.public_key(user_seed), name=user, permissions=wanted)
        write_creds(creds_dir / f"{role}.creds", token, user_seed)
    _executor_signer(state_dir, name)
    write_private(path, account_seed + "\n")
    return Tenant(name, nkeys.public_key(account_seed), creds_dir)


def with_tenants(identities: Identities) -> Identities:
    """``identities`` whose servers also accept every tenant's account (JetStream on),
    signed by the lattice's operator. Accounts it has already are kept as they are: a
    reload then changes nothing for them."""
    state_dir = identities.state_dir
    operator_seed = _read_seed(state_dir / KEYS_DIR / f"{OPERATOR}.nk")
    accounts = dict(identities.auth.account_jwts)
    for name in names(state_dir):
        public = nkeys.public_key(_read_seed(_seed_path(state_dir, name)))
        if public not in accounts:
            signer_public = nkeys.public_key(_executor_signer(state_dir, name))
            signer = executor_identity.signing_key_entry(signer_public)
            accounts[public] = jwt.account(
                operator_seed, public, name=name, jetstream=True, signing_keys=[signer]
            )
    return replace(identities, auth=replace(identities.auth, account_jwts=accounts))


def _executor_signer(state_dir: Path, name: str) -> str:
    """The seed of ``name``'s executors' scoped key, made on first use (tenants made
    before executors were narrowed get one at the next start or reload), and its copy
    beside the tenant's node creds, where a node looks for it."""
    path = state_dir / KEYS_DIR / TENANTS_DIR / executor_identity.KEY_NAME / f"{name}.nk"
    if path.is_file():
        seed = _read_seed(path)
    else:
        seed = nkeys.new_seed(KeyKind.ACCOUNT)
        private_dir(path.parent)
        write_private(path, seed + "\n")
    beside = state_dir / CREDS_DIR / name / executor_identity.SIGNER_FILE
    if beside.parent.is_dir():
        write_private(beside, seed + "\n")
    return seed


def _read_seed(path: Path) -> str:
    seed = path.read_text().strip()
    nkeys.public_key(seed)  # a damaged file is a LatticeError here, not a server refusal
    return seed


def role_creds(tenant: Tenant, role: str) -> Path:
    """The creds file of ``tenant``'s ``role`` user; a UserError naming it if missing."""
    path = tenant.creds(role)
    if not path.is_file():
        raise UserError(
            f"tenant {tenant.name!r} has no credentials for the role {role!r} ({path} is "
            f"missing; the roles are {', '.join(ROLES)})"
        )
    return path
