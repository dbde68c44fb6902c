"""The identities of one lattice, made once in its state folder and reused on restarts.

Layout (folders 0700, files 0600)::

    keys/operator.nk      the operator's seed: signs the accounts
    keys/SYS.nk           the system account's seed (the server's own traffic)
    keys/SP.nk            the lattice account's seed: signs its users, so more can be
                          minted later (per-role permissions)
    keys/executors.nk     a scoped signing key of SP: executors' users (a copy is
                          creds/executor-signer.nk, beside node.creds)
    creds/<role>.creds    one user per role (admin, node, gateway)

The servers are told the operator and the accounts (``ServerAuth.config_text``);
users are not listed anywhere: the server trusts any user JWT its account signed.
A tenant is one more account, and a narrower user is ``mint_user`` with permissions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from superpose.errors import LatticeError
from superpose.security import executor_identity, jwt, nkeys, node_signers, revocations, roles
from superpose.security.creds import read_creds, write_creds
from superpose.security.files import private_dir, write_private
from superpose.security.nkeys import KeyKind

OPERATOR = "operator"
SYSTEM_ACCOUNT = "SYS"
LATTICE_ACCOUNT = "SP"
"""The account every superpose subject, stream and bucket lives in."""
ROLES = ("admin", "node", "gateway")
"""admin: the CLI, ``sp.connect()`` and the supervisor; node: node agents (and, for
now, their executors); gateway: the HTTP gateway. Each has its role's permissions
(``security/roles.py``); ``superpose creds create`` mints narrower users."""
KEYS_DIR = "keys"
CREDS_DIR = "creds"


@dataclass(frozen=True)
class ServerAuth:
    """What a nats-server needs to know to check credentials (operator mode)."""

    operator_jwt: str
    system_account: str
    account_jwts: dict[str, str] = field(default_factory=dict)
    """Public key → JWT of every account the server accepts (the system one too)."""

    def config_text(self) -> str:
        preload = "".join(f"  {key}: {token}\n" for key, token in self.account_jwts.items())
        return (
            f"operator: {self.operator_jwt}\n"
            f"system_account: {self.system_account}\n"
            "resolver: MEMORY\n"
            f"resolver_preload: {{\n{preload}}}\n"
        )


@dataclass(frozen=True)
class Identities:
    """A lattice's keys on disk; ``creds(role)`` is the file a process connects with."""

    state_dir: Path
    auth: ServerAuth

    def creds(self, role: str = "admin") -> Path:
        path = self.state_dir / CREDS_DIR / f"{role}.creds"
        if not path.exists():
            raise LatticeError(f"no credentials for the role {role!r} in {path.parent}")
        return path

    def mint_user(
        self,
        name: str,
        *,
        account: str = LATTICE_ACCOUNT,
        permissions: dict[str, Any] | None = None,
        path: Path | None = None,
    ) -> Path:
        """A new user of ``account`` with ``permissions`` (everything if None), written to
        ``path`` (default ``creds/<name>.creds``); each call makes a new key."""
        user_seed = nkeys.new_seed(KeyKind.USER)
        token = jwt.user(
            _seed(self.state_dir, account, KeyKind.ACCOUNT),
            nkeys.public_key(user_seed),
            name=name,
            permissions=permissions,
        )
        if path is None:
            path = private_dir(self.state_dir / CREDS_DIR) / f"{name}.creds"
        return write_creds(path, token, user_seed)


def load_or_create(state_dir: Path) -> Identities:
    """The lattice's identities in ``state_dir``: the keys are made at the first start
    and read on every later one (clients' creds stay valid across restarts)."""
    private_dir(state_dir)
    operator_seed = _seed(state_dir, OPERATOR, KeyKind.OPERATOR)
    system_seed = _seed(state_dir, SYSTEM_ACCOUNT, KeyKind.ACCOUNT)
    lattice_seed = _seed(state_dir, LATTICE_ACCOUNT, KeyKind.ACCOUNT)
    executor_signer = _seed(state_dir, executor_identity.KEY_NAME, KeyKind.ACCOUNT)
    system = nkeys.public_key(system_seed)
    lattice = nkeys.public_key(lattice_seed)
    auth = ServerAuth(
        operator_jwt=jwt.operator(operator_seed, name="superpose", system_account=system),
        system_account=system,
        account_jwts={
            system: jwt.account(operator_seed, system, name=SYSTEM_ACCOUNT, jetstream=False),
            lattice: _lattice_account(state_dir, operator_seed, lattice, executor_signer),
        },
    )
    identities = Identities(state_dir, auth)
    for role in ROLES:
        wanted = roles.permissions(role, owner=role)
        if not _has_permissions(state_dir / CREDS_DIR / f"{role}.creds", wanted):
            identities.mint_user(role, permissions=wanted)
    # Beside node.creds: nodes mint their executors' users with it (executor_identity.py).
    creds_dir = private_dir(state_dir / CREDS_DIR)
    write_private(creds_dir / executor_identity.SIGNER_FILE, executor_signer + "\n")
    return identities


def _lattice_account(state_dir: Path, operator_seed: str, lattice: str, signer_seed: str) -> str:
    """The ``SP`` account's JWT: JetStream on, the executors' scoped signing keys (the
    lattice's own and one per minted node, ``security/node_signers.py``), and the users
    ``superpose creds revoke`` revoked (``security/revocations.py``)."""
    keys_dir = state_dir / KEYS_DIR
    signers = [nkeys.public_key(signer_seed), *sorted(node_signers.load(keys_dir).values())]
    return jwt.account(
        operator_seed,
        lattice,
        name=LATTICE_ACCOUNT,
        jetstream=True,
        signing_keys=[executor_identity.signing_key_entry(key) for key in signers],
        revocations=revocations.load(keys_dir),
    )


def with_current_account(identities: Identities) -> Identities:
    """``identities`` whose ``SP`` account JWT lists the revocations and node signers now
    on disk, re-signed only if they changed: a reload then changes nothing for the
    account otherwise (a changed signer list closes the connections of the users a
    dropped key signed, and only those)."""
    state_dir = identities.state_dir
    lattice = nkeys.public_key(_seed(state_dir, LATTICE_ACCOUNT, KeyKind.ACCOUNT))
    operator_seed = _seed(state_dir, OPERATOR, KeyKind.OPERATOR)
    signer = _seed(state_dir, executor_identity.KEY_NAME, KeyKind.ACCOUNT)
    token = _lattice_account(state_dir, operator_seed, lattice, signer)
    wanted = jwt.claims_of(token)["nats"]
    current = identities.auth.account_jwts.get(lattice)
    if current is not None:
        now = jwt.claims_of(current)["nats"]
        if all(now.get(k) == wanted.get(k) for k in ("revocations", "signing_keys")):
            return identities
    accounts = {**identities.auth.account_jwts, lattice: token}
    return replace(identities, auth=replace(identities.auth, account_jwts=accounts))


def _has_permissions(path: Path, wanted: dict[str, Any] | None) -> bool:
    """Whether the creds at ``path`` exist with ``wanted`` permissions: a state folder
    from before roles (or from an older table) gets its role users minted again."""
    if not path.exists():
        return False
    claims = jwt.claims_of(read_creds(path)[0]).get("nats", {})
    want = wanted or {"pub": {}, "sub": {}}
    return all(claims.get(key) == value for key, value in want.items())


def _seed(state_dir: Path, name: str, kind: KeyKind) -> str:
    """The seed kept in ``keys/<name>.nk``, made there if it is not yet."""
    path = private_dir(state_dir / KEYS_DIR) / f"{name}.nk"
    if path.exists():
        seed = path.read_text().strip()
        try:
            public = nkeys.public_key(seed)
        except LatticeError as exc:
            raise LatticeError(f"{path}: {exc.message}; restore it from a backup") from exc
        if public[0] != kind.name[0]:
            raise LatticeError(f"{path} holds a key of the wrong kind (not an {kind.name} seed)")
        return seed
    seed = nkeys.new_seed(kind)
    write_private(path, seed + "\n")
    return seed
