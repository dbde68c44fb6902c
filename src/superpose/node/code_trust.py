"""A node loads only code a trusted deployer key signed.

An invocation names a bundle digest; before the node fetches or loads that bundle it
reads the bundle's manifest and checks that a key in ``sp_trust`` signed the digest
(``code/signing_manifest.py``). Script bundles carry no registry record, so the
manifest is the one place every bundle's signature can be found, and a node reads it
anyway: the check costs one small object read and one Ed25519 verify per cold load of
a digest, and nothing on a warm call (the verdict is kept until the keys change).
"""

from __future__ import annotations

import logging

from nats.aio.client import Client as NATS

from superpose import protocol
from superpose.code import signing_manifest, store
from superpose.errors import NotFoundError
from superpose.node.executor_process import LoadFailed
from superpose.registry.trust import TrustedKeys, Verdict
from superpose.support.retry import retry

log = logging.getLogger("superpose.node")
TRUSTED = Verdict(True, "", "trusted")


class CodeTrust:
    def __init__(self, trust: TrustedKeys) -> None:
        self.trust = trust
        self._verified: dict[str, int] = {}
        """digest → the generation of the trusted keys it was verified under."""

    async def check(self, nc: NATS, inv: protocol.Invocation, within_s: float) -> None:
        """Return if a trusted key signed ``inv.digest``; else LoadFailed (kind
        ``prepare``, type ``UntrustedCode``) naming the code and who signed it."""
        try:
            verdict = await self.verdict(nc, inv.digest, within_s)
        except NotFoundError as exc:
            raise LoadFailed(
                protocol.ErrorInfo(protocol.ERR_NOT_FOUND, "NotFound", exc.message)
            ) from None
        if not verdict.ok:
            log.warning("✗ refused bundle %s (%s): %s", inv.digest[:12], inv.app, verdict.reason)
            raise LoadFailed(
                protocol.ErrorInfo(
                    protocol.ERR_PREPARE,
                    "UntrustedCode",
                    f"{inv.app}.{inv.fn} was not run: its code (bundle {inv.digest[:12]}) is "
                    f"{verdict.reason}, not by a trusted deployer key, so the node did not "
                    "load it (`superpose key ls` lists the trusted keys)",
                )
            )

    async def verdict(self, nc: NATS, digest: str, within_s: float) -> Verdict:
        """Whether a trusted key signed ``digest``: the manifest read (through a failover,
        for up to ``within_s``) unless the verdict is known for these keys already."""
        await self.trust.start()  # synced once; calls may arrive before the agent's watches
        if self._verified.get(digest) == self.trust.generation:
            return TRUSTED
        manifest = await retry(
            lambda: signing_manifest.fetch(nc, digest),
            backoff=store.FETCH_RETRY,
            within_s=within_s,
            retry_on=store.UNAVAILABLE,
        )
        verdict = self.trust.bundle_verdict(digest, manifest)
        if verdict.ok:
            self._verified[digest] = self.trust.generation
        return verdict
