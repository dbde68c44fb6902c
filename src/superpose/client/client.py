"""The client: a connection to the lattice that submits invocations and collects results.

Its core is asyncio on one loop — a background thread in scripts, the
executor's own loop on a node, the server's loop in the gateway — and the
sync facade hands work to that loop. ``Client`` is that facade: each job is a
collaborator of its own (names, scripts, placement, express routes, direct
calls with their reaper, durable calls, replies), and it wires them together
and keeps their lifecycle.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import FunctionType, TracebackType
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

from superpose import config, protocol, runtime
from superpose.client import dataflow, session, threads
from superpose.client.arguments import encode_arguments
from superpose.client.asked_names import AskedNames
from superpose.client.asked_placement import AskedPlacement
from superpose.client.direct import DirectCalls
from superpose.client.durable import wait_accepted
from superpose.client.durable_calls import DurableCalls
from superpose.client.express import ExpressRoutes
from superpose.client.functions import RemoteFunction
from superpose.client.futures import SERVING_LOOPS, Future
from superpose.client.names import Names
from superpose.client.options import Options
from superpose.client.placement import Placement
from superpose.client.refs import pin_sent, start_refs
from superpose.client.replies import LogSink, Replies
from superpose.client.resolving import lattice_platform, resolve_and_record
from superpose.client.scripts import ScriptBundles
from superpose.client.secrets import Secrets
from superpose.errors import SuperposeError
from superpose.lattice import payload, refs, signing
from superpose.lattice.connection import Assets, ensure_assets, open_assets, owner
from superpose.lattice.connection import connect as connect_nats
from superpose.lattice.offers import Offers
from superpose.registry.mirror import Registry, Target, split_name
from superpose.registry.placement import NodeDirectory
from superpose.registry.trust import ensure_trusted
from superpose.support.eventloop import on_loop

T = TypeVar("T")
CLOSE_WAIT_S = 2.0
CLOSED = "this superpose client is closed"


class Client:
    """The public surface of a connection: each method hands its job to the collaborator
    that does it, so callers need not know how the work is divided."""

    def __init__(
        self,
        nc: NATS,
        assets: Assets,
        loop: asyncio.AbstractEventLoop,
        *,
        url: str,
        log_sink: LogSink | None = None,
        client_id: str | None = None,
        names: Names | None = None,
    ) -> None:
        self.nc = nc
        self.assets = assets
        self.loop = loop
        SERVING_LOOPS.add(loop)  # a blocking wait on it would never end
        self.url = url
        self.tenant: str | None = None
        """The tenant ``sp.connect(tenant=)`` connected as (None: the lattice's account)."""
        self.id = client_id or protocol.client_id(owner(nc), uuid.uuid4().hex[:16])
        self.offers = Offers(nc, self.id)
        """Big arguments of this client's direct calls, until their nodes have pulled them."""
        self.after_close: Callable[[], None] | None = None
        """Run once the client is closed (the sync facade stops its loop's thread)."""
        self._closers: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        seq = itertools.count(1)
        self.key_file: Path | None = None
        """The deployer key writes and script bundles are signed with (``open(key=)``);
        None: the home folder's (``<home>/keys/deployer.seed``) if it has one, else the
        user's (``~/.superpose/keys/deployer.seed``, made on first use)."""
        self._signer: signing.Signer | None = None
        self._names = names or Names(assets.registry, loop, assets.trust, self.signer, url)
        self._scripts = ScriptBundles(nc, loop, self._script_env, self.trusted_signer)
        self._trusted = False
        # An executor's placement asks nodes, as its names do (client/asked_placement.py).
        placing = AskedPlacement if isinstance(names, AskedNames) else Placement
        self._placement = placing(nc, assets.nodes, self._names)
        self._express = ExpressRoutes(config.settings().express)
        self._direct = DirectCalls(
            nc,
            client_id=self.id,
            url=url,
            offers=self.offers,
            loop=loop,
            seq=seq,
            placement=self._placement,
            express=self._express,
        )
        self._durable = DurableCalls(  # numbered apart: see lattice/issued.py
            nc,
            assets,
            client_id=self.id,
            loop=loop,
            seq=itertools.count(1),
            placement=self._placement,
        )
        self._replies = Replies(self.id, self._direct, self._durable, log_sink)

    @property
    def log_sink(self) -> LogSink | None:
        """Where remote prints of this client's calls go (None: they are not sent here)."""
        return self._replies.log_sink

    @log_sink.setter
    def log_sink(self, sink: LogSink | None) -> None:
        self._replies.log_sink = sink

    # --- opening and closing ---------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        nc: NATS | None = None,
        log_sink: LogSink | None = None,
        tls_ca: str | Path | None = None,
        creds: Path | None = None,
        key: Path | None = None,
        client_id: str | None = None,
        create_assets: bool = True,
    ) -> Client:
        """A client on the running loop; reuses ``nc`` when given (executors, gateway).
        ``tls_ca``: the CA a ``tls://`` lattice is trusted with (``lattice/tls.py``);
        ``creds``: the credentials file, else the one ``security.lookup`` finds;
        ``key``: the deployer key file to sign with instead of the home folder's;
        ``create_assets=False``: only open them (an executor's user may not create any)."""
        own = nc is None
        nc = nc or await connect_nats(url, name="superpose-client", tls_ca=tls_ca, creds=creds)
        assets = await (ensure_assets(nc) if create_assets else open_assets(nc))
        loop = asyncio.get_running_loop()
        names = None if create_assets else AskedNames(nc, loop)  # an executor's: asks nodes
        client = cls(nc, assets, loop, url=url, log_sink=log_sink, client_id=client_id, names=names)
        client.key_file = key
        if own:
            client._closers.append(nc.close)
        client._durable.own_results_only = not create_assets
        await client._start()
        return client

    async def _start(self) -> None:
        for subject, cb in (
            (self._replies.subject, self._replies.dispatch),
            (self.offers.subject, self.offers.serve),
            (protocol.progress_subject(self.id), self._direct.reaper.on_progress),
        ):
            await self.nc.subscribe(subject, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._direct.start(self._spawn)
        self._durable.start(self._spawn)
        await start_refs(self)

    def signer(self) -> signing.Signer:
        """The deployer key, read (or, the home folder's, made) when first needed."""
        if self._signer is None:
            if self.key_file is not None:
                self._signer = signing.load(self.key_file)
            else:
                path = signing.default_key_file(config.settings().home)
                self._signer = signing.load_or_create(path)
        return self._signer

    async def trusted_signer(self) -> signing.Signer:
        """The deployer key, checked once to be one the lattice trusts (or made its first)."""
        signer = self.signer()
        if not self._trusted:
            await ensure_trusted(self.assets.trust, signer, self.url)
            self._trusted = True
        return signer

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(self.loop.create_task(coro))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._durable.finish_cancels(CLOSE_WAIT_S)
        self._direct.close()
        for task in self._tasks:
            task.cancel()
        # Bounded: nats-py's flush can swallow a cancellation, leaving a loop alive.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CLOSE_WAIT_S)
        await self._names.stop()
        await self._placement.stop()
        closed = SuperposeError("the client was closed before the call finished")
        self._direct.fail_all(closed)
        self._durable.fail_all(closed)
        self.offers.close()  # its shared-memory files: no one can pull them now
        for closer in reversed(self._closers):
            await closer()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the client's loop from another thread and wait for it."""
        return threads.run(self.loop, coro)

    def close(self) -> None:
        session.forget(self)
        if on_loop(self.loop):
            return
        if self.loop.is_running():
            self.run(self.aclose())
        if self.after_close is not None:
            self.after_close()

    def close_first(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``closer`` first when the client closes (an embedded lattice it owns)."""
        self._closers.insert(0, closer)

    def close_before_disconnect(self, closer: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``closer`` when the client closes, while its connection is still open
        (closers run last-added first: the connection's own close was added at open)."""
        self._closers.append(closer)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if runtime.current() is None:
            self.close()

    # --- names -------------------------------------------------------------------

    async def registry(self) -> Registry:
        return await self._names.registry()

    def resolve(
        self, app: str, fn: str, version: str | None = None, ctx: protocol.CallContext | None = None
    ) -> Target:
        return self._names.resolve(app, fn, version, ctx)

    def call_context(
        self,
        options: Options,
        app: str | None = None,
        kwargs: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        fn: str | None = None,
        args: Sequence[Any] = (),
    ) -> protocol.CallContext:
        return self._names.call_context(options, app, kwargs, headers, fn=fn, args=args)

    def function(self, name: str, version: str | None = None) -> RemoteFunction:
        """A deployed function by name: ``"app.fn"`` or ``"app.fn@version"``."""
        app, fn, at = split_name(name)
        handle = RemoteFunction(app, fn, version or at, Options())
        handle._bound_client = self
        if not on_loop(self.loop):
            self.resolve(app, fn, version or at)  # fail now on an unknown name
        return handle

    def script_bundle(self, module_name: str) -> tuple[str, str, str]:
        return self._scripts.bundle(module_name)

    def script_env(self, module_name: str) -> str:
        """The env digest of the script bundle ``script_bundle`` built ("" for none)."""
        return self._scripts.env(module_name)

    def value_bundle(self, owner: Any, name: str, fn: FunctionType) -> str:
        """The digest of the by-value bundle of a function with no file (``scripts.py``)."""
        return self._scripts.by_value(owner, name, fn)

    def value_env(self, owner: Any) -> str:
        return self._scripts.value_env(owner)

    async def _script_env(self, declared: tuple[str, ...]) -> str:
        """A script's ``pip=`` resolved for the live nodes and recorded: its env digest."""
        target = lattice_platform((await self.nodes()).live())
        env = await resolve_and_record(await self.registry(), target, declared)
        return env.digest

    @property
    def secrets(self) -> Secrets:
        """The lattice's secrets: ``set``, ``ls``, ``rm`` (``superpose secret`` does the same)."""
        return Secrets(self.assets.secrets, self.run)

    async def nodes(self) -> NodeDirectory:
        return await self._placement.nodes()

    # --- invocations ---------------------------------------------------------------

    def submit(
        self,
        target: Target,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: Options,
        *,
        codec: str = protocol.CODEC_PICKLE,
        durable: bool = False,
        ctx: protocol.CallContext | None = None,
    ) -> Future:
        """Start one invocation from any thread; the future resolves with its result.

        ``durable`` persists it in JetStream first (spawn, map): it survives node
        deaths and broker restarts. Otherwise it is a direct request (remote).
        """
        with refs.sending() as sent, dataflow.collecting() as inputs:  # Refs: kept alive
            raw = encode_arguments(target, args, kwargs, codec)
        if inputs:  # futures among the arguments: sent once they are done
            future = dataflow.after(
                inputs,
                lambda: self.submit(
                    target, args, kwargs, options, codec=codec, durable=durable, ctx=ctx
                ),
            )
        elif durable:
            future = self.submit_durable(target, raw, codec, options, ctx)
        else:
            future = self.submit_raw(target, raw, codec, options, ctx)
        pin_sent(future, sent)
        return future

    def submit_raw(
        self,
        target: Target,
        raw_args: payload.Encoded,
        codec: str,
        options: Options,
        ctx: protocol.CallContext | None = None,
    ) -> Future:
        if self._closed:
            raise SuperposeError(CLOSED)
        ctx = self._replies.with_output(ctx)
        return self._direct.submit(target, raw_args, codec, options, ctx)

    def submit_durable(
        self,
        target: Target,
        raw_args: payload.Encoded,
        codec: str,
        options: Options,
        ctx: protocol.CallContext | None = None,
    ) -> Future:
        if self._closed or not self._durable.started:
            raise SuperposeError(CLOSED)
        ctx = self._replies.with_output(ctx)
        return self._durable.submit(target, raw_args, codec, options, ctx)

    def resubmit(self, inv: protocol.Invocation) -> Future:
        """Submit an invocation again (already wrapped) under a new id, from attempt 1."""
        if self._closed or not self._durable.started:
            raise SuperposeError(CLOSED)
        return self._durable.resubmit(inv)

    async def invoke_json(
        self,
        target: Target,
        args_json: bytes,
        *,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        ctx: protocol.CallContext | None = None,
    ) -> str:
        """Persist a durable invocation with JSON arguments; returns its id once accepted."""
        options = Options(idempotency_key=idempotency_key, timeout=timeout_s)
        future = self.submit_durable(target, args_json, protocol.CODEC_JSON, options, ctx)
        return await wait_accepted(future)

    async def call_json(
        self,
        target: Target,
        args_json: bytes,
        timeout_s: float | None = None,
        ctx: protocol.CallContext | None = None,
    ) -> bytes:
        """Run with JSON arguments (``{"args": [...], "kwargs": {...}}``); returns JSON bytes."""
        options = Options(timeout=timeout_s)
        future = self.submit_raw(target, args_json, protocol.CODEC_JSON, options, ctx)
        result: bytes = await asyncio.wrap_future(future)
        return result

    # --- durable invocations by id ---------------------------------------------------

    def cancel(self, invocation_id: str) -> bool:
        """Cancel a durable invocation: dropped if queued, killed if running."""
        return bool(self.run(self.cancel_async([invocation_id])))

    async def cancel_async(self, ids: list[str]) -> list[str]:
        """Cancel durable invocations by id; returns those that had not finished."""
        return await self._durable.cancel(ids)

    def cancel_many(self, futures: list[Future]) -> None:
        """Cancel many durable invocations at once (a map stopped early)."""
        if not self._closed:
            self._durable.cancel_many(futures)

    def speculate(self, invocation_id: str) -> None:
        self._durable.speculate(invocation_id)

    def stop_copies(self, invocation_id: str) -> None:
        self._durable.stop_copies(invocation_id)

    async def result_async(
        self, invocation_id: str, *, wait: bool = True, timeout: float | None = None
    ) -> protocol.Result | None:
        return await self._durable.lookup(invocation_id, wait=wait, timeout=timeout)

    def result(self, invocation_id: str, *, timeout: float | None = None) -> Any:
        """Wait for a durable invocation's result by id, from any process.

        Raises ``RemoteError`` if it failed, ``CallTimeoutError`` if ``timeout`` passes.
        """
        return self._durable.result(invocation_id, timeout=timeout)


async def open_node_client(nc: NATS, client_id: str | None = None) -> None:
    """An executor's client: user code's nested calls share its connection and loop.
    (The executor process is composed in ``cli/executor.py``, above the node and
    this layer, which may not import each other.) ``client_id``: the executor's own
    NATS user may subscribe only to that client's subjects."""
    url = nc.connected_url.geturl() if nc.connected_url else ""
    client = await Client.open(url, nc=nc, client_id=client_id, create_assets=False)
    session.set_node_client(client)
