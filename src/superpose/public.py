"""The public surface: every name ``import superpose`` offers is served from here.

``connect()`` lives here, above both the client and ``local/``: with no lattice to
find it starts one on this machine, and the client layer itself never starts
processes. Importing this module installs ``connect`` as the way a call with no
client opens one (``client/session.py``).
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import threading
from pathlib import Path

from superpose import config
from superpose.client import session
from superpose.client.client import Client as Client
from superpose.client.functions import Function as Function
from superpose.client.functions import LinkedApp as LinkedApp
from superpose.client.functions import RemoteFunction as RemoteFunction
from superpose.client.functions import function as function
from superpose.client.functions import use as use
from superpose.client.futures import ALL_COMPLETED as ALL_COMPLETED
from superpose.client.futures import FIRST_COMPLETED as FIRST_COMPLETED
from superpose.client.futures import FIRST_EXCEPTION as FIRST_EXCEPTION
from superpose.client.futures import Future as Future
from superpose.client.futures import as_completed as as_completed
from superpose.client.futures import gather as gather
from superpose.client.futures import wait as wait
from superpose.client.memo import UncachedWarning as UncachedWarning
from superpose.client.refs import get as get
from superpose.client.refs import put as put
from superpose.client.replies import LogSink, print_log_record
from superpose.client.shared_dict import Dict as Dict
from superpose.client.shared_queue import Queue as Queue
from superpose.code.schedules import Cron as Cron
from superpose.code.schedules import Period as Period
from superpose.errors import ArgumentError as ArgumentError
from superpose.errors import CallTimeoutError as CallTimeoutError
from superpose.errors import DeployError as DeployError
from superpose.errors import LatticeError as LatticeError
from superpose.errors import NoNodesError as NoNodesError
from superpose.errors import NotFoundError as NotFoundError
from superpose.errors import ObjectLostError as ObjectLostError
from superpose.errors import RemoteError as RemoteError
from superpose.errors import SerializationError as SerializationError
from superpose.errors import SuperposeError as SuperposeError
from superpose.errors import UntrustedError as UntrustedError
from superpose.errors import UpstreamError as UpstreamError
from superpose.errors import UserError as UserError
from superpose.lattice.refs import Ref as Ref
from superpose.runtime import on_start as on_start
from superpose.support import eventloop

# The names re-exported with ``as`` are those of ``superpose.__all__`` (kept there).


def connect(
    url: str | None = None,
    *,
    workers: int = 2,
    show_logs: bool = True,
    tls_ca: str | Path | None = None,
    creds: str | Path | None = None,
    tenant: str | None = None,
) -> Client:
    """Connect to a lattice, starting a private embedded one if none is running.

    Order: ``url``, ``$SUPERPOSE_LATTICE``, the lattice ``superpose up`` started
    in ``$SUPERPOSE_HOME``, else an embedded lattice with ``workers`` nodes that
    is torn down when the client closes (or the process exits). A URL may list a
    cluster's servers separated by commas. ``tls_ca``: the CA certificate a
    ``tls://`` lattice is checked against (else ``$SUPERPOSE_TLS_CA``, the CA of
    the ``superpose up`` that serves that URL, or the system's trust store).
    ``creds``: the NATS credentials file (else ``$SUPERPOSE_CREDS``, else the one of
    the lattice found or started). ``tenant``: connect as that tenant (its admin creds
    in the lattice's state folder; else ``$SUPERPOSE_TENANT``): it sees only its own
    apps, calls and results.
    """
    if url is not None:
        config.lattice_servers(url)
    node = session.node_client()
    if node is not None:
        return node
    with session.lock:
        default = session.default_client()
        asked_for_more = creds is not None or tls_ca is not None  # never silently ignored
        if (
            default is not None
            and url in (None, default.url)
            and default.tenant == tenant
            and not asked_for_more
        ):
            return default
        sink = print_log_record if show_logs else None
        client = open_in_thread(
            url, workers, sink, tls_ca, Path(creds) if creds else None, tenant=tenant
        )
        session.set_default(client)
        atexit.register(client.close)
        return client


def open_in_thread(
    url: str | None,
    workers: int,
    log_sink: LogSink | None,
    tls_ca: str | Path | None = None,
    creds: Path | None = None,
    *,
    tenant: str | None = None,
) -> Client:
    """A client on a loop of its own, in a daemon thread: the sync facade's home.
    With no lattice to find, an embedded one is started and stopped with the client."""
    from superpose.local.lattice import LocalLattice
    from superpose.local.state import find_running_lattice

    loop = eventloop.new_loop()
    thread = threading.Thread(target=loop.run_forever, name="superpose-client", daemon=True)
    thread.start()

    async def open_client() -> Client:
        found = config.settings()
        resolved = url or found.lattice or find_running_lattice(found.home)
        lattice = None
        if resolved is None:
            if tenant is not None:
                raise UserError(
                    f"tenant {tenant!r}: no lattice is running to find it on (a private "
                    "lattice has no tenants); start one with `superpose up`"
                )
            lattice = LocalLattice(state_dir=None, workers=workers)
            resolved = await lattice.start()
            _tell_private_lattice(found.home)
        try:
            # A lattice of our own: its creds, whatever $SUPERPOSE_CREDS names.
            own = lattice.admin_creds if lattice is not None else creds
            if own is None and tenant is not None:
                from superpose.security.lookup import tenant_creds

                own = tenant_creds(resolved, tenant)
            client = await Client.open(resolved, log_sink=log_sink, tls_ca=tls_ca, creds=own)
            client.tenant = tenant
        except BaseException:
            if lattice is not None:
                await lattice.stop()
            raise
        if lattice is not None:
            client.close_first(lattice.stop)
        return client

    try:
        client = asyncio.run_coroutine_threadsafe(open_client(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        raise

    def stop_thread() -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    client.after_close = stop_thread
    return client


_told_private = False


def _tell_private_lattice(home: Path) -> None:
    """Say it once per process: a user whose ``superpose up`` ran in another folder
    would otherwise get a private lattice without knowing, and wonder where their
    deployed apps went."""
    global _told_private
    if _told_private:
        return
    _told_private = True
    print(
        f"superpose: no lattice found ({config.ENV_LATTICE} unset, no `superpose up` "
        f"running in {home}); started a private one for this process. To use a running "
        f"lattice, set {config.ENV_LATTICE} or run from the folder where `superpose up` ran",
        file=sys.stderr,
        flush=True,
    )


session.install_connector(connect)
