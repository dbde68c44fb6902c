"""What each role may do on the wire: one table, role → NATS ``pub``/``sub`` allow/deny.

The server enforces these (a user JWT's permissions), so a process holding a
caller's credentials cannot move an alias however it is written. Narrow roles are
allow lists pinned to their owner, the user's name: a client of that user names
itself ``<owner>.<random>`` (``protocol.client_id``), so its replies arrive on
``_SP.<owner>.>``, its inboxes are ``_INBOX.<owner>.>`` (nats-py's
``inbox_prefix``) and its durable results are ``$KV.sp_results.<owner>.>``; it may
subscribe to those and nothing else, and read only those results.

Serving roles (node, gateway) see every call by design; they get everything but
what they must never do (deny lists): a node may not move an alias, register a
version or read the gateway's tokens, a gateway may not deploy.

JetStream's API is reached by requests on ``$JS.API.…`` subjects; wherever the
subject names what is read (direct gets by subject, consumers created with their
filter in the subject) the grant pins it, and the forms that do not (a direct get by
sequence, ``STREAM.MSG.GET``, a batch ``multi_last`` get) are not granted to narrow
roles at all.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from superpose import protocol
from superpose.errors import LatticeError
from superpose.security import jwt
from superpose.security.creds import read_creds

ADMIN = "admin"
ROLES = ("admin", "deployer", "caller", "viewer", "node", "gateway")
"""Every role a user of the lattice may have (``superpose creds create --role``)."""
MINTABLE = ("deployer", "caller", "viewer", "node")
"""What ``creds create`` makes; admin and gateway are ``up``'s own."""
OWNER_MAX_CHARS = 40
"""A user's name is the first part of its client ids: short enough for ids to stay
well under the invocation id limit."""
_OWNER_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{OWNER_MAX_CHARS}}}")

_API = protocol.JS_API
_FC = protocol.JS_FLOW_CONTROL
_ACK = protocol.JS_ACKS

_REG = protocol.REGISTRY_BUCKET
_REGISTRY_KINDS = ("ver", "alias", "app", "pin", "canary", "lock")
"""Registry keys only a deployer writes (``protocol.version_key`` and friends); a
client also records ``place.<class>``, a deployer ``env.<digest>`` (a node checks
that the record hashes to its digest) and nodes their ``_BUILD_KINDS``."""
_BUILD_KINDS = ("envfail", "envbuild")
"""Registry keys only nodes write: a failed build and a build lease
(``protocol.env_failure_key``, ``env_build_key``). An environment is shared by every
app that declares the same packages, so a user of one app who could write these could
fail or stall another app's environment."""
_TRUST = protocol.TRUST_BUCKET
"""The signed-code keys (issue 15 item 3): read by all, written by an admin only."""


def _kv_stream(bucket: str) -> str:
    return protocol.kv_stream(bucket)


def _obj_stream(bucket: str) -> str:
    return protocol.object_stream(bucket)


def _direct(stream: str, subject: str) -> str:
    """A direct get of the last message on ``subject`` (may be a wildcard pattern)."""
    return f"{protocol.direct_get_subject(stream)}.{subject}"


def _consumer(stream: str, filter_subject: str = ">") -> str:
    """Creating a consumer on ``stream`` filtered by ``filter_subject`` (the server
    checks the filter in the request against the one in the subject)."""
    if filter_subject == ">":
        return f"{_API}.CONSUMER.CREATE.{stream}.>"
    return f"{_API}.CONSUMER.CREATE.{stream}.*.{filter_subject}"


def _watch(bucket: str) -> list[str]:
    """Reading a key-value bucket whole: direct gets and watches."""
    stream = _kv_stream(bucket)
    return [
        _direct(stream, ">"),
        f"{_API}.STREAM.MSG.GET.{stream}",  # a get where the bucket has no direct gets
        _consumer(stream),
        f"{_API}.CONSUMER.CREATE.{stream}",  # nats-py's watches: unnamed, no filter in sight
        f"{_API}.CONSUMER.DELETE.{stream}.>",
    ]


def _opening() -> list[str]:
    """What ``ensure_assets`` asks to open what exists (never to create it)."""
    return [f"{_API}.INFO", f"{_API}.STREAM.INFO.*", f"{_API}.CONSUMER.INFO.*.*", _FC, _ACK]


def _own_inboxes(owner: str) -> list[str]:
    return [f"{protocol.inbox_prefix(owner)}.>", f"{protocol.client_prefix(owner)}.>"]


def _app_pattern(app: str | None) -> str:
    return app or "*"


def _reader(owner: str, app: str | None) -> list[str]:
    """Status, versions, routing and logs: what every narrow role may read."""
    logs = protocol.log_filter(app) if app else protocol.LOGS_WILDCARD
    return [
        *_opening(),
        *_watch(_REG),
        *_watch(protocol.NODES_BUCKET),
        *_watch(protocol.SCHEDULES_BUCKET),
        *_watch(_TRUST),
        *_watch(protocol.REFS_BUCKET),
        _consumer(protocol.LOGS_STREAM, logs),
        f"{_API}.CONSUMER.MSG.NEXT.{protocol.LOGS_STREAM}.>",
        f"{_API}.CONSUMER.DELETE.{protocol.LOGS_STREAM}.>",
    ]


def _blobs() -> list[str]:
    """Spilled arguments and results: written whole, read by name only (a name is a
    random id a reader learns from a call or a result it may see)."""
    return [protocol.object_wildcard(protocol.BLOBS_BUCKET), *protocol.blob_reads()]


def _calls(owner: str, app: str | None) -> list[str]:
    """Calling ``app`` (any when None), directly and durably, and reading the results
    of one's own invocations (and of idempotency keys, which name their invocation)."""
    a = _app_pattern(app)
    results, issued = _kv_stream(protocol.RESULTS_BUCKET), protocol.ISSUED_BUCKET
    return [
        *protocol.call_wildcards(a),
        protocol.TRACE_PUBLISH,
        protocol.CANCEL_SUBJECT,
        _direct(results, protocol.results_subject(f"{owner}.>")),
        _direct(results, protocol.results_subject(protocol.idempotent_id("*"))),
        protocol.kv_subject(protocol.CANCELS_BUCKET, f"{owner}.>"),
        protocol.kv_subject(protocol.ISSUED_BUCKET, f"{owner}.>"),
        _direct(_kv_stream(issued), protocol.kv_wildcard(issued)),
        protocol.kv_subject(_REG, "place.>"),
        *_blobs(),
        *_refs(owner),
        *_memo(app),
        *protocol.shared_state_publish(_shared_scopes(app)),
    ]


def _refs(owner: str) -> list[str]:
    """Object references: recording the objects one's own clients hold, pulling any
    holder's (an offer's id is random: only a Ref names it), and durable objects,
    written whole and read by name only (``blob_reads``: no listing form)."""
    return [
        protocol.ref_records_of(f"{owner}.*"),
        *(protocol.offers_subject(client) for client in protocol.ANY_CLIENT_ID),
        *(protocol.ref_keep_subject(client) for client in protocol.ANY_CLIENT_ID),
        protocol.object_wildcard(protocol.OBJECTS_BUCKET),
        *protocol.blob_reads(protocol.OBJECTS_BUCKET),
        *protocol.lineage_allowed(),
    ]


def _memo(app: str | None) -> list[str]:
    """Cached calls of ``app`` (any when None): read results by key, claim and drop
    keys (``lattice/memo_store.py``); never list, and never write a result: only the
    executor that ran a call stores one. A user of every app may also read many keys
    in one batch get (which names no key, so a user of one app may not: its lookups go
    one by one)."""
    results = protocol.memo_subject(app)
    claims = protocol.memo_subject(app, protocol.MEMO_CLAIMS_BUCKET)
    stream = _kv_stream(protocol.MEMO_BUCKET)
    batch = [protocol.direct_get_subject(stream)] if app is None else []
    return [
        _direct(stream, results),
        claims,
        _direct(_kv_stream(protocol.MEMO_CLAIMS_BUCKET), claims),
        *batch,
        *protocol.blob_reads(protocol.MEMO_VALUES_BUCKET),  # by a name only its entry gives
    ]


def _memo_admin(app: str | None) -> list[str]:
    """``superpose cache ls|clear``: list an app's results and claims (a watch filtered
    by its keys) and purge them. A deployer's code may return anything anyway, so
    letting it write its own app's results gives nothing away."""
    granted: list[str] = []
    for bucket in (protocol.MEMO_BUCKET, protocol.MEMO_CLAIMS_BUCKET):
        stream = _kv_stream(bucket)
        granted += [
            protocol.memo_subject(app, bucket),
            _consumer(stream, protocol.memo_subject(app, bucket)),
            f"{_API}.CONSUMER.DELETE.{stream}.>",
        ]
    return granted


def _shared_scopes(app: str | None) -> list[str]:
    """Shared dicts and queues: the app's own (any app's when None) and lattice-wide ones."""
    return [protocol.app_scope(_app_pattern(app)), protocol.SHARED_SCOPE]


def _deploys(app: str | None) -> list[str]:
    """Uploading bundles, recording the environments a deploy resolved, writing
    ``app``'s registry entries (versions, aliases, canaries, pins) and setting secrets.

    Built environments are read, never written: an archive is shared by every app with
    the same packages and nothing checks it against its record, so only the nodes that
    build them (and admin) may write them; a deployer of one app could otherwise put its
    own code in another app's environment."""
    a = _app_pattern(app)
    bundles = protocol.BUNDLES_BUCKET
    writes = [protocol.kv_subject(_REG, f"{kind}.{a}.>") for kind in _REGISTRY_KINDS]
    writes += [protocol.kv_subject(_REG, f"{kind}.{a}") for kind in ("app", "canary", "lock")]
    return [
        *writes,
        protocol.kv_subject(_REG, protocol.env_key("*")),
        protocol.object_wildcard(bundles),
        _direct(_obj_stream(bundles), ">"),
        f"{_API}.STREAM.MSG.GET.{_obj_stream(bundles)}",
        f"{_API}.STREAM.MSG.GET.{_obj_stream(protocol.ENVS_BUCKET)}",
        _consumer(_obj_stream(bundles)),
        _direct(_obj_stream(protocol.ENVS_BUCKET), ">"),
        f"{_API}.STREAM.PURGE.{_obj_stream(bundles)}",
        protocol.kv_subject(protocol.SECRETS_BUCKET, ">"),
        *_watch(protocol.SECRETS_BUCKET),
    ]


def _registry_and_streams() -> list[str]:
    """Never for a serving role: the registry entries only a deployer writes, the
    signed-code keys, and the stream operations that could rewrite or drop what others
    stored."""
    return [
        *(protocol.kv_subject(_REG, f"{kind}.>") for kind in _REGISTRY_KINDS),
        protocol.kv_wildcard(_TRUST),
        f"{_API}.STREAM.DELETE.>",
        f"{_API}.STREAM.PURGE.{_kv_stream(_REG)}",
        f"{_API}.STREAM.MSG.DELETE.>",
    ]


def _token_reads() -> list[str]:
    """Every way to read the tokens bucket (or watch it)."""
    stream = _kv_stream(protocol.TOKENS_BUCKET)
    return [
        protocol.direct_get_subject(stream),
        _direct(stream, ">"),
        f"{_API}.STREAM.MSG.GET.{stream}",
        f"{_API}.CONSUMER.*.{stream}",
        f"{_API}.CONSUMER.*.{stream}.>",
        f"{_API}.CONSUMER.DURABLE.CREATE.{stream}.>",
    ]


def _node_denials() -> list[str]:
    """A node serves: it may not deploy, nor read or write the gateway's tokens."""
    return [*_registry_and_streams(), protocol.kv_wildcard(protocol.TOKENS_BUCKET), *_token_reads()]


def _gateway_denials() -> list[str]:
    """A gateway reads the registry and its tokens and calls; it never deploys, nor
    records or builds environments."""
    envs = [protocol.kv_subject(_REG, f"{kind}.>") for kind in ("env", *_BUILD_KINDS)]
    return [
        *_registry_and_streams(),
        *envs,
        protocol.kv_wildcard(protocol.TOKENS_BUCKET),
        protocol.kv_wildcard(protocol.SECRETS_BUCKET),
        protocol.object_wildcard(protocol.BUNDLES_BUCKET),
        protocol.object_wildcard(protocol.ENVS_BUCKET),
        f"{_API}.STREAM.PURGE.>",
    ]


def _allow(pub: list[str], sub: list[str], *, responses: bool = True) -> dict[str, Any]:
    permissions: dict[str, Any] = {"pub": {"allow": pub}, "sub": {"allow": sub}}
    if responses:  # answering a request sent to one's own subjects (offers' pulls)
        permissions["resp"] = {"max": 1, "ttl": 0}
    return permissions


def permissions(role: str, *, owner: str, app: str | None = None) -> dict[str, Any] | None:
    """The NATS permissions of a user of ``role`` named ``owner`` (limited to ``app``
    where the role allows it); None: everything in the account (admin)."""
    if role == ADMIN:
        return None
    subs = _own_inboxes(owner)
    if role == "viewer":
        reads = protocol.shared_state_reads(_shared_scopes(app))
        return _allow([*_reader(owner, app), *reads], subs, responses=False)
    if role == "caller":
        return _allow([*_reader(owner, app), *_calls(owner, app)], subs)
    if role == "deployer":
        deploys = [*_deploys(app), *_memo_admin(app)]
        return _allow([*_reader(owner, app), *_calls(owner, app), *deploys], subs)
    if role == "node":
        tokens = [protocol.kv_wildcard(protocol.TOKENS_BUCKET)]
        return {"pub": {"deny": _node_denials()}, "sub": {"deny": tokens}}
    if role == "gateway":
        return {"pub": {"deny": _gateway_denials()}}
    raise ValueError(f"unknown role {role!r}")


def owner_of(creds: Path | None) -> str | None:
    """The user a credentials file names, when it can own subjects (a NATS token of at
    most OWNER_MAX_CHARS): the first part of its clients' ids. None without creds, or for
    creds made elsewhere with another kind of name (those clients keep random ids)."""
    if creds is None:
        return None
    try:
        name = jwt.claims_of(read_creds(creds)[0]).get("name")
    except LatticeError:
        return None
    return owner_of_name(name)


def owner_of_name(name: object) -> str | None:
    """``name`` if it can own subjects (one NATS token, at most OWNER_MAX_CHARS)."""
    if isinstance(name, str) and _OWNER_RE.fullmatch(name):
        return name
    return None
