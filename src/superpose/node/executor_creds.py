"""The node's side of executor identities: a new NATS user for each executor it starts.

The node finds the executors' signer beside the creds it connects with
(``security/executor_identity.py``) and writes each executor's creds into a folder
only the node can read; a sandboxed executor gets a copy in its own private folder
(``sandbox.executor_env``). The file goes when the executor does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

from superpose.security.executor_identity import ExecutorCreds, ExecutorSigner, signer_beside
from superpose.security.files import private_dir
from superpose.security.lookup import find_creds

log = logging.getLogger("superpose.node")


class ExecutorIdentities:
    """Mints executors' users for one node (one lattice URL)."""

    def __init__(self, signer: ExecutorSigner | None) -> None:
        self._signer = signer
        self._folder: Path | None = None

    @classmethod
    def for_lattice(cls, lattice: str) -> ExecutorIdentities:
        """With the signer beside the node's creds; without one (a lattice with no
        credentials, or a worker given only node.creds) executors connect as the node."""
        creds = find_creds(lattice)
        signer = signer_beside(creds) if creds is not None else None
        if creds is not None and signer is None:
            log.warning(
                "no executor signer beside %s: executors connect with the node's own "
                "credentials (copy the lattice's creds/executor-signer.nk there)",
                creds,
            )
        return cls(signer)

    def mint(self) -> ExecutorCreds | None:
        """A new executor's creds, or None: it connects with the node's."""
        if self._signer is None:
            return None
        if self._folder is None:
            self._folder = private_dir(Path(tempfile.mkdtemp(prefix="superpose-executors-")))
        return self._signer.mint_file(self._folder)

    def mint_app(self, own: ExecutorCreds | None, host: str, app: str) -> str:
        """Creds text for the *app user* of the executor whose own user is ``own``:
        ``host``'s express calls and ``app``'s dicts, queues and cache entries (handed
        over in its ``Load`` frame, never written), or "" when it has none of its own:
        it connects as the node, which may do all of it."""
        if self._signer is None or own is None:
            return ""
        return self._signer.mint_app(own.executor_id, host, app)

    @staticmethod
    def discard(creds: ExecutorCreds | None) -> None:
        """Remove an executor's creds file once it has stopped."""
        if creds is not None:
            with contextlib.suppress(OSError):
                creds.path.unlink()

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


_by_lattice: dict[str, ExecutorIdentities] = {}


def identities_for(lattice: str) -> ExecutorIdentities:
    """This process's minter for ``lattice`` (made on first use)."""
    if lattice not in _by_lattice:
        minter = _by_lattice[lattice] = ExecutorIdentities.for_lattice(lattice)
        atexit.register(minter.close)  # executors leave by os._exit: only the node runs it
    return _by_lattice[lattice]
