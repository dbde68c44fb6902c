"""The lattice's trusted deployer keys (``sp_trust``), mirrored, and the verdicts they give.

Every reader that routes to a version (clients, the gateway, executors making nested
calls) and every node that loads code keeps this mirror beside the registry's. A
record is *trusted* when it carries a valid signature by a key in the bucket; the
verdict is cached per record and generation of the key set, so a warm call verifies
nothing. Who may write the bucket is the lattice's NATS permissions' business: until
they narrow it, a process with raw NATS access can add its own key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from superpose import protocol
from superpose.errors import NotFoundError, UserError
from superpose.lattice import signing
from superpose.lattice.mirror import BucketMirror

log = logging.getLogger("superpose.trust")
UNSIGNED = "unsigned"


@dataclass(frozen=True)
class Verdict:
    """Why a record is not trusted (``ok`` False), or that it is."""

    ok: bool
    signer: str
    """The key that signed it ("" when unsigned)."""
    reason: str
    """``trusted``, ``unsigned``, ``signed by an untrusted key U…``, ``bad signature by U…``."""

    @property
    def signed_by(self) -> str:
        """The signer for people: its public key, or ``unsigned``."""
        return self.signer or UNSIGNED


class TrustedKeys(BucketMirror):
    """Mirror of ``sp_trust`` plus the writes ``superpose key`` and ``up`` need."""

    what = "trust"

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self.keys: dict[str, protocol.TrustedKey] = {}
        self.generation = 0
        """Bumped on every change: cached verdicts of an older generation are stale."""
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _apply(self, key: str, value: bytes | None, deleted: bool) -> None:
        if deleted or not value:
            self.keys.pop(key, None)
        else:
            try:
                self.keys[key] = protocol.TrustedKey.from_json(value)
            except protocol.ProtocolError as exc:
                log.warning("skipping trusted key %s: %s", key, exc)
                return
        self.generation += 1
        for listener in self._listeners:
            listener()

    # --- verdicts ----------------------------------------------------------------

    def verdict(self, signer: str, statement: bytes, sig: str) -> Verdict:
        if not signer or not sig:
            return Verdict(False, "", UNSIGNED)
        if signer not in self.keys:
            return Verdict(False, signer, f"signed by an untrusted key {signer}")
        if not signing.verify(signer, statement, sig):
            return Verdict(False, signer, f"bad signature by {signer}")
        return Verdict(True, signer, "trusted")

    def bundle_verdict(self, digest: str, manifest: protocol.BundleManifest) -> Verdict:
        """Trusted if any trusted key signed the bundle's digest; else why not."""
        signers = sorted(manifest.signatures.items(), key=lambda kv: kv[0] not in self.keys)
        verdicts = [self.verdict(k, protocol.bundle_statement(digest, k), s) for k, s in signers]
        trusted = [v for v in verdicts if v.ok]
        return (trusted or verdicts or [Verdict(False, "", UNSIGNED)])[0]

    # --- writes ------------------------------------------------------------------

    async def trust(self, public_key: str, name: str = "") -> None:
        signing.check_public_key(public_key)
        record = protocol.TrustedKey(name=name, added=time.time())
        await self.kv.put(public_key, record.as_json())
        self._apply(public_key, record.as_json(), False)

    async def untrust(self, public_key: str) -> None:
        signing.check_public_key(public_key)
        if public_key not in self.keys:
            raise NotFoundError(
                f"{public_key} is not a trusted deployer key (see `superpose key ls`)"
            )
        await self.kv.purge(public_key)
        self._apply(public_key, None, True)

    async def ensure_trusted(self, signer: signing.Signer, lattice: str) -> None:
        if signer.public_key not in self.keys:
            await ensure_trusted(self.kv, signer, lattice)
            self.keys.setdefault(signer.public_key, protocol.TrustedKey(name="first deployer"))
            self.generation += 1


async def ensure_trusted(kv: KeyValue, signer: signing.Signer, lattice: str) -> None:
    """Before signing anything: the key must be trusted, or be the first the lattice has
    (trust on first use, so a lattice nobody set up with ``up`` still takes deploys).
    One read of the bucket, no mirror: script mode checks this once per process."""
    key = signer.public_key
    try:
        await kv.get(key)
        return
    except KeyNotFoundError:
        pass
    if (await kv.status()).values == 0:
        try:
            record = protocol.TrustedKey(name="first deployer", added=time.time())
            await kv.create(key, record.as_json())
            log.warning("the lattice trusted no deployer key: it now trusts %s", key)
            return
        except KeyWrongLastSequenceError:
            pass
    raise UserError(
        f"your deployer key {key} is not trusted by the lattice at {lattice}: ask someone "
        f"whose key is to run `superpose key trust {key} --name NAME`, or use a trusted "
        "key (`--key FILE`)"
    )
