"""The client's part of lineage (``lattice/lineage.py``): record what made an object
put inside a function, and run that again when a reader finds the object lost.

Recording happens on the producer's side, in ``sp.put``: one sealed KV write per
object put by a call (the call's record is built once). A call whose arguments were
offered by its caller (a direct call's, over 256 KiB) has them written to
``sp_blobs`` once, so the record outlives the caller, whose offer dies with it; a
durable call's spilled arguments are already there (25 h) and are pointed to.
Re-running happens on the reader's side, through the client of the reader's
connection: a direct call of the same version (bundle digest and environment),
function and arguments.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS

from superpose import protocol, runtime
from superpose.client import session
from superpose.client.options import Options
from superpose.errors import ObjectLostError
from superpose.lattice import lineage, payload, refs
from superpose.lattice.refs import Ref
from superpose.registry.mirror import Target

if TYPE_CHECKING:
    from superpose.client.client import Client

_clients: weakref.WeakKeyDictionary[NATS, Client] = weakref.WeakKeyDictionary()
"""Each connection's client: a lost object is remade through the reader's own."""


def install(client: Client) -> None:
    """From this client's start, objects its readers find lost go to lineage."""
    _clients[client.nc] = client
    refs.recover_with(_recover)


async def _recover(nc: NATS, ref: Ref, lost: ObjectLostError) -> bytes | bytearray:
    client = _clients.get(nc) or session.current_client()

    async def rerun(invocation: protocol.Invocation, raw: protocol.Buffer) -> Any:
        return await _rerun(client, invocation, raw)

    return await lineage.remake(nc, ref, lost, rerun)


async def _rerun(client: Client, inv: protocol.Invocation, raw: protocol.Buffer) -> Any:
    """``inv`` run again as a new direct call of the same version; its decoded result."""
    recorded: dict[str, Any] = {}
    if inv.settings is not None:
        recorded = {"secrets": list(inv.settings.secrets), "env": dict(inv.settings.env)}
    target = Target(
        app=inv.app,
        fn=inv.fn,
        digest=inv.digest,
        module=inv.module,
        qualname=inv.qualname,
        options=recorded,
        env=inv.env,
    )
    options = Options(timeout=inv.timeout_s, memory=inv.memory_mb)
    return await client.submit_raw(target, bytes(raw), inv.args.codec, options)


async def put_recorded(nc: NATS, put: Any, call: runtime.Invocation | None) -> Ref:
    """``put``'s Ref; when it was made by a call and is held (not inline, not durable),
    what made it is recorded first."""
    ref: Ref = await put
    if call is not None and not ref.durable and ref.blob is not None and ref.data is None:
        await lineage.record(nc, ref, await _record_of(nc, call))
    return ref


async def _record_of(nc: NATS, call: runtime.Invocation) -> protocol.LineageRecord:
    """The call's lineage record, made on its first put: its invocation with arguments
    that outlive it (inline, in ``sp_blobs`` already, or written there once)."""
    if call.lineage is not None:
        return call.lineage
    function = f"{call.app}.{call.fn}"
    inv = call.call
    if not call.idempotent or inv is None:
        call.lineage = protocol.LineageRecord(function=function, idempotent=False)
        return call.lineage
    args = inv.args
    if args.source is not None:  # offered by its caller: dies with the caller
        if call.raw_args is None:  # not kept: cannot run it again
            call.lineage = protocol.LineageRecord(function=function, idempotent=False)
            return call.lineage
        args = await payload.wrap(nc, bytes(call.raw_args), args.codec)
    again = msgspec.structs.replace(inv, args=args)
    call.lineage = protocol.LineageRecord(
        function=function, idempotent=True, invocation=again.encode()
    )
    return call.lineage
