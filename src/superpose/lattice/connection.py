"""Connect to a lattice and make sure its JetStream assets exist."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.aio.client import RawCredentials
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError as JSAPIError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from superpose import protocol
from superpose.config import ENV_CREDS, ENV_REPLICAS, lattice_servers, settings
from superpose.errors import LatticeError
from superpose.lattice import lineage, memo_store, shared_streams, tls
from superpose.lattice.batch import js_api
from superpose.security import permits
from superpose.security.lookup import find_creds
from superpose.security.roles import owner_of

_owners: weakref.WeakKeyDictionary[NATS, str] = weakref.WeakKeyDictionary()
"""Connection → the user it connected as (``owner``)."""


def owner(nc: NATS) -> str | None:
    """The user ``nc`` connected as, when its name can own subjects (``security/roles``):
    clients on it take ids under it, which is all a narrow user may subscribe to."""
    return _owners.get(nc)


_permits: weakref.WeakKeyDictionary[NATS, permits.Permits] = weakref.WeakKeyDictionary()
"""Connection → the publish permissions its user's JWT lists (``security/permits``)."""


def permits_of(nc: NATS) -> permits.Permits:
    """What ``nc``'s own credentials let it publish (``UNLIMITED`` when they list nothing,
    or for a connection not made by ``connect``)."""
    return _permits.get(nc, permits.UNLIMITED)


T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
FIRST_CONNECT_S = 10.0
"""How long the first connection may take: nats-py retries it forever once reconnects
are unlimited, which left a mistyped lattice URL hanging (and deaf to Ctrl-C)."""


async def connect(
    url: str,
    *,
    name: str,
    creds: Path | None = None,
    tls_ca: str | Path | None = None,
    inbox_prefix: str | None = None,
    creds_text: str | None = None,
) -> NATS:
    """A connection that reconnects forever once made, and notices a dead server in
    seconds; the first connection fails after FIRST_CONNECT_S with LatticeError, or at
    once when no retry can succeed: the server refuses its credentials, or TLS refuses
    the server (``lattice/tls.py`` says which CA is trusted).

    ``url`` may list a cluster's servers separated by commas: nats-py tries them in
    a random order, and fails over to the others (and to servers it learns of).
    ``creds`` is the credentials file; None looks one up (``security.lookup``).
    ``creds_text``: a creds file's text, connected with from memory instead (an
    executor's express user, handed over in its ``Load`` frame: never on disk).
    """
    servers = lattice_servers(url)
    creds = find_creds(url, creds) if creds_text is None else None
    trust = tls.trust_for(url, tls_ca)
    last_error: list[Exception] = []
    refused: asyncio.Future[LatticeError] = asyncio.get_running_loop().create_future()

    async def _remember(exc: Exception) -> None:
        last_error[:] = [exc]
        # nats-py retries a refused connection forever (reconnects are unlimited):
        # the first refusal is the answer.
        if refused.done():
            return
        if _is_auth_error(exc):
            refused.set_result(refused_error(url, creds, exc))
        elif why := tls.refusal(trust, exc):
            refused.set_result(LatticeError(why))

    nc = NATS()
    options = _options(servers, name, creds, _remember, inbox_prefix, creds_text) | trust.options()
    _own(nc, options, owner_of(creds))
    _permits[nc] = permits.of_creds(creds)
    connecting = asyncio.ensure_future(nc.connect(**options))
    try:
        await _first_connection(connecting, refused)
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        why = last_error[0] if last_error else exc
        raise LatticeError(
            f"cannot reach the lattice at {url} (tried for {FIRST_CONNECT_S:.0f} s: "
            f"{why or type(why).__name__}); is it running? `superpose status` shows "
            "the one `superpose up` started"
        ) from exc
    except nats.errors.Error as exc:
        if _is_auth_error(exc):
            raise refused_error(url, creds, exc) from exc
        raise
    finally:
        refused.cancel()
        if not connecting.done() or connecting.exception() is not None:
            await _abandon(nc, connecting)
    try:
        tls.check_encrypted(trust, getattr(nc, "_server_info", {}))  # nats-py has no accessor
    except LatticeError:
        await nc.close()
        raise
    return nc


def _own(nc: NATS, options: dict[str, Any], user: str | None) -> None:
    """Inboxes under the user's name: a narrow user may subscribe to its own only."""
    if user is not None:
        options["inbox_prefix"] = protocol.inbox_prefix(user)
        _owners[nc] = user


async def _first_connection(
    connecting: asyncio.Future[None], refused: asyncio.Future[LatticeError]
) -> None:
    """Made, or refused for a reason no retry changes, or TimeoutError."""
    either: set[asyncio.Future[Any]] = {connecting, refused}
    done, _ = await asyncio.wait(
        either, timeout=FIRST_CONNECT_S, return_when=asyncio.FIRST_COMPLETED
    )
    if connecting in done:
        connecting.result()
    elif refused in done:
        raise refused.result()
    else:
        raise TimeoutError


def _options(
    servers: list[str],
    name: str,
    creds: Path | None,
    error_cb: Callable[[Exception], Awaitable[None]],
    inbox_prefix: str | None = None,
    creds_text: str | None = None,
) -> dict[str, Any]:
    """``inbox_prefix``: for a user that may subscribe to its own inboxes only (executors);
    ``creds_text``: connect with these creds, from memory, rather than ``creds``."""
    user = RawCredentials(creds_text) if creds_text is not None else None
    return {
        **({"inbox_prefix": inbox_prefix} if inbox_prefix is not None else {}),
        "servers": servers,
        "name": name,
        "connect_timeout": CONNECT_TIMEOUT_S,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "ping_interval": 5,
        "max_outstanding_pings": 3,
        "error_cb": error_cb,
        "user_credentials": user or (str(creds) if creds is not None else None),
    }


async def _abandon(nc: NATS, connecting: asyncio.Future[None]) -> None:
    """Stop a first connection that failed or was refused, closing what it opened."""
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    with contextlib.suppress(Exception):
        await nc.close()


AUTH_ERRORS = ("authorization violation", "authentication", "user authentication")


def _is_auth_error(exc: BaseException) -> bool:
    """The server refused the credentials (none, forged, expired or revoked)."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    return isinstance(exc, nats.errors.Error) and any(
        marker in str(exc).lower() for marker in AUTH_ERRORS
    )


def refused_error(url: str, creds: Path | None, exc: BaseException) -> LatticeError:
    """What a refused connection tells the user: which credentials, and how to pass others."""
    which = f"credentials {creds}" if creds is not None else "no credentials given"
    return LatticeError(
        f"the lattice at {url} refused the connection: no valid credentials ({which}; "
        f"the server said {str(exc).removeprefix('nats: ')}); pass --creds FILE or set "
        f"{ENV_CREDS} (`superpose up` writes them in its state folder, creds/admin.creds)"
    )


class Assets:
    """Handles on the lattice's buckets and streams (see protocol.py for the names)."""

    def __init__(
        self,
        js: JetStreamContext,
        registry: KeyValue,
        nodes: KeyValue,
        bundles: ObjectStore,
        blobs: ObjectStore,
        results: KeyValue,
        dead: KeyValue,
        cancels: KeyValue,
        schedules: KeyValue,
        issued: KeyValue,
        envs: ObjectStore,
        secrets: KeyValue,
        tokens: KeyValue,
        trust: KeyValue,
    ) -> None:
        self.js = js
        self.registry = registry
        self.nodes = nodes
        self.bundles = bundles
        self.blobs = blobs
        self.results = results
        self.dead = dead
        self.cancels = cancels
        self.schedules = schedules
        self.issued = issued
        self.envs = envs
        """Built environments, ``<env digest>.tar.gz``: built once, pulled by every node."""
        self.secrets = secrets
        self.tokens = tokens
        """Gateway tokens (``lattice/tokens.py``): id → role, app and the secret's hash."""
        self.trust = trust
        """Trusted deployer keys (``registry/trust.py``)."""

    @classmethod
    def named(
        cls, js: JetStreamContext, kvs: Sequence[KeyValue], stores: Sequence[ObjectStore]
    ) -> Assets:
        """From handles in the order of ``KV_BUCKETS`` and ``OBJECT_BUCKETS``, however
        they were got (created, or only opened)."""
        kv = dict(zip(KV_BUCKETS, kvs, strict=True))
        obj = dict(zip(OBJECT_BUCKETS, stores, strict=True))
        return cls(
            js,
            registry=kv[protocol.REGISTRY_BUCKET],
            nodes=kv[protocol.NODES_BUCKET],
            bundles=obj[protocol.BUNDLES_BUCKET],
            blobs=obj[protocol.BLOBS_BUCKET],
            results=kv[protocol.RESULTS_BUCKET],
            dead=kv[protocol.DEAD_BUCKET],
            cancels=kv[protocol.CANCELS_BUCKET],
            schedules=kv[protocol.SCHEDULES_BUCKET],
            issued=kv[protocol.ISSUED_BUCKET],
            envs=obj[protocol.ENVS_BUCKET],
            secrets=kv[protocol.SECRETS_BUCKET],
            tokens=kv[protocol.TOKENS_BUCKET],
            trust=kv[protocol.TRUST_BUCKET],
        )


KV_BUCKETS = (
    protocol.REGISTRY_BUCKET,
    protocol.NODES_BUCKET,
    protocol.DEAD_BUCKET,
    protocol.CANCELS_BUCKET,
    protocol.SCHEDULES_BUCKET,
    protocol.ISSUED_BUCKET,
    protocol.SECRETS_BUCKET,
    protocol.TOKENS_BUCKET,
    protocol.TRUST_BUCKET,
    protocol.RESULTS_BUCKET,
)
"""The key-value buckets in the order ``Assets.named`` takes their handles."""
OBJECT_BUCKETS = (protocol.BUNDLES_BUCKET, protocol.BLOBS_BUCKET, protocol.ENVS_BUCKET)
"""The object stores, likewise."""


async def _open_or_create(
    name: str, open_: Callable[[], Awaitable[T]], create: Callable[[], Awaitable[T]]
) -> T:
    """Open an asset, or create it; another process creating it at once is fine."""
    try:
        return await open_()
    except (nats.errors.Error, LatticeError):
        pass
    try:
        return await create()
    except (JSAPIError, LatticeError) as exc:
        try:  # created concurrently by another process?
            return await open_()
        except (nats.errors.Error, LatticeError):
            why = exc.description if isinstance(exc, JSAPIError) else exc.message
            raise LatticeError(f"cannot create {name}: {why}{_hint(why or '')}") from exc


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """A key-value bucket made from ``config`` unless it exists."""
    name = str(config.bucket)
    return await _open_or_create(
        name, lambda: js.key_value(name), lambda: js.create_key_value(config)
    )


def _hint(description: str) -> str:
    if "replica" in description.lower():
        return f" (set {ENV_REPLICAS} to at most the number of JetStream servers)"
    return ""


async def _ensure_rolling_stream(
    js: JetStreamContext, name: str, wildcard: str, max_age_s: float, replicas: int
) -> None:
    """A stream that keeps recent records and drops the oldest (logs, trace spans)."""
    config = StreamConfig(
        name=name,
        subjects=[wildcard],
        storage=StorageType.FILE,
        max_age=max_age_s,
        max_bytes=protocol.LOG_MAX_BYTES,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
    )
    await _open_or_create(name, lambda: js.stream_info(name), lambda: js.add_stream(config))


NS = 1_000_000_000


async def _ensure_raw_stream(nc: NATS, config: dict[str, Any]) -> None:
    """A stream with settings nats-py's config types lack (atomic batches)."""
    name = config["name"]
    await _open_or_create(
        name,
        lambda: js_api(nc, protocol.stream_info_subject(name), {}),
        lambda: js_api(nc, protocol.stream_create_subject(name), config),
    )


async def _ensure_durable_path(nc: NATS, replicas: int) -> None:
    """The work-queue stream, its shared consumer, and the results bucket.

    Both streams are file-backed and the embedded server fsyncs every write
    (``sync_interval: always``): an acknowledged invocation or stored result
    survives a server crash. Atomic batches amortize that fsync.
    """
    await _ensure_raw_stream(
        nc,
        {
            "name": protocol.WORK_STREAM,
            "subjects": [protocol.WORK_WILDCARD],
            "retention": "workqueue",
            "storage": "file",
            "num_replicas": replicas,
            "duplicate_window": int(protocol.DUPLICATE_WINDOW_S * NS),
            "allow_atomic": True,
            "max_msg_size": -1,
        },
    )
    await ensure_work_consumer(
        nc, protocol.WORK_CONSUMER, protocol.WORK_ANY_FILTER, replicas, _drop_legacy_consumer
    )
    # Laid out exactly as a nats-py/CLI key-value bucket, plus atomic batches.
    bucket = protocol.RESULTS_BUCKET
    await _ensure_raw_stream(
        nc,
        {
            "name": protocol.RESULTS_STREAM,
            "subjects": [protocol.kv_wildcard(bucket)],
            "storage": "file",
            "num_replicas": replicas,
            "max_msgs_per_subject": 1,
            "max_age": int(protocol.RESULT_TTL_S * NS),
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "allow_direct": True,
            "discard": "new",
            "duplicate_window": 120 * NS,
            "allow_atomic": True,
        },
    )


async def _ensure_shared_state(nc: NATS, replicas: int) -> None:
    """The streams of shared dicts and queues (``lattice/shared_streams.py``)."""
    await asyncio.gather(*(_ensure_raw_stream(nc, c) for c in shared_streams.configs(replicas)))


async def ensure_work_consumer(
    nc: NATS,
    name: str,
    filter_subject: str,
    replicas: int | None = None,
    before_create: Callable[[NATS], Awaitable[None]] | None = None,
) -> None:
    """A shared pull consumer on the work stream: ``anywhere``, or one per needs class.

    ``before_create`` runs only when the consumer does not exist yet, so a migration
    step costs nothing on the start-ups that find it.
    """
    replicas = replicas or settings().replicas

    async def create() -> Any:
        if before_create is not None:
            await before_create(nc)
        return await js_api(
            nc,
            protocol.consumer_create_subject(protocol.WORK_STREAM, name),
            {
                "stream_name": protocol.WORK_STREAM,
                "config": {
                    "durable_name": name,
                    "filter_subject": filter_subject,
                    "ack_policy": "explicit",
                    "ack_wait": int(protocol.ack_wait_s(replicas) * NS),
                    # Unbounded here on purpose: the node fails an envelope's items as
                    # lost on delivery MAX_DELIVER + 1. A JetStream limit would stop
                    # delivering silently if that node died too, and no result would
                    # ever be stored.
                    "max_deliver": -1,
                    "max_ack_pending": 100_000,
                    "max_waiting": 4096,
                    "num_replicas": replicas,
                },
            },
        )

    info = await _open_or_create(
        f"consumer {name}",
        lambda: js_api(nc, protocol.consumer_info_subject(protocol.WORK_STREAM, name), {}),
        create,
    )
    await _keep_ack_wait(nc, name, info)


async def _keep_ack_wait(nc: NATS, name: str, info: Any) -> None:
    """A consumer made with another ack wait than its replication calls for (an older
    superpose: 10 s on a replicated lattice) gets that one, its other settings
    unchanged. By its own replica count, not this process's setting: a client that
    does not know the lattice is replicated must not shorten it. Only a node's user
    (or admin) may; for anyone else the next node to start does it."""
    config = dict((info or {}).get("config") or {}) if isinstance(info, dict) else {}
    replicas = int(config.get("num_replicas") or 0)
    if not config or replicas < 1:  # 0: the stream's, not known here; leave it
        return
    wanted = int(protocol.ack_wait_s(replicas) * NS)
    if config.get("ack_wait") in (None, wanted):
        return
    config["ack_wait"] = wanted
    subject = protocol.consumer_create_subject(protocol.WORK_STREAM, name)
    if not permits_of(nc).may_publish(subject):  # it would go unanswered
        return
    body = {"stream_name": protocol.WORK_STREAM, "config": config, "action": "update"}
    with contextlib.suppress(nats.errors.Error, LatticeError):  # another node did it
        await js_api(nc, subject, body)


async def _drop_legacy_consumer(nc: NATS) -> None:
    """A state folder from before placement has an unfiltered consumer that would
    overlap the filtered ones (a work-queue stream refuses that): remove it."""
    subject = protocol.consumer_delete_subject(protocol.WORK_STREAM, protocol.LEGACY_WORK_CONSUMER)
    with contextlib.suppress(nats.errors.Error, LatticeError):
        await js_api(nc, subject, {})


async def ensure_assets(nc: NATS) -> Assets:
    """Create (or open) every bucket and stream; safe to run from many processes."""
    js = nc.jetstream()
    replicas = settings().replicas

    async def kv(**config: Any) -> KeyValue:
        settings = KeyValueConfig(replicas=replicas, storage=StorageType.FILE, **config)
        return await _open_or_create(
            config["bucket"],
            lambda: js.key_value(config["bucket"]),
            lambda: js.create_key_value(settings),
        )

    async def objects(**config: Any) -> ObjectStore:
        settings = ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE, **config)
        return await _open_or_create(
            config["bucket"],
            lambda: js.object_store(config["bucket"]),
            lambda: js.create_object_store(bucket=config["bucket"], config=settings),
        )

    try:
        # Concurrently: each is a round trip (a create, on a fresh server, also a write),
        # and every process starting (each executor too) opens all of them.
        kvs, stores, *_ = await asyncio.gather(
            asyncio.gather(
                kv(bucket=protocol.REGISTRY_BUCKET, history=16),
                kv(bucket=protocol.NODES_BUCKET, ttl=protocol.NODE_TTL_S),
                kv(bucket=protocol.DEAD_BUCKET, ttl=protocol.DEAD_TTL_S),
                kv(bucket=protocol.CANCELS_BUCKET, ttl=protocol.RESULT_TTL_S),
                kv(bucket=protocol.SCHEDULES_BUCKET),
                kv(bucket=protocol.ISSUED_BUCKET, ttl=protocol.RESULT_TTL_S),
                kv(bucket=protocol.SECRETS_BUCKET, history=1),
                kv(bucket=protocol.TOKENS_BUCKET, history=1),
                kv(bucket=protocol.TRUST_BUCKET, history=1),
            ),
            asyncio.gather(
                objects(bucket=protocol.BUNDLES_BUCKET),
                objects(bucket=protocol.BLOBS_BUCKET, ttl=protocol.BLOB_TTL_S),
                objects(bucket=protocol.ENVS_BUCKET),
            ),
            _ensure_rolling_stream(
                js, protocol.LOGS_STREAM, protocol.LOGS_WILDCARD, protocol.LOG_RETENTION_S, replicas
            ),
            _ensure_rolling_stream(
                js,
                protocol.TRACES_STREAM,
                protocol.TRACES_WILDCARD,
                protocol.TRACE_RETENTION_S,
                replicas,
            ),
            _ensure_durable_path(nc, replicas),
            asyncio.gather(
                ensure_ref_assets(js, replicas),
                *(_ensure_kv(js, config) for config in memo_store.bucket_configs(replicas)),
                _open_or_create(
                    protocol.MEMO_VALUES_BUCKET,
                    lambda: js.object_store(protocol.MEMO_VALUES_BUCKET),
                    lambda: js.create_object_store(
                        bucket=protocol.MEMO_VALUES_BUCKET,
                        config=memo_store.values_config(replicas),
                    ),
                ),
                _ensure_kv(js, lineage.bucket_config(replicas)),
            ),
        )
        results = await js.key_value(protocol.RESULTS_BUCKET)
        await _ensure_shared_state(nc, replicas)  # after: a setting's error names sp_…
    except nats.errors.Error as exc:
        raise LatticeError(f"JetStream is not available on the lattice: {exc}") from exc
    return Assets.named(js, [*kvs, results], stores)


async def open_assets(nc: NATS) -> Assets:
    """Handles on the assets, which must exist: nothing is created, no consumer is made.
    An executor opens its client this way: its own NATS user may look streams up
    (``$JS.API.STREAM.INFO``) but not create streams or the work consumers, which its
    node ensured before starting it."""
    js = nc.jetstream()
    try:
        kvs = await asyncio.gather(*(js.key_value(name) for name in KV_BUCKETS))
        stores = await asyncio.gather(*(js.object_store(name) for name in OBJECT_BUCKETS))
    except nats.errors.Error as exc:
        raise LatticeError(f"the lattice's assets are not there yet: {exc}") from exc
    return Assets.named(js, kvs, stores)


async def ensure_ref_assets(js: JetStreamContext, replicas: int) -> None:
    """Object references' assets (``lattice/refs.py``): the ``sp_refs`` records in memory
    (what is held where: lost with the server, as the held objects are with their
    holders) and the ``sp_objects`` store of durable objects on file. Opened by name
    where they are used, so ``Assets`` does not change."""
    records = KeyValueConfig(
        bucket=protocol.REFS_BUCKET,
        replicas=replicas,
        storage=StorageType.MEMORY,
        ttl=protocol.REF_RECORD_TTL_S,
    )
    durable = ObjectStoreConfig(replicas=replicas, storage=StorageType.FILE)
    await asyncio.gather(
        _open_or_create(
            protocol.REFS_BUCKET,
            lambda: js.key_value(protocol.REFS_BUCKET),
            lambda: js.create_key_value(records),
        ),
        _open_or_create(
            protocol.OBJECTS_BUCKET,
            lambda: js.object_store(protocol.OBJECTS_BUCKET),
            lambda: js.create_object_store(bucket=protocol.OBJECTS_BUCKET, config=durable),
        ),
    )
