"""The wire protocol: every subject, bucket, stream and message shape of the lattice.

No other module formats a subject string or builds a wire message by hand, so
this file is the whole contract between clients, nodes and the gateway. Every
message is a typed msgspec Struct carrying a versioned type tag (``t``), so mixed
versions fail loudly, and every decoder refuses bad bytes with one error,
``ProtocolError``.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Self, TypeAlias, get_args

import msgspec

# --- names -------------------------------------------------------------------

CALL_QUEUE_GROUP = "nodes"
REGISTRY_BUCKET = "sp_registry"
NODES_BUCKET = "sp_nodes"
BUNDLES_BUCKET = "sp_bundles"
BLOBS_BUCKET = "sp_blobs"
ENVS_BUCKET = "sp_envs"
"""Object store of built environments: ``<env digest>.tar.gz``, one per environment
(the digest already names the Python and platform it was built for)."""
LOGS_STREAM = "SP_LOGS"
TRACES_STREAM = "SP_TRACES"
"""Spans of traced calls (which version of what answered where), kept an hour."""
TRACE_RETENTION_S = 3600.0
WORK_STREAM = "SP_WORK"
"""Durable invocations: a JetStream work-queue stream (file storage, fsync'd)."""
WORK_CONSUMER = "anywhere"
"""The pull consumer all nodes share for work any node may run: JetStream hands each
envelope to one node."""
LEGACY_WORK_CONSUMER = "nodes"
"""The unfiltered consumer of lattices made before placement; it would overlap the others."""
RESULTS_BUCKET = "sp_results"
DEAD_BUCKET = "sp_dead"
CANCELS_BUCKET = "sp_cancels"
"""Cancelled invocation ids: every node watches it, so one that starts later knows too."""
SCHEDULES_BUCKET = "sp_schedules"
"""The last tick submitted of each schedule (``ScheduleRun``), by ``schedule_key``."""
ISSUED_BUCKET = "sp_issued"
"""Which durable invocation ids exist (``issued_mark``), so a cancel can tell an id
that was never issued from one still queued."""
SECRETS_BUCKET = "sp_secrets"
TRUST_BUCKET = "sp_trust"
"""The lattice's trusted deployer keys: public key (``U…``) → ``TrustedKey``. Versions,
aliases, canaries and bundles signed by one of them are routed to and run; others not."""
"""``superpose secret set``: name → value (UTF-8), history 1. Read only by executors whose
function names the secret; stored encrypted at rest by the embedded server."""
TOKENS_BUCKET = "sp_tokens"
"""``superpose token create``: token id → ``TokenRecord`` (JSON; the secret's sha256, never
the secret). The gateway mirrors it, so a created or revoked token counts at once."""
TOKEN_ROLES = ("viewer", "caller", "deployer", "admin")
"""A gateway token's roles, each allowed what the one before it is and more."""

NODE_TTL_S = 15.0
"""A node that has not refreshed its entry for this long is considered gone. The worst
gap between two stored beats is a beat (2 s) plus the longest election of the nodes
bucket's leader (9 s) plus a retry's pause (0.5 s), about 11.5 s: 15 s keeps a live
node listed through any failover, where beating every second would double the writes
(docs/scaling.md, 2b and 3c)."""
NODE_HEARTBEAT_S = 2.0
RESULT_TTL_S = 24 * 3600.0
"""Durable results are kept this long, fetched by invocation id."""
DEAD_TTL_S = 7 * 24 * 3600.0
"""Dead-lettered invocations are kept this long for `superpose failed` and `replay`."""
BLOB_TTL_S = RESULT_TTL_S + 3600.0
"""Spilled arguments and results live as long as the durable results that point at them."""

ACK_WAIT_S = 10.0
"""A durable envelope whose node has not reported on it for this long is redelivered
(on a lattice of one server)."""
ACK_WAIT_REPLICATED_S = 30.0
"""The same on a replicated lattice, where a stream's leader can die. The node's
in-progress reports are lost until the work consumer has a new leader, which then
redelivers whatever was last reported on an ack wait ago. NATS's Raft waits 4-9 s
before an election and starts again after a split vote, so 10 s had a failover run
envelopes twice while their first node was alive and only waiting to store results."""


def ack_wait_s(replicas: int) -> float:
    """The work consumers' ack wait for a lattice of ``replicas`` copies of each stream."""
    return ACK_WAIT_S if replicas <= 1 else ACK_WAIT_REPLICATED_S


IN_PROGRESS_EVERY_S = 2.0
"""How often a node tells JetStream it is still working on an envelope it holds."""
DUPLICATE_WINDOW_S = 600.0
"""JetStream drops a re-published envelope with the same id within this window."""
MAX_ENVELOPE_ITEMS = 256
ATOMIC_BATCH_MAX = 1000
"""The server's limit on messages in one atomic batch publish."""
LOG_RETENTION_S = 24 * 3600.0
LOG_MAX_BYTES = 256 * 1024 * 1024

NAME_MAX_CHARS = 64
NAME_PATTERN = rf"[A-Za-z_][A-Za-z0-9_-]{{0,{NAME_MAX_CHARS - 1}}}"
"""An app, function, alias or node name, whole (``fullmatch``): the gateway's OpenAPI
document states this same pattern."""
_NAME_RE = re.compile(NAME_PATTERN)


def is_valid_name(name: str) -> bool:
    """App and function names become subject tokens, so they are kept simple."""
    return _NAME_RE.fullmatch(name) is not None


def call_subject(app: str, fn: str) -> str:
    return f"sp.call.{app}.{fn}"


CALL_WILDCARD = "sp.call.>"


def node_control_subject(node_id: str) -> str:
    """Requests addressed to one node (ping, stats)."""
    return f"sp.node.{node_id}.ctl"


def log_subject(app: str, fn: str) -> str:
    return f"sp.logs.{app}.{fn}"


def log_filter(app: str, fn: str | None = None) -> str:
    return f"sp.logs.{app}.{fn}" if fn else f"sp.logs.{app}.>"


LOGS_WILDCARD = "sp.logs.>"


def trace_subject(trace_id: str) -> str:
    return f"sp.trace.{trace_id}"


TRACES_WILDCARD = "sp.trace.>"
TRACE_PUBLISH = "sp.trace.*"
"""Recording spans: nodes for the calls they serve, callers and executors for the cached
calls they answer from the memo bucket (no node served those)."""


def needs_class(needs: dict[str, str]) -> str:
    """A short stable name for a set of needs: one consumer per set, shared by the
    nodes that satisfy it."""
    canonical = ",".join(f"{k}={v}" for k, v in sorted(needs.items()))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def work_subject(app: str, fn: str, needs: dict[str, str] | None = None) -> str:
    """Work any node may run, or work placed by needs (and pins) on its class's subject."""
    if needs:
        return f"sp.work.placed.{needs_class(needs)}.{app}.{fn}"
    return f"sp.work.any.{app}.{fn}"


WORK_WILDCARD = "sp.work.>"
WORK_ANY_FILTER = "sp.work.any.>"


def placed_filter(cls: str) -> str:
    return f"sp.work.placed.{cls}.>"


def placed_consumer(cls: str) -> str:
    return f"placed-{cls}"


def node_call_subject(node_id: str, app: str, fn: str) -> str:
    """A direct call sent to one chosen node (placement by need, pinning, warm affinity)."""
    return f"sp.node.{node_id}.call.{app}.{fn}"


def node_call_wildcard(node_id: str) -> str:
    return f"sp.node.{node_id}.call.>"


EXPRESS_QUEUE_GROUP = "exec"


def express_subject(digest: str, app: str, fn: str) -> str:
    """A warm call sent straight to the executors hosting ``digest``, past their agents.

    Every executor hosting the bundle subscribes in one queue group; one that is busy,
    or has not served the function yet, passes the call to ``call_subject`` unchanged.
    """
    return f"sp.exec.{digest}.{app}.{fn}"


def express_wildcard(digest: str) -> str:
    return f"sp.exec.{digest}.>"


def call_wildcards(app: str) -> list[str]:
    """Every subject a call of ``app`` (or ``*``: any app) travels on: direct, express,
    pinned to a node, and durable (placed or not). What a caller's permissions allow."""
    return [
        call_subject(app, ">"),
        express_subject("*", app, ">"),
        node_call_subject("*", app, ">"),
        f"sp.work.any.{app}.>",
        f"sp.work.placed.*.{app}.>",
    ]


JS_API = "$JS.API"
JS_FLOW_CONTROL = "$JS.FC.>"
"""Flow-control answers of ordered consumers (watches, object reads)."""
JS_ACKS = "$JS.ACK.>"


def object_wildcard(bucket: str) -> str:
    """Every subject of an object store's objects (writes and reads)."""
    return f"$O.{bucket}.>"


def call_subject_of_express(subject: str) -> str:
    """``sp.exec.<digest>.<app>.<fn>`` → ``sp.call.<app>.<fn>``, without decoding the call."""
    return "sp.call." + subject.split(".", 3)[3]


FORWARDED_BY_HEADER = "Sp-Forwarded-By"
"""Set on a call one node hands to another (warm affinity): the receiver reports back
when the call ends (``ForwardDone``), so the sender knows how many it has outstanding
there."""


def forward_done_subject(node_id: str) -> str:
    return f"_SPN.{node_id}.f"


NODE_LABEL = "node"
"""Every node carries this label set to its id: a pin is the need ``node=<id>``."""
CANCEL_SUBJECT = "sp.cancel"
"""Every node hears cancellations: the one running the invocation kills it."""


def node_results_subject(node_id: str) -> str:
    """The reply a node gives the durable items it runs: its executors recognise it and
    return those results with their ``done`` frame, for the agent to store."""
    return f"_SPN.{node_id}.d"


def result_key(invocation_id: str) -> str:
    """Where an invocation's result is stored: under its id, except an idempotency key's
    result, which is stored under a hash of its id (``keyed_hidden``)."""
    return keyed_hidden(invocation_id) if is_keyed(invocation_id) else invocation_id


KEYED_NAME_LABEL = b"superpose keyed result\0"


def is_keyed(invocation_id: str) -> bool:
    """An idempotency key's invocation (``idempotent_id``)."""
    kind, _, rest = invocation_id.partition(".")
    return kind == "idem" and bool(rest) and "." not in rest


def keyed_hidden(invocation_id: str) -> str:
    """The name a keyed invocation's records are stored under: a hash of its id.

    A caller may read keyed results (``idem.*``: an idempotency key is shared by
    whoever holds it), and a permission's ``*`` also admits a literal ``*``, so a read
    of ``idem.*`` answers the newest keyed record of anyone's. Stored under a hash, and
    its result sealed with the id (``lattice/results.py``), that record gives away
    neither the id nor the value: the id is the capability, as a blob's is."""
    digest = hashlib.sha256(KEYED_NAME_LABEL + invocation_id.encode()).hexdigest()
    return idempotent_id(digest[:40])


def results_subject(key: str) -> str:
    """The JetStream subject of a key in the results bucket (what a watch filters on)."""
    return kv_subject(RESULTS_BUCKET, key)


def durable_id(client_id: str, seq: int) -> str:
    return f"{client_id}.{seq:x}"


def direct_id(client_id: str, seq: int) -> str:
    """A direct call's id: one token (it ends its reply subject), unique to the client
    (the owner, if any, is left out: the reply subject already starts with it)."""
    return f"{client_id.rpartition('.')[2]}{seq:x}"


def idempotent_id(key_digest: str) -> str:
    """A caller's idempotency key names the invocation, so a repeat finds the first."""
    return f"idem.{key_digest}"


def schedule_key(app: str, fn: str) -> str:
    return f"{app}.{fn}"


def schedule_invocation_id(app: str, fn: str, tick_ms: int) -> str:
    """One tick of a schedule names its invocation, whichever node submits it: the work
    stream's de-duplication then keeps one of the nodes' submissions."""
    function = hashlib.sha256(f"{app}\0{fn}".encode()).hexdigest()[:20]
    return f"sched.{function}-{tick_ms}"


_ID_PART = "[A-Za-z0-9_-]{1,64}"
INVOCATION_ID_PATTERN = rf"{_ID_PART}(\.{_ID_PART}){{0,2}}"
"""An invocation (or trace) id, whole: a client's ``durable_id`` (``<owner>.<client>.<n>``,
or ``<client>.<n>`` from a client with no owner), an ``idempotent_id``, or a direct
call's id."""
INVOCATION_ID_MAX_CHARS = 3 * 64 + 2
_ID_RE = re.compile(INVOCATION_ID_PATTERN)
_SEQ_RE = re.compile("[1-9a-f][0-9a-f]*")


def is_valid_invocation_id(text: str) -> bool:
    return _ID_RE.fullmatch(text) is not None


def issued_mark(invocation_id: str) -> tuple[str, int] | None:
    """Where the issued bucket records a durable id, and the number it must reach.

    A client's ids (``durable_id``) are numbered in order from 1, so one key per
    client, holding the highest number it has persisted, records them all; an
    idempotency key's id is recorded under itself (number 0). None: not a durable id.
    """
    if not is_valid_invocation_id(invocation_id):
        return None
    kind, _, rest = invocation_id.partition(".")
    if kind in ("idem", "sched") and rest and "." not in rest:  # a key's id, a tick: by name
        return (keyed_hidden(invocation_id) if kind == "idem" else invocation_id), 0
    head, _, tail = invocation_id.rpartition(".")  # the client's id, its number
    if not head:
        return None
    if _SEQ_RE.fullmatch(tail) is None:  # as ``durable_id`` writes it: no 0x, no leading 0
        return None
    return head, int(tail, 16)


CLIENT_PREFIX = "_SP"
INBOX_PREFIX = "_INBOX"


def client_id(owner: str | None, unique: str) -> str:
    """A client's id: ``<owner>.<unique>`` when it knows the user it connects as (the
    name in its credentials), so every subject and durable id of the client starts with
    the owner and the user's permissions can be pinned to it (``security/roles.py``)."""
    return f"{owner}.{unique}" if owner else unique


def client_prefix(owner: str) -> str:
    """Every subject of the clients of ``owner`` is under this (``reply_subject``…)."""
    return f"{CLIENT_PREFIX}.{owner}"


def inbox_prefix(owner: str) -> str:
    """The inbox prefix of a connection of ``owner`` (nats-py's ``inbox_prefix``)."""
    return f"{INBOX_PREFIX}.{owner}"


def reply_subject(client_id: str, invocation_id: str) -> str:
    return f"_SP.{client_id}.r.{invocation_id}"


def reply_wildcard(client_id: str) -> str:
    return f"_SP.{client_id}.r.*"


DURABLE_NOTIFY_TOKEN = "durable"
"""The last token of a client's durable notification subject (not hex: no invocation id)."""


def durable_notify_subject(client_id: str) -> str:
    """Where nodes tell a client that durable results of its are stored: a msgpack
    array of encoded ``Result``s (``pack_results``), one message per stored batch.
    Under the reply wildcard, like the log subject: one subscription takes a call's
    output before the result that follows it."""
    return reply_subject(client_id, DURABLE_NOTIFY_TOKEN)


NOTIFY_MAX_BYTES = 512 * 1024
"""Encoded results per notification message, under NATS's default 1 MiB max_payload."""


CLIENT_LOG_TOKEN = "log"
"""The last token of a client's log subject: never an invocation id, which is hex."""


def client_log_subject(client_id: str) -> str:
    """Under the client's reply wildcard, so its one subscription takes a call's output and
    then its result in the order the executor published them (two subscriptions are two
    tasks in nats-py, and a result could overtake the lines printed before it)."""
    return reply_subject(client_id, CLIENT_LOG_TOKEN)


def offers_subject(client_id: str) -> str:
    """Where a client (or an executor's client) answers pulls of the payloads it offers
    (``OfferPull``, ``OfferRelease``)."""
    return f"_SP.{client_id}.b"


OFFER_GONE_HEADER = "Sp-Gone"
"""Set on the empty answer to a pull of a payload that is no longer offered."""


def progress_subject(client_id: str) -> str:
    """Where nodes tell a client which of its calls they still hold."""
    return f"_SP.{client_id}.p"


def http_stream_subject(client_id: str, invocation_id: str) -> str:
    """Where an executor publishes the body parts of a streamed HTTP response."""
    return f"_SP.{client_id}.s.{invocation_id}"


def http_stream_wildcard(client_id: str) -> str:
    return f"_SP.{client_id}.s.*"


def client_of_reply(reply: str) -> str | None:
    """The client id in a reply subject made by ``reply_subject``, else None."""
    parts = reply.split(".")
    if len(parts) in (4, 5) and parts[0] == CLIENT_PREFIX and parts[-2] == "r":
        return ".".join(parts[1:-2])
    return None


PROGRESS_INTERVAL_S = 1.0
"""How often a node reports the calls it has held at least this long."""
LOST_AFTER_S = 10.0
"""A call no node has reported for this long is lost (its node died): retried or failed."""
PROGRESS_MAX_IDS = 4096


# registry keys (JetStream KV keys allow [-/_=.a-zA-Z0-9])
def version_key(app: str, version: str) -> str:
    return f"ver.{app}.{version}"


def version_id(code: str, env: str) -> str:
    """A version's id: its code digest plus its environment digest.

    Versions with no environment keep their code digest as their id (so those deployed
    before environments existed keep theirs); the same code with another environment is
    another version, live beside the first.
    """
    if not env:
        return code
    return hashlib.sha256(f"code {code}\nenv {env}".encode()).hexdigest()


def alias_key(app: str, alias: str) -> str:
    return f"alias.{app}.{alias}"


ALIAS_WILDCARD = "alias.>"
"""Every alias of every app (what a watch for alias moves filters on)."""


def app_key(app: str) -> str:
    return f"app.{app}"


def placement_key(cls: str) -> str:
    """A needs class in use: nodes satisfying it pull from its consumer."""
    return f"place.{cls}"


SECRET_NAME_RULE = "capital letters, digits and _, not starting with a digit, at most 128"
_SECRET_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
ENV_NAME_RULE = "letters, digits and _, not starting with a digit, at most 128"
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_ENV_PREFIX = "SUPERPOSE_"
"""The executor's own settings: a function's secrets and env may not set them."""


def is_valid_secret_name(name: object) -> bool:
    """Secret names become environment variables and key-value keys alike."""
    return isinstance(name, str) and bool(_SECRET_RE.match(name))


def is_valid_env_name(name: object) -> bool:
    return isinstance(name, str) and bool(_ENV_NAME_RE.match(name))


def secret_key(name: str) -> str:
    return name


def pin_key(app: str, fn: str) -> str:
    return f"pin.{app}.{fn}"


def canary_key(app: str) -> str:
    return f"canary.{app}"


def lock_key(app: str) -> str:
    return f"lock.{app}"


def bundle_manifest_name(digest: str) -> str:
    return f"bundle/{digest}"


def file_object_name(file_digest: str) -> str:
    return f"file/{file_digest}"


def blob_object_name(blob_id: str) -> str:
    return f"blob/{blob_id}"


# JetStream Object Store layout (the same as nats-py and the nats CLI use)
def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def object_meta_subject(bucket: str, encoded_name: str) -> str:
    return f"$O.{bucket}.M.{encoded_name}"


def object_chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


# JetStream key-value layout (the same as nats-py and the nats CLI use): for the
# streams made by hand with settings nats-py lacks, and for reading many keys at once
def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def kv_wildcard(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def kv_key(bucket: str, subject: str) -> str:
    """The key in a subject made by ``kv_subject``."""
    return subject.removeprefix(kv_subject(bucket, ""))


RESULTS_STREAM = kv_stream(RESULTS_BUCKET)
"""Made by hand, laid out as a key-value bucket, for atomic batch writes."""


# JetStream API requests made by hand: for settings and batch operations nats-py lacks
def stream_info_subject(stream: str) -> str:
    return f"$JS.API.STREAM.INFO.{stream}"


def stream_create_subject(stream: str) -> str:
    return f"$JS.API.STREAM.CREATE.{stream}"


def consumer_create_subject(stream: str, consumer: str) -> str:
    """Create (or, with the same configuration, open) a durable consumer."""
    return f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"


def consumer_info_subject(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"


def consumer_delete_subject(stream: str, consumer: str) -> str:
    return f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}"


def consumer_next_subject(stream: str, consumer: str) -> str:
    """Pull requests for a pull consumer's next messages."""
    return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def direct_get_subject(stream: str) -> str:
    """Direct gets from a stream (``allow_direct``): the last message of many subjects."""
    return f"$JS.API.DIRECT.GET.{stream}"


def direct_get_last_subject(stream: str, subject: str) -> str:
    """A direct get of the last message on one ``subject``: the subject is in the
    request's own, so a user's permissions can narrow which it may read."""
    return f"{direct_get_subject(stream)}.{subject}"


# What an executor's own NATS user may do (``security/executor_identity.py``)
def executor_offers_owner(executor_id: str) -> str:
    """The owner token of the payloads an executor process itself offers (big results):
    its client's offers are under ``executor_id``, so these take another name it owns."""
    return f"{executor_id}x"


ANY_CLIENT_ID = ("*", "*.*")
"""Wildcards for a client id in a subject: one token, or ``<owner>.<unique>``
(``client_id``) for a client that knows the user it connects as."""


def executor_publish_allowed(me: str) -> list[str]:
    """Subjects an executor named ``me`` may publish on: calls (nested, and express ones
    passed on), durable submissions, replies and parts to any caller, offer pulls, logs,
    cancels, its own issued records, and the JetStream API requests a nested call needs.
    Nothing on a node's control subject, no registry, bundle, secret or token writes."""
    kv_api = [f"$JS.API.CONSUMER.CREATE.{kv_stream(NODES_BUCKET)}{tail}" for tail in ("", ".>")]
    return [
        "sp.call.>",
        "sp.exec.>",
        "sp.work.>",
        node_call_wildcard("*"),
        LOGS_WILDCARD,
        CANCEL_SUBJECT,
        *(reply_subject(client, ">") for client in ANY_CLIENT_ID),
        *(http_stream_subject(client, ">") for client in ANY_CLIENT_ID),
        *(offers_subject(client) for client in ANY_CLIENT_ID),
        RESOLVE_SUBJECT,
        PLACE_SUBJECT,
        "_INBOX.>",  # results of calls made with a plain request (the agent hands them over)
        kv_subject(ISSUED_BUCKET, me),
        kv_subject(ISSUED_BUCKET, "idem.*"),
        kv_subject(CANCELS_BUCKET, "*"),
        object_wildcard(BLOBS_BUCKET),
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",  # nats-py's object get finds the stream by subject
        stream_info_subject("*"),
        direct_get_last_subject(RESULTS_STREAM, results_subject(f"{me}.*")),
        direct_get_last_subject(RESULTS_STREAM, results_subject(idempotent_id("*"))),
        results_subject(f"{me}.*"),
        *blob_reads(),
        *kv_api,
        f"{direct_get_subject(kv_stream(NODES_BUCKET))}.>",
        "$JS.FC.>",
        *executor_ref_subjects(me),
        TRACE_PUBLISH,
        # lattice-wide dicts and queues only: an app's are its app user's (below)
        *shared_state_publish([SHARED_SCOPE]),
        *lineage_allowed(),
    ]


def executor_ref_subjects(me: str) -> list[str]:
    """Object references from inside a function: its own ``sp_refs`` records, leases to
    any holder, and the durable objects (written whole, read by name only: the forms
    of ``blob_reads``, never ``STREAM.MSG.GET`` or an unnamed consumer)."""
    return [
        ref_records_of(me),
        *(ref_keep_subject(client) for client in ANY_CLIENT_ID),
        object_wildcard(OBJECTS_BUCKET),
        *blob_reads(OBJECTS_BUCKET),
    ]


def executor_app_allowed(app: str) -> list[str]:
    """What an executor's *app user* may publish besides the rest: its app's own dicts,
    queues and cache entries (``app``: a template naming the user's ``app`` tag, which
    only the user minted for its ``Load`` carries; the neutral user has none of them)."""
    return [*shared_state_publish([app_scope(app)]), *executor_memo_allowed(app)]


def executor_memo_allowed(app: str) -> list[str]:
    """``app``'s cache: store the results of its cached calls this executor runs, and,
    for cached nested calls, claim and drop keys and read results and claims by key. No
    batch direct get: its request subject names no key, so it cannot be pinned."""
    granted = [object_wildcard(MEMO_VALUES_BUCKET), *blob_reads(MEMO_VALUES_BUCKET)]
    for bucket in (MEMO_BUCKET, MEMO_CLAIMS_BUCKET):
        keys = kv_subject(bucket, f"{app}.>")
        granted += [keys, direct_get_last_subject(kv_stream(bucket), keys)]
    return granted


def executor_publish_denied() -> list[str]:
    """Named although the allow list already leaves them out: a later widening of it
    must not reopen these (registry and alias writes, bundles and built environments,
    secrets, tokens, nodes)."""
    return [
        kv_wildcard(REGISTRY_BUCKET),
        kv_wildcard(SECRETS_BUCKET),
        kv_wildcard(TOKENS_BUCKET),
        f"$O.{BUNDLES_BUCKET}.>",
        object_wildcard(ENVS_BUCKET),
        node_control_subject("*"),
        direct_get_subject(kv_stream(SECRETS_BUCKET)),
        direct_get_subject(kv_stream(TOKENS_BUCKET)),
        f"{direct_get_subject(kv_stream(SECRETS_BUCKET))}.>",
        f"{direct_get_subject(kv_stream(TOKENS_BUCKET))}.>",
        f"$JS.API.CONSUMER.CREATE.{object_stream(BUNDLES_BUCKET)}.>",
        f"$JS.API.STREAM.MSG.GET.{object_stream(BLOBS_BUCKET)}",  # blobs by sequence
        f"$JS.API.CONSUMER.CREATE.{object_stream(BLOBS_BUCKET)}",  # unnamed: every blob
        f"$JS.API.CONSUMER.CREATE.{kv_stream(SECRETS_BUCKET)}.>",
        f"$JS.API.CONSUMER.CREATE.{kv_stream(TOKENS_BUCKET)}.>",
        f"$JS.API.CONSUMER.CREATE.{kv_stream(RESULTS_BUCKET)}.>",
        direct_get_subject(RESULTS_STREAM),
        direct_get_subject(kv_stream(REGISTRY_BUCKET)),
        f"{direct_get_subject(kv_stream(REGISTRY_BUCKET))}.>",
        f"$JS.API.CONSUMER.CREATE.{kv_stream(REGISTRY_BUCKET)}",
        f"$JS.API.CONSUMER.CREATE.{kv_stream(REGISTRY_BUCKET)}.>",
    ]


def executor_subscribe_allowed(me: str, bundle: str) -> list[str]:
    """Its own client's subjects and inboxes, its own offers, and the express calls of
    the bundle it hosts (``bundle``: a template naming the user's ``bundle`` tag, which
    only the user minted for its ``Load`` carries; ``security/executor_identity.py``)."""
    return [
        f"_SP.{me}.>",
        f"_SP.{executor_offers_owner(me)}.>",
        f"{executor_inbox_prefix(me)}.>",
        express_wildcard(bundle),
    ]


def executor_inbox_prefix(me: str) -> str:
    """The inbox prefix of an executor's connection (JetStream acks, requests' answers)."""
    return f"_INBOX.{me}"


# --- payload codecs -------------------------------------------------------------

CODEC_PICKLE = "pickle"
CODEC_JSON = "json"
CODEC_HTTP = "http"
"""Arguments are an encoded ``HttpRequest`` and the result an ``HttpResponse``: the
entry point is an ASGI app, run by the executor as one HTTP request."""

HTTP_FUNCTION = "http"
"""The function name deploy ``--asgi`` registers for an app's ASGI entry point."""
HTTP_PART_MAX_BYTES = 256 * 1024
"""A streamed body chunk larger than this travels as several parts."""

# --- error kinds ------------------------------------------------------------------

ERR_RAISED = "raised"
"""The user function raised an exception."""
ERR_TIMEOUT = "timeout"
ERR_CRASHED = "crashed"
"""The executor process died (os._exit, segfault, killed)."""
ERR_MEMORY = "memory"
ERR_NOT_FOUND = "not_found"
ERR_BAD_REQUEST = "bad_request"
ERR_INTERNAL = "internal"
ERR_CANCELLED = "cancelled"
ERR_LOST = "lost"
"""A durable invocation whose node died on every one of its deliveries."""
ERR_PREPARE = "prepare"
"""The executor could not be made ready for the call: its environment failed to build,
or the app's start-up hook (``@sp.on_start``) raised."""
INFRASTRUCTURE_ERRORS = frozenset({ERR_CRASHED, ERR_INTERNAL, ERR_TIMEOUT, ERR_MEMORY})
"""Failures retried within a function's retry budget whatever the function says."""


# --- messages --------------------------------------------------------------------
#
# Every message is a msgspec Struct, encoded as a msgpack map whose first key, ``t``,
# is its type tag with a version: a message of another kind or version fails loudly.
# The maps are the ones the dataclass codec before msgspec wrote (same keys, same
# tags), so stored envelopes, results and dead letters survive an upgrade.

Buffer: TypeAlias = bytes | bytearray | memoryview
"""What a decoder reads: NATS hands over bytes, a pulled offer is a bytearray."""


class ProtocolError(ValueError):
    """Bytes that are not the message they should be: not msgpack, another type or
    version, a field missing or of the wrong type.

    The one error every decoder here raises, so a reader of untrusted bytes (any
    subscriber: anyone may publish anything) needs one except clause. A ValueError,
    like what the decoders raised before, so an ``except ValueError`` keeps working.
    """


class Message(msgspec.Struct, tag_field="t", omit_defaults=True):
    """A message on the wire: a msgpack map tagged with its type and version (``t``).

    Fields at their defaults are left out: the decoder fills them in, as the dataclass
    decoders did, and most fields of most messages are at their defaults. Keys a
    decoder does not know are ignored, so a field added later with a default is not
    a new version (the dataclass decoders refused them: add none while those run).
    """

    TYPE: ClassVar[str]
    """The tag, e.g. ``sp.invocation.v1`` (set from the class's ``tag`` below)."""

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, data: Buffer) -> Self:
        """The message in ``data``, or ProtocolError saying why it is not one of ``cls``."""
        try:
            message = _MESSAGES.decode(data)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise _refusal(cls.TYPE, data, exc) from None
        if not isinstance(message, cls):  # a valid message, of another type
            raise ProtocolError(f"expected a {cls.TYPE} message, got {message.TYPE}")
        return message


class Payload(msgspec.Struct, omit_defaults=True):
    """Arguments or a result: inline bytes, or a reference to a spilled blob."""

    codec: str
    data: bytes | None = None
    blob: str | None = None
    size: int = 0
    source: str | None = None
    """Where the blob is offered for pulling (a direct call's big payload,
    ``lattice/offers.py``); None: the blob is in the object store."""
    shm: str | None = None
    """The offer's shared-memory file on its holder's host (``lattice/shm.py``): a
    reader there maps it instead of pulling; its unguessable name is the capability."""


class CallContext(msgspec.Struct, omit_defaults=True):
    """What follows a call down the call graph: who to tell about prints, tracing, and
    the version context (session key and pins) every nested call resolves versions with."""

    log_to: str | None = None
    trace_id: str | None = None
    parent_id: str | None = None
    depth: int = 0
    session: str | None = None
    """The session a canary split hashes: the same session sees the same versions."""
    pins: dict[str, str] | None = None
    """App → version for this request's whole call graph (``X-Superpose-Pin``)."""
    trace: bool = False
    """Record a span per call of this graph (which version answered, where, how long)."""


class ExecutorSettings(msgspec.Struct, omit_defaults=True, frozen=True):
    """What a function's executor starts with besides its bundle: the names of the
    secrets it reads (their values never travel in a call) and the environment
    variables it sets (``@sp.function(secrets=[...], env={...})``). Executors are
    kept per bundle and settings, so one function's values reach no other's."""

    secrets: list[str] = []
    env: dict[str, str] = {}

    def digest(self) -> str:
        """A short name for these settings (of names and env values, never secrets')."""
        text = _JSON_ENCODER.encode([sorted(self.secrets), sorted(self.env.items())])
        return hashlib.sha256(text).hexdigest()[:16]


def host_key(digest: str, env: str = "", settings: ExecutorSettings | None = None) -> str:
    """What a node keeps executors by, lists as warm, and names their express subject
    after: the bundle digest, then ``+`` its environment digest when it has one (an
    executor with one environment never serves another), then ``-`` its settings'
    digest when it has settings (one function's secrets reach no other's)."""
    key = f"{digest}+{env}" if env else digest
    return key if settings is None else f"{key}-{settings.digest()}"


class MemoAsk(msgspec.Struct, frozen=True):
    """Sent with the one invocation that runs a cached call's key: its executor checks
    that the key is the hash of what it runs (``node/executor/memo_writes.py``) and, if
    so, stores the result under it for ``ttl_s``."""

    key: str
    ttl_s: float


class Invocation(Message, tag="sp.invocation.v1"):
    """One request to run a function: addresses only, so any node can serve it."""

    id: str
    app: str
    fn: str
    digest: str
    module: str
    qualname: str
    args: Payload
    deadline: float
    """Absolute wall-clock deadline (epoch seconds) after which the caller stops waiting."""
    timeout_s: float | None = None
    """Caller's override of the function's own timeout."""
    memory_mb: int | None = None
    """Caller's override of the function's own memory limit."""
    ctx: CallContext = msgspec.field(default_factory=CallContext)
    attempt: int = 1
    retries: int = 0
    """Durable invocations: attempts after the first the node may make."""
    retry_on: list[str] | None = None
    """Exception type names a durable invocation is retried on (infrastructure always is)."""
    not_before: float = 0.0
    """A retry waits until this epoch time (exponential backoff with jitter)."""
    notify: str | None = None
    """Durable invocations: where the node tells the caller, once the result is stored."""
    needs: dict[str, str] | None = None
    """Node labels the invocation must run on (a pin is ``{"node": id}``)."""
    env: str = ""
    """The environment digest its executor runs with ("" = the node's own packages)."""
    settings: ExecutorSettings | None = None
    """Its function's secrets (names) and env: it runs in an executor of its own."""
    memo: MemoAsk | None = None
    """A cached call's key, for its executor to store the result under."""

    @property
    def host(self) -> str:
        """The executors that may run it (``host_key``): its bundle, environment, settings."""
        return host_key(self.digest, self.env, self.settings)

    def remaining_s(self) -> float:
        return self.deadline - time.time()


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    kind: str
    type: str
    message: str
    traceback: str = ""
    types: list[str] = []
    """The exception's class and its bases, so ``retry_on`` can match a base class."""
    exception: bytes = b""
    """The raised exception's class name and state, pickled, for the caller to raise the
    same class (``payload.encode_exception``); b"" when it cannot travel."""


class Result(Message, tag="sp.result.v1"):
    """The answer to one invocation: a value or an error, and who served it."""

    id: str
    node: str
    value: Payload | None = None
    error: ErrorInfo | None = None
    duration_s: float = 0.0
    attempts: int = 1
    finished: float = 0.0
    """Epoch seconds when a durable result was stored."""


class LogRecord(Message, tag="sp.log.v1"):
    app: str
    fn: str
    node: str
    invocation: str
    stream: str
    """"stdout", "stderr", "log", or ``LOG_ERROR``: the call raised, and ``line`` is
    what it raised on its first line, then the traceback."""
    line: str
    ts: float


LOG_ERROR = "error"
"""``LogRecord.stream`` of a call's error: for the app's log stream, never its caller."""


class Progress(Message, tag="sp.progress.v1"):
    """A node still holds these calls of one client (queued or running)."""

    node: str
    ids: list[str]


class NodeInfo(Message, tag="sp.node.v1"):
    """What a node advertises in the nodes bucket, refreshed every heartbeat."""

    id: str
    host: str
    pid: int
    labels: dict[str, str]
    slots: int
    busy: int = 0
    queued: int = 0
    warm: list[str] = []
    """What its executors host: ``host_key`` (bundle, environment, settings) of each."""
    started: float = 0.0
    seen: float = 0.0
    served: int = 0
    cold_loads: int = 0
    """Bundles this node has loaded into a new executor since it started."""
    express: int = 0
    """Of ``served``, calls a client sent straight to one of this node's warm executors."""
    traffic: dict[str, int] = {}
    """Calls served per ``app@digest`` since the node started (canary splits)."""
    python: str = ""
    """``3.11``: the Python its executors run; environments are resolved for it."""
    platform: str = ""
    """The platform environments are resolved and built for (uv's ``--python-platform``,
    e.g. ``x86_64-manylinux_2_28``)."""
    envs: list[str] = []
    """Environment digests built and cached on this node."""
    sandbox: str = ""
    """How it confines user code: ``none``, ``user`` or ``bwrap`` ("" from older nodes)."""


class Envelope(Message, tag="sp.work.v1"):
    """Durable invocations travelling together: one stream write, one ack, one node.

    Clients pack a burst of submissions into envelopes so the fsync per write is
    paid per envelope, not per invocation; a lone spawn is an envelope of one.
    """

    id: str
    items: list[bytes]
    """Encoded ``Invocation``s."""


class DeadLetter(Message, tag="sp.dead.v1"):
    """A durable invocation that failed its last attempt, kept for inspection and replay."""

    id: str
    app: str
    fn: str
    invocation: bytes
    error: ErrorInfo
    attempts: int
    failed: float


class Cancel(Message, tag="sp.cancel.v1"):
    """Stop these invocations: queued ones are dropped, running ones killed."""

    ids: list[str]


class Span(Message, tag="sp.span.v1"):
    """One call of a traced request: which version of which function answered, and where."""

    trace_id: str
    id: str
    parent_id: str | None
    app: str
    fn: str
    digest: str
    node: str
    started: float
    duration_s: float
    ok: bool
    session: str | None = None
    cached: bool = False
    """Answered from the memo bucket by its caller: no node ran it (``node`` is ``cache``)."""


class HttpRequest(Message, tag="sp.http.request.v1"):
    """One HTTP request for an ASGI app: the arguments of a ``CODEC_HTTP`` invocation.

    ``path`` and ``raw_path`` are the whole path the gateway received, ``root_path``
    its ``/<app>`` prefix: ASGI servers do the same, and Starlette strips the
    prefix for routing while building URLs (redirects, ``url_for``) from the whole.
    """

    method: str
    path: str
    raw_path: bytes
    query: bytes
    root_path: str
    headers: list[list[bytes]]
    """``[name, value]`` pairs, names lower-case, in the order received."""
    body: bytes = b""
    scheme: str = "http"
    http_version: str = "1.1"
    client: list[Any] | None = None
    """``[host, port]`` of the HTTP client, as the gateway saw it."""
    server: list[Any] | None = None


class HttpResponse(Message, tag="sp.http.response.v1"):
    """The answer of an ASGI app: the result of a ``CODEC_HTTP`` invocation.

    A streamed response sent its body as ``parts`` ``HttpPart``s before this
    message, and ``body`` is empty; otherwise the whole body is here.
    """

    status: int
    headers: list[list[bytes]]
    body: bytes = b""
    parts: int = 0


class HttpPart(Message, tag="sp.http.part.v1"):
    """One chunk of a streamed HTTP response body, on ``http_stream_subject``.

    Part 0 also carries the status and headers, so the gateway can start its
    answer before the app has finished.
    """

    seq: int
    body: bytes
    status: int = 0
    headers: list[list[bytes]] = []


AnyMessage: TypeAlias = (
    Invocation
    | Result
    | LogRecord
    | Progress
    | NodeInfo
    | Envelope
    | DeadLetter
    | Cancel
    | Span
    | HttpRequest
    | HttpResponse
    | HttpPart
)
"""Every tagged message: one decoder reads them all, and says which one it got."""
MESSAGE_TYPES: tuple[type[Message], ...] = get_args(AnyMessage)

for _type in MESSAGE_TYPES:
    _type.TYPE = str(_type.__struct_config__.tag)

_ENCODER = msgspec.msgpack.Encoder()
_MESSAGES = msgspec.msgpack.Decoder(AnyMessage)


def _refusal(expected: str, data: Buffer, reason: Exception) -> ProtocolError:
    """Why ``data`` is not a message of type ``expected``: the tag it has instead, or
    what msgspec found wrong (with the path of the bad field). Reads ``data`` a second
    time, untyped: only a refused message pays for the better error."""
    try:
        raw = msgspec.msgpack.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return ProtocolError(f"malformed {expected} message: {reason}")
    if not isinstance(raw, dict):
        return ProtocolError(f"expected a {expected} message, got a {type(raw).__name__}")
    tag = raw.get("t")
    if tag is None:
        return ProtocolError(f"expected a {expected} message, got an untagged one")
    if tag != expected:
        return ProtocolError(f"expected a {expected} message, got {tag!r}")
    return ProtocolError(f"malformed {expected} message: {reason}")


# --- durable notifications ------------------------------------------------------

_NOTIFICATION = msgspec.msgpack.Decoder(list[bytes])


def pack_results(encoded: list[bytes]) -> list[bytes]:
    """Notification messages carrying ``encoded`` results, each under NOTIFY_MAX_BYTES
    (a result is inline only up to the 256 KiB spill threshold, so any one fits).

    A notification is a plain msgpack array of encoded ``Result``s, untagged: the
    results inside carry their tags, and the array is what clients already read."""
    messages: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for data in encoded:
        if group and size + len(data) > NOTIFY_MAX_BYTES:
            messages.append(_ENCODER.encode(group))
            group, size = [], 0
        group.append(data)
        size += len(data) + 8
    if group:
        messages.append(_ENCODER.encode(group))
    return messages


def unpack_results(data: Buffer) -> list[bytes]:
    """The encoded results in a notification (each still to be decoded)."""
    try:
        return _NOTIFICATION.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"a durable notification is not an array of results: {exc}") from None


# --- agent ↔ executor frames -----------------------------------------------------
#
# What a node agent and its executor subprocesses say over their socket pair
# (``node/channel.py`` adds a length prefix to each). Two sets, one per direction,
# each a tagged union decoded in one call: a request and its answer may share an
# ``op`` (``quiet``, ``stack``) because they travel in opposite directions.


class Frame(msgspec.Struct, tag_field="op", omit_defaults=True):
    """One frame: a msgpack map tagged with its ``op``.

    No version in the tag: an executor is started by its agent, from the same
    installation, so both ends always speak the same frames.
    """


# from the agent to an executor


class Load(Frame, tag="load"):
    """Collapse into this bundle (at ``path``); answered by ``Loaded``."""

    digest: str
    path: str
    app: str
    express: bool = True
    """Also take warm calls that clients send straight to executors of this bundle."""
    site_packages: str = ""
    """The built environment's site-packages to import user packages from ("" = none)."""
    env: str = ""
    """That environment's digest: express calls of another environment are passed on."""
    key: str = ""
    """``host_key``: the express subject it takes calls on ("" = ``digest``)."""
    settings: ExecutorSettings | None = None
    """Secrets (by name) and env to set before any import."""
    secret_values: dict[str, str] = {}
    """The values of ``settings.secrets``, read by the agent: an executor's own NATS
    user may not read the secrets bucket (``security/executor_identity.py``)."""
    express_creds: str = ""
    """A creds file's text for a second NATS user of this executor's, tagged with its
    host key and its app (its *app user*): the only user that may subscribe to
    ``express_wildcard(key)`` and touch the app's dicts, queues and cache entries ("" =
    do it all on the executor's own connection, as a node's creds may)."""


class Describe(Frame, tag="describe"):
    """Import and inspect one function; answered by a ``Described`` with the same key."""

    key: str
    module: str
    qualname: str


class Run(Frame, tag="run"):
    """Queue one invocation (encoded, as it came); its result goes to ``reply``."""

    inv: bytes
    reply: str


class StackQuery(Frame, tag="stack"):
    """Where is this call now? (It timed out.) Answered by ``Stack``."""

    id: str


class Quiet(Frame, tag="quiet"):
    """Take no more express calls; answered by ``Quieted`` once the ones already
    delivered have been passed on."""


# from an executor to its agent


class Ready(Frame, tag="ready"):
    """Started: imports done, connected to NATS."""

    pid: int


class Loaded(Frame, tag="loaded"):
    """Loaded, or not: ``error`` (kind ``prepare``) says why, e.g. a secret not set."""

    error: ErrorInfo | None = None


class Described(Frame, tag="described"):
    """What ``Describe`` found: the function's ``meta`` (``is_async`` and its node
    options), or the ``error`` that importing or finding it raised."""

    key: str
    meta: dict[str, Any] | None = None
    error: ErrorInfo | None = None


class Start(Frame, tag="start"):
    """A queued call began (sync calls may wait in the lane first)."""

    id: str


class Done(Frame, tag="done"):
    """A call finished. A durable item's encoded ``Result`` rides along: the agent
    stores it, no trip through NATS."""

    id: str
    ok: bool
    result: bytes | None = None


class Block(Frame, tag="block"):
    """This call waits on calls of its own: its slot is free meanwhile."""

    id: str


class Unblock(Frame, tag="unblock"):
    """This call resumed: it takes a slot again."""

    id: str


class Took(Frame, tag="took"):
    """This executor took a call a client sent it directly (express), and started it:
    the agent accounts for it as if it had sent it (a ``Done`` follows)."""

    inv: bytes
    reply: str


class Quieted(Frame, tag="quiet"):
    pass


class Retire(Frame, tag="retire"):
    """A start-up hook failed here: send nothing more, and close this executor (the
    calls it still holds are answered with ``error``)."""

    error: ErrorInfo


class Stack(Frame, tag="stack"):
    """Where a call is now: a traceback of its frames, "" if it is not running here."""

    id: str
    stack: str


FromAgent: TypeAlias = Load | Describe | Run | StackQuery | Quiet
FromExecutor: TypeAlias = (
    Ready | Loaded | Described | Start | Done | Block | Unblock | Took | Quieted | Stack | Retire
)

_FROM_AGENT = msgspec.msgpack.Decoder(FromAgent)
_FROM_EXECUTOR = msgspec.msgpack.Decoder(FromExecutor)


def encode_frame(frame: Frame) -> bytes:
    return _ENCODER.encode(frame)


def decode_from_agent(data: Buffer) -> FromAgent:
    """A frame an executor received, or ProtocolError."""
    try:
        return _FROM_AGENT.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed frame from the agent: {exc}") from None


def decode_from_executor(data: Buffer) -> FromExecutor:
    """A frame an agent received, or ProtocolError."""
    try:
        return _FROM_EXECUTOR.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed frame from an executor: {exc}") from None


# --- registry records ----------------------------------------------------------------
#
# The values of the registry bucket are JSON, readable with ``nats kv get``: an app's
# entry, each version deployed, an app's canary, its runtime locks, and the needs
# classes durable work was placed by. An alias is an ``AliasRecord`` (before signing:
# a bare version id, still read); a pin is a bare node id.


class Record(msgspec.Struct):
    """A JSON value of the registry bucket."""

    def as_json(self) -> bytes:
        return _JSON_ENCODER.encode(self)

    @classmethod
    def from_json(cls, data: Buffer) -> Self:
        """The record in ``data``, or ProtocolError saying why it is not one."""
        try:
            return msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"malformed {cls.__name__} record: {exc}") from None


class AppRecord(Record):
    """``app.<app>``: the app exists (deploy writes it with each version)."""

    created: float = 0.0


class Signature(msgspec.Struct, omit_defaults=True, frozen=True):
    """The arguments a function takes, recorded at deploy (read from its source) and
    taken from the function itself in script mode: a call that does not fit fails
    where it is made, naming the parameter, instead of on a node."""

    positional: list[str] = []
    """Parameters an argument can fill by position, in order (positional-only first)."""
    positional_only: int = 0
    """How many of ``positional`` cannot be given by keyword."""
    required: int = 0
    """How many of ``positional``, from the first, have no default."""
    varargs: bool = False
    """``*args``: more positional arguments are taken."""
    keyword_only: list[str] = []
    keyword_required: list[str] = []
    """Keyword-only parameters with no default."""
    varkw: bool = False
    """``**kwargs``: any other keyword is taken."""


class Environment(Record):
    """``env.<digest>``: one resolved environment, never replaced, only added.

    Resolved once (at deploy, or at a script's first call) into a lock of exact,
    hashed pins; built once by the first node that needs it; pulled by the rest.
    """

    digest: str
    """``env_digest(requirements, python, platform)``."""
    python: str
    """``3.11``."""
    platform: str
    requirements: str
    """The resolved lock: every package pinned with its hashes (``uv pip compile
    --generate-hashes`` output), what nodes install with ``--require-hashes``."""
    packages: dict[str, str]
    """Name → version of every resolved package, for people (``lock --show``, ``env ls``)."""
    declared: list[str]
    """What the app asked for, as written (``numpy>=2``)."""
    created: float


def env_digest(requirements: str, python: str, platform: str) -> str:
    """An environment's content address: its lock, for which Python, on which platform."""
    text = f"python {python}\nplatform {platform}\n{requirements}"
    return hashlib.sha256(text.encode()).hexdigest()


def env_key(digest: str) -> str:
    return f"env.{digest}"


class EnvFailure(Record):
    """``envfail.<digest>``: this environment failed to build on a node. Every later call
    of it fails at once with ``reason``, instead of every node building it again."""

    digest: str
    reason: str
    """What the build said last (a compile error, a broken wheel)."""
    node: str
    created: float


def env_failure_key(digest: str) -> str:
    return f"envfail.{digest}"


class EnvBuild(Record):
    """``envbuild.<digest>``: a node is building this environment (a lease taken with a
    KV create, so only one node builds it; the others wait for its archive). Purged
    when the build ends; a lease older than ``ENV_BUILD_LEASE_S`` is a dead builder's."""

    node: str
    started: float


ENV_BUILD_LEASE_S = 900.0
"""How long a node may hold a build lease before another node takes it over."""


def env_build_key(digest: str) -> str:
    return f"envbuild.{digest}"


def env_archive(digest: str) -> str:
    """A built environment's object in ``ENVS_BUCKET``: its site-packages, tar.gz."""
    return f"{digest}.tar.gz"


class Version(Record):
    """``ver.<app>.<id>``: one deployed version, never replaced, only added. ``digest`` is
    its code (the bundle nodes fetch), ``env`` its environment, ``id`` the two together."""

    app: str
    digest: str
    created: float
    size: int
    files: dict[str, str]
    """Path → sha256 of each file of the bundle."""
    functions: dict[str, dict[str, Any]]
    """Name → module, qualname, file, line, is_async, params, options, signature (a
    ``Signature`` as JSON; absent in versions deployed before it was recorded)."""
    kind: str = "functions"
    """``functions``, or ``asgi`` for a version deployed with an HTTP app."""
    env: str = ""
    """The environment digest its functions run with ("" = the node's own packages):
    a version is its code digest plus this."""
    signer: str = ""
    """The deployer public key (``U…``) that signed it; "" for a version deployed before
    signing (unsigned, so not routed to)."""
    sig: str = ""
    """``signer``'s Ed25519 signature over ``statement()``."""

    @property
    def id(self) -> str:
        """What aliases, canaries, locks and ``ver.<app>.<id>`` name it by (``version_id``)."""
        return version_id(self.digest, self.env)

    def statement(self) -> bytes:
        """What its signature covers: every field but ``sig`` (files and functions by the
        digest of their sorted JSON), so no part of the record can be changed unseen."""
        return signed_statement(
            "version",
            self.app,
            self.id,
            self.digest,
            self.env,
            self.created,
            self.size,
            _json_digest(self.files),
            _json_digest(self.functions),
            self.kind,
            self.signer,
        )


class Canary(Record):
    """``canary.<app>``: send ``percent`` of an app's sessions to ``version``; the rest
    follow ``latest``."""

    version: str
    percent: float
    key: str | None = None
    """Where a request's session comes from: ``header:NAME`` or ``arg:NAME``."""
    time: float = 0.0
    """When it was set (signed with it)."""
    signer: str = ""
    sig: str = ""
    """``signer``'s signature over ``statement(app)``; "" when unsigned (not followed)."""

    def rule(self) -> dict[str, Any]:
        """The rule alone, as ``status`` and ``canary --json`` show it (no signature)."""
        return {"version": self.version, "percent": self.percent, "key": self.key}

    def statement(self, app: str) -> bytes:
        """Bound to its app: a signed canary copied to another app does not verify."""
        return signed_statement(
            "canary", app, self.version, self.percent, self.key, self.time, self.signer
        )


class AliasRecord(Record):
    """``alias.<app>.<alias>``: the version id it names, signed by the deployer who moved
    it. Written before signing as the bare version id, which still decodes (unsigned)."""

    version: str
    time: float = 0.0
    signer: str = ""
    sig: str = ""

    def statement(self, app: str, alias: str) -> bytes:
        """Bound to its key: a signed move of ``stable`` copied to ``latest`` does not verify."""
        return signed_statement("alias", app, alias, self.version, self.time, self.signer)

    def encode(self) -> bytes:
        return self.as_json()

    @classmethod
    def decode(cls, data: Buffer) -> AliasRecord:
        """A signed record (JSON), or the bare version id older writers stored (unsigned)."""
        text = bytes(data)
        if text.startswith(b"{"):
            return cls.from_json(text)
        try:
            return cls(version=text.decode())
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"malformed alias: {exc}") from None


class ScheduleRun(Record):
    """``<app>.<fn>`` in the schedules bucket: the newest tick of a schedule that a node
    submitted, written by compare-and-set so it only moves forward."""

    app: str
    fn: str
    schedule: dict[str, Any]
    """The schedule as deploy recorded it (``{"period_s": 30}``, ``{"cron": "..."}``)."""
    tick_ms: int
    """When the tick was due (epoch milliseconds, UTC)."""
    id: str
    """Its invocation (``schedule_invocation_id``): its result is stored under this id."""
    digest: str
    """The version ``latest`` named when the tick was submitted."""
    node: str
    submitted: float


class TokenRecord(Record):
    """``<id>`` in the tokens bucket: one gateway token, as ``token ls`` shows it, plus
    the sha256 (hex) of its secret, which the gateway compares in constant time."""

    id: str
    role: str
    sha256: str
    created: float
    app: str | None = None
    """The one app the token may reach; None: every app."""
    name: str | None = None
    """Free text to tell tokens apart (who or what holds it)."""


class BundleManifest(Record):
    """``bundle/<digest>`` in the bundles store: the path → sha256 listing of a bundle.
    (The digest is computed from the listing, not from these bytes.)"""

    files: dict[str, str]
    signatures: dict[str, str] = {}
    """Deployer public key → its signature over ``bundle_statement(digest)``: nodes load
    the code only when a trusted key signed it. Not part of the digest."""


def bundle_statement(digest: str, signer: str) -> bytes:
    """What a deployer signs to let a bundle's code run on the lattice."""
    return signed_statement("bundle", digest, signer)


class TrustedKey(Record):
    """A value of ``TRUST_BUCKET`` (the key is the public key): a deployer the lattice
    trusts, with a name for people."""

    name: str = ""
    added: float = 0.0


def signed_statement(kind: str, *fields: str | float | int | None) -> bytes:
    """The bytes a signature covers: a tagged JSON array, so no field can run into the
    next and a signature for one kind of record never verifies as another."""
    return _JSON_ENCODER.encode([f"sp.signed.{kind}.v1", *fields])


def _json_digest(value: Any) -> str:
    return hashlib.sha256(_JSON_ENCODER.encode(value)).hexdigest()


_JSON_ENCODER = msgspec.json.Encoder(order="sorted")
_STRING_MAP = msgspec.json.Decoder(dict[str, str])


def encode_string_map(mapping: dict[str, str]) -> bytes:
    """``lock.<app>`` (dependency app → digest) and ``place.<class>`` (label → value)."""
    return _JSON_ENCODER.encode(mapping)


def decode_string_map(data: Buffer, what: str) -> dict[str, str]:
    try:
        return _STRING_MAP.decode(data)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed {what}: {exc}") from None


# --- text messages -----------------------------------------------------------------
#
# Two small requests travel as a line of text, not msgpack: a pull is a chunk's
# address and nothing else, and a node's notice that a handed-over call ended is two
# names. Typed here all the same, and decoded with the same one error.

_OFFER_RELEASE = "release"


class OfferPull(msgspec.Struct, frozen=True):
    """``<blob> <offset> <length>`` on an offer's ``source``: answered with those bytes
    of the payload, or with the ``OFFER_GONE_HEADER`` if it is no longer offered."""

    blob: str
    offset: int
    length: int

    def encode(self) -> bytes:
        return f"{self.blob} {self.offset} {self.length}".encode()


class OfferRelease(msgspec.Struct, frozen=True):
    """``<blob> release``: the reader has the payload; its owner may drop it now."""

    blob: str

    def encode(self) -> bytes:
        return f"{self.blob} {_OFFER_RELEASE}".encode()


def decode_offer_request(data: Buffer) -> OfferPull | OfferRelease:
    """What a pull request asks (words split on any whitespace, as ever), or ProtocolError."""
    words = bytes(data).decode(errors="replace").split()
    if len(words) == 2 and words[1] == _OFFER_RELEASE:
        return OfferRelease(words[0])
    if len(words) == 3 and all(w.isascii() and w.isdigit() and len(w) < 20 for w in words[1:]):
        return OfferPull(words[0], int(words[1]), int(words[2]))
    raise ProtocolError(f"not a pull or release of an offer: {bytes(data[:80])!r}")


class ForwardDone(msgspec.Struct, frozen=True):
    """``<node> <id>`` on ``forward_done_subject`` of the node that handed call ``id``
    over (``FORWARDED_BY_HEADER``): ``node`` ran it, and it has ended."""

    node: str
    id: str

    def encode(self) -> bytes:
        return f"{self.node} {self.id}".encode()

    @classmethod
    def decode(cls, data: Buffer) -> ForwardDone:
        try:
            node, space, invocation_id = bytes(data).decode().partition(" ")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"a forward-done notice is not text: {exc}") from None
        if not space:
            raise ProtocolError(f"not a forward-done notice: {bytes(data[:80])!r}")
        return cls(node, invocation_id)


# --- names resolved for executors --------------------------------------------------

RESOLVE_SUBJECT = "sp.resolve"
"""Executors ask here which version a name resolves to (``ResolveRequest``): their own
NATS user may not read the registry, and every node agent mirrors it (queue group
``nodes``, so one answers)."""


class _Asked(msgspec.Struct, tag_field="t", omit_defaults=True):
    """A request or answer of ``sp.resolve``: tagged msgpack like ``Message``s, read by
    a decoder of its own type (``Signature`` is defined after the message union)."""

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, data: Buffer) -> Self:
        try:
            return msgspec.msgpack.decode(data, type=cls)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"not a {cls.__name__} message: {exc}") from None


class ResolveRequest(_Asked, tag="sp.resolve.v1"):
    """``Registry.resolve`` asked of a node agent, for an executor's nested call."""

    app: str
    fn: str
    version: str | None = None
    ctx: CallContext | None = None
    caller: str | None = None


class Resolved(_Asked, tag="sp.resolved.v1"):
    """A ``Target``'s fields, or ``error_kind`` (``not_found``, ``bad_request``, ``user``,
    ``internal``) and ``error``: what the registry said."""

    app: str = ""
    fn: str = ""
    digest: str = ""
    module: str = ""
    qualname: str = ""
    options: dict[str, Any] = {}
    signature: Signature | None = None
    env: str = ""
    error_kind: str = ""
    error: str = ""


# Object references (``lattice/refs.py``): values named by the sha256 of their bytes
REFS_BUCKET = "sp_refs"
"""Memory KV: ``<digest>.<holder client id>`` → a ``RefRecord`` (JSON) for each object a
process holds for its ephemeral Refs; what ``superpose objects ls`` lists."""
OBJECTS_BUCKET = "sp_objects"
"""Object Store, file storage: ``sha256(label + digest)`` → a durable Ref's value, sealed
with a key derived from its digest (``lattice/ref_sealing.py``)."""
REF_RECORD_TTL_S = 3600.0
"""A holder rewrites its records every third of this: a holder that died without
deleting them drops out of ``objects ls`` within the hour."""


def ref_record_key(digest: str, holder: str) -> str:
    """The ``sp_refs`` key of ``holder``'s copy of object ``digest`` (the holder, a
    client id, may be ``<owner>.<unique>``: its permissions pin ``*.<owner>.>``)."""
    return f"{digest}.{holder}"


def ref_records_of(holder: str) -> str:
    """Every ``sp_refs`` subject a holder writes: what its permissions allow."""
    return kv_subject(REFS_BUCKET, ref_record_key("*", holder))


def ref_keep_subject(client_id: str) -> str:
    """Where a holder hears from readers which of its objects they still hold Refs to
    (``<lease seconds> <digest> <digest>…``, text)."""
    return f"_SP.{client_id}.k"


def ref_keep_message(lease_s: float, digests: Iterable[str]) -> bytes:
    """``<lease seconds> <digest> <digest>…``: keep these objects at least that long."""
    return " ".join([f"{lease_s:.3f}", *digests]).encode()


def parse_ref_keep(data: bytes) -> tuple[float, list[str]]:
    """A ``ref_keep_message``; ``ProtocolError`` if it is not one."""
    parts = data.decode(errors="replace").split()
    try:
        lease_s = float(parts[0])
    except (IndexError, ValueError):
        raise ProtocolError(f"not a ref keep message: {data[:64]!r}") from None
    if not 0 <= lease_s <= 24 * 3600:
        raise ProtocolError(f"a ref keep message's lease is out of range: {lease_s}")
    return lease_s, parts[1:]


# --- calls with needs placed for executors -------------------------------------------

PLACE_SUBJECT = "sp.place"
"""Executors ask here which nodes meet a nested call's needs (``PlaceRequest``): their
own NATS user may neither watch the nodes bucket nor make the class's work consumer
nor record its ``place.<class>`` key; every node agent can (queue group ``nodes``)."""


class PlaceRequest(_Asked, tag="sp.place.v1"):
    """Nodes meeting ``needs``, waiting up to ``wait_s`` for one; ``durable``: also open
    the needs' class (its work consumer and registry record), as ``Placement.open_class``
    does for a client. The class is the needs' hash (``needs_class``), computed by the
    node: an executor cannot name another class's record."""

    needs: dict[str, str]
    what: str
    wait_s: float = 0.0
    durable: bool = False


class Placed(_Asked, tag="sp.placed.v1"):
    """The nodes meeting the needs, or ``error_kind`` (``no_nodes``, ``bad_request``,
    ``internal``) and ``error``."""

    nodes: list[NodeInfo] = []
    error_kind: str = ""
    error: str = ""


def filtered_consumer_subject(stream: str, name: str, filter_subject: str) -> str:
    """Creating consumer ``name`` on ``stream`` with its one filter in the request subject:
    the server refuses a request whose body names another filter, so a user's
    permissions can pin what the consumer reads (``CONSUMER.CREATE.<stream>`` alone
    cannot be pinned)."""
    return f"{JS_API}.CONSUMER.CREATE.{stream}.{name}.{filter_subject}"


def blob_reads(bucket: str = BLOBS_BUCKET) -> list[str]:
    """Reading an object of ``bucket`` (spilled payloads, durable Refs' objects) whose
    name one knows, in the forms whose request subject names it (``lattice/objects.py``):
    a direct get of its metadata or of a one-chunk object's chunk, a consumer filtered
    on its chunks. ``STREAM.MSG.GET`` by sequence and unnamed consumers, which would
    list the bucket, are not among them."""
    stream = object_stream(bucket)
    return [
        f"{direct_get_subject(stream)}.{object_meta_subject(bucket, '*')}",
        f"{direct_get_subject(stream)}.{object_chunk_subject(bucket, '*')}",
        filtered_consumer_subject(stream, "*", object_chunk_subject(bucket, "*")),
    ]


# --- memoization (issue 16, item 5) -------------------------------------------------

MEMO_BUCKET = "sp_memo"
"""The action cache of ``cache=True`` functions: ``memo_key`` → a ``MemoEntry`` holding a
result. Written only by the executor that ran the call (and cleared by deployers):
a caller may read it, never write it, so no caller can plant a result for others."""
MEMO_VALUES_BUCKET = "sp_memo_values"
"""Object store of cached results too big for an entry: sealed by their digest
(``ref_sealing``), which only the entry names; kept at most ``MEMO_MAX_AGE_S``."""
MEMO_CLAIMS_BUCKET = "sp_memo_claims"
"""``memo_key`` → a ``MemoEntry`` with ``running``: the caller running that key now
(single flight). Callers write these; a forged claim delays a key, it cannot answer it."""
MEMO_KEY_VERSION = "sp.memokey.v1"
"""Hashed into every memo key: a new argument encoding changes it, so old entries are
never misread."""
MEMO_MAX_AGE_S = 7 * 24 * 3600.0
"""The longest any cached result is kept (the bucket's TTL): ``cache_ttl`` bounds it lower."""
MEMO_MAX_VALUE_BYTES = 768 * 1024
"""A result whose encoding is bigger goes to ``MEMO_VALUES_BUCKET``, its entry naming it
(an entry is one NATS message, 1 MiB at most)."""


def memo_key(app: str, fn: str, digest: str) -> str:
    """The key of one cached call: its function, then the hash of version, environment,
    function and arguments (``lattice/memo_key.py``). App first, so a role is pinned by it."""
    return f"{app}.{fn}.{digest}"


def memo_filter(app: str | None = None, fn: str | None = None) -> str:
    """The keys of one app's (one function's) cached calls, as a key filter."""
    if app is None:
        return ">"
    return f"{app}.{fn}.*" if fn else f"{app}.>"


def memo_subject(app: str | None = None, bucket: str = MEMO_BUCKET) -> str:
    """The subjects of one app's cache entries or claims (``*``: any app), for grants."""
    return kv_subject(bucket, f"{app or '*'}.>")


class MemoEntry(msgspec.Struct, tag_field="t", tag="sp.memo.v1", omit_defaults=True):
    """One cache entry: a claim while its first caller runs the call, then the result.

    ``value`` is the result pickled (cloudpickle); empty while ``running``. ``until`` is
    the epoch second after which a claim is stale (its runner died) or a result expired.
    """

    running: bool
    until: float
    created: float
    runner: str = ""
    """The client that claimed it (running), or the node whose executor stored it."""
    value: bytes = b""
    codec: str = "pickle"
    """How ``value`` is encoded: the codec of the call that produced it."""
    stored: str = ""
    """A result too big for an entry: the sha256 of its encoding, stored sealed in
    ``MEMO_VALUES_BUCKET`` (``value`` is empty)."""
    size: int = 0
    """Bytes of a ``stored`` value."""

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, data: Buffer) -> MemoEntry:
        try:
            return msgspec.msgpack.decode(data, type=cls)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise ProtocolError(f"not a cache entry: {exc}") from None


# --- shared dicts and queues (issue 16 item 6; docs: "Shared dicts and queues") ---------
# One key-value stream per storage kind and one work-queue stream per storage kind, for
# every app: a per-Dict stream's name is one subject token, which no permission can pin
# to an app, while a key or subject prefix can (``app.<app>.…`` / ``shared.…``).

DICTS_BUCKET = "sp_dicts"
"""Every app's Dicts in memory: ``<scope>.<dict>.<key>`` → a pickled value."""
DICTS_DURABLE_BUCKET = "sp_dicts_durable"
"""The same for ``Dict(..., durable=True)``, on file storage."""
QUEUES_STREAM = "SP_QUEUES"
"""Every app's Queues in memory, work-queue retention: one subject and consumer each."""
QUEUES_DURABLE_STREAM = "SP_QUEUES_DURABLE"
"""The same for ``Queue(..., durable=True)``, on file storage."""
SHARED_SCOPE = "shared"
"""The scope of ``shared=True`` dicts and queues: lattice-wide."""
SHARED_VALUE_MAX_BYTES = 1024 * 1024
"""A Dict value or Queue item, pickled: NATS's default ``max_payload``, so any lattice
takes it."""

KV_OPERATION_HEADER = "KV-Operation"
"""``DEL`` or ``PURGE`` on a key-value delete marker (the nats-py/CLI layout)."""
MSG_TTL_HEADER = "Nats-TTL"
"""A message's own time to live (nats-server ≥ 2.11, a stream with ``allow_msg_ttl``)."""
MARKER_REASON_HEADER = "Nats-Marker-Reason"
"""On the marker the server leaves where a message expired (``MaxAge``) or was removed."""
EXPECTED_LAST_SUBJECT_SEQ_HEADER = "Nats-Expected-Last-Subject-Sequence"
"""A write that lands only if its subject's last message still has this sequence (0:
none): compare-and-set."""
SEQUENCE_HEADER = "Nats-Sequence"
"""A direct get's answer: the stream sequence of the message it returns."""


def app_scope(app: str) -> str:
    """The scope of an app's own dicts and queues (two tokens, so no app name can
    collide with ``shared``)."""
    return f"app.{app}"


def dict_key(scope: str, name: str, key_token: str) -> str:
    """A Dict entry's key in its bucket (``key_token``: the user's key, escaped to one
    token)."""
    return f"{scope}.{name}.{key_token}"


def queue_record_key(scope: str, name: str) -> str:
    """Where a Queue's consumer name is kept, in the dict bucket of its storage kind and
    under its scope (``=`` starts no Dict name): only those who may use the scope's
    dicts can learn it, and a pull names the consumer."""
    return f"{scope}.=queue.{name}"


def dict_bucket(durable: bool) -> str:
    return DICTS_DURABLE_BUCKET if durable else DICTS_BUCKET


def queue_stream(durable: bool) -> str:
    return QUEUES_DURABLE_STREAM if durable else QUEUES_STREAM


def queue_wildcard(durable: bool) -> str:
    return "sp.qd.>" if durable else "sp.q.>"


def queue_subject(durable: bool, scope: str, name: str) -> str:
    """Where a Queue's items are published (and its consumer's filter)."""
    return f"{queue_wildcard(durable)[:-1]}{scope}.{name}"


def js_ack_wildcard(stream: str) -> str:
    """Acknowledgements of messages delivered by ``stream``'s consumers."""
    return f"$JS.ACK.{stream}.>"


def shared_state_publish(scopes: list[str]) -> list[str]:
    """What a user may publish to use the dicts and queues of ``scopes`` (``app.<app>``,
    ``app.*``, ``shared``): write and read keys, watch them, and put, take and count
    queue items. Pinned to the scope wherever the subject says what is touched; pulls
    from a queue's consumer, its acks and its deletion name only the consumer, which
    NATS cannot pin to an app: its name is random, kept under the queue's scope
    (``queue_record_key``; docs: "Shared dicts and queues")."""
    granted: list[str] = []
    for durable in (False, True):
        bucket, stream = dict_bucket(durable), queue_stream(durable)
        kv = kv_stream(bucket)
        for scope in scopes:
            granted += [
                kv_subject(bucket, f"{scope}.>"),
                direct_get_last_subject(kv, kv_subject(bucket, f"{scope}.>")),
                filtered_consumer_subject(kv, "*", kv_subject(bucket, f"{scope}.>")),
                f"{queue_wildcard(durable)[:-1]}{scope}.>",
                direct_get_last_subject(stream, f"{queue_wildcard(durable)[:-1]}{scope}.>"),
                filtered_consumer_subject(stream, "*", f"{queue_wildcard(durable)[:-1]}{scope}.>"),
            ]
        granted += [
            f"$JS.API.CONSUMER.INFO.{stream}.*",
            consumer_next_subject(stream, "*"),
            consumer_delete_subject(stream, "*"),
            js_ack_wildcard(stream),
        ]
    return granted


def shared_state_reads(scopes: list[str]) -> list[str]:
    """What a reader (the viewer role) may do with the dicts and queues of ``scopes``:
    read and watch keys, count queue items."""
    granted: list[str] = []
    for durable in (False, True):
        bucket, kv = dict_bucket(durable), kv_stream(dict_bucket(durable))
        for scope in scopes:
            granted += [
                direct_get_last_subject(kv, kv_subject(bucket, f"{scope}.>")),
                filtered_consumer_subject(kv, "*", kv_subject(bucket, f"{scope}.>")),
            ]
        granted.append(f"$JS.API.CONSUMER.INFO.{queue_stream(durable)}.*")
    return granted


# --- lineage (issue 16, item 4) ------------------------------------------------------

LINEAGE_BUCKET = "sp_lineage"
"""Memory KV: how to make a lost ephemeral object again. ``rec.<name>`` (the producer's
invocation), ``claim.<name>`` (one reader is recomputing it) and ``done.<name>`` (the
object made again), where ``<name>`` is a hash of the Ref's offer id and every value is
sealed with a key derived from that id (``lattice/lineage.py``): knowing the Ref is
the capability, and a reader that lists the bucket by wildcard learns nothing."""
LINEAGE_TTL_S = RESULT_TTL_S
"""As long as a durable result lives: a Ref in a stored result can still be remade."""


def lineage_key(kind: str, name: str) -> str:
    """``rec``, ``claim`` or ``done``, and the hashed name of the object's offer id."""
    return f"{kind}.{name}"


def lineage_allowed() -> list[str]:
    """Callers and executors alike: write a record, a claim or an outcome, and read
    one by its key (a direct get naming it). No listing form: a literal ``*`` in a
    key still answers the newest entry, which is sealed."""
    entries = kv_subject(LINEAGE_BUCKET, lineage_key("*", "*"))
    return [entries, direct_get_last_subject(kv_stream(LINEAGE_BUCKET), entries)]


class LineageRecord(msgspec.Struct, tag_field="t", tag="sp.lineage.v1", omit_defaults=True):
    """What made an ephemeral object: its producer's invocation, as it was sent (its
    arguments inline, or spilled to ``sp_blobs`` so they outlive the caller)."""

    function: str
    """``app.fn``, for messages."""
    idempotent: bool
    """Declared safe to run twice: only then is it run again to remake the object."""
    invocation: bytes = b""
    """The encoded ``Invocation`` to run again (empty when it is not idempotent)."""
