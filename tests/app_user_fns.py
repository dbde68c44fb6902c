"""Functions that use their own app's and another app's dicts, queues and cache entries
from inside an executor (tests/test_app_user.py, script mode: their app is this
module's name, ``app_user_fns``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import superpose as sp
from superpose import protocol, runtime
from superpose.client import session
from superpose.errors import PermissionDeniedError

WAIT_S = 10.0


@sp.function
def through_the_api(name: str, other: str) -> dict[str, Any]:
    """Own app's dict and queue, a shared dict, then another app's: what each said."""
    said: dict[str, Any] = {}
    here = runtime.current()
    said["has app user"] = here is not None and here.app_connection is not None
    said["incr"] = sp.Dict(name).incr("n")
    q = sp.Queue(name)
    q.put({"job": 1})
    said["queue"] = q.get(timeout=10)
    said["shared"] = sp.Dict(name, shared=True).incr("n")
    attempts = {
        "dict read": lambda: sp.Dict(name, app=other).get("k"),
        "dict write": lambda: sp.Dict(name, app=other).set("k", 1),
        "queue put": lambda: sp.Queue(name, app=other).put(1),
        "queue get": lambda: sp.Queue(name, app=other).get(timeout=0),
    }
    for what, attempt in attempts.items():
        try:
            said[what] = f"ALLOWED: {attempt()!r}"
        except PermissionDeniedError as exc:
            said[what] = str(exc)
    return said


@sp.function
def cached_across_apps(target: str, directory: str, x: int) -> list[object]:
    """A cached call of another app's function (``target``: ``app.fn``), twice: both run
    (uncached), and neither fails for it."""
    client = session.current_client()
    first = client.function(target).spawn(directory, x)
    first.result()
    second = client.function(target).spawn(directory, x)
    return [first.result(), second.result(), first.cached, second.cached]


@sp.function
async def raw(other: str) -> dict[str, dict[str, str]]:
    """The executor's two connections themselves (its neutral user's, its app user's),
    publishing what the API would: which the server refuses. Keys of this app and of
    ``other``, lattice-wide ones."""
    here = runtime.current()
    client = session.node_client()
    assert here is not None and here.app_connection is not None and client is not None
    mine = here.app
    memo_stream = protocol.kv_stream(protocol.MEMO_BUCKET)
    dicts_stream = protocol.kv_stream(protocol.DICTS_BUCKET)

    def attempts(app: str) -> dict[str, tuple[str, bytes]]:
        scope = protocol.app_scope(app)
        dict_key = protocol.kv_subject(protocol.DICTS_BUCKET, f"{scope}.raw.k")
        memo_key = protocol.kv_subject(protocol.MEMO_BUCKET, f"{app}.fn.{'0' * 64}")
        queue = protocol.queue_subject(False, scope, "raw")
        return {
            f"{app} dict write": (dict_key, b"1"),
            f"{app} dict read": (protocol.direct_get_last_subject(dicts_stream, dict_key), b""),
            f"{app} queue put": (queue, b"1"),
            f"{app} queue consumer": (
                protocol.filtered_consumer_subject(protocol.QUEUES_STREAM, "raw", queue),
                json.dumps({"stream_name": protocol.QUEUES_STREAM, "config": {}}).encode(),
            ),
            f"{app} memo write": (memo_key, b""),
            f"{app} memo read": (protocol.direct_get_last_subject(memo_stream, memo_key), b""),
        }

    tried = {**attempts(mine), **attempts(other)}
    shared = protocol.kv_subject(protocol.DICTS_BUCKET, f"{protocol.SHARED_SCOPE}.raw.k")
    tried["shared dict write"] = (shared, b"1")
    tried["memo batch read"] = (
        protocol.direct_get_subject(memo_stream),
        json.dumps({"multi_last": [f"$KV.{protocol.MEMO_BUCKET}.{mine}.>"], "batch": 1}).encode(),
    )
    app_nc = await here.app_connection()
    return {
        "app user": {what: await _try(app_nc, s, d) for what, (s, d) in tried.items()},
        "neutral user": {what: await _try(client.nc, s, d) for what, (s, d) in tried.items()},
    }


async def _try(nc: Any, subject: str, data: bytes) -> str:
    """'denied' if the server reports a permissions violation naming ``subject``, else
    'answered' (whatever the answer: an error from JetStream is still an answer)."""
    before = nc.last_error
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, data, reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S
        while loop.time() < deadline:
            error = nc.last_error
            said = str(error).lower()
            if error is not before and "permissions violation" in said and subject.lower() in said:
                return "denied"
            try:
                await sub.next_msg(timeout=0.05)
                return "answered"
            except Exception:
                continue
        return "no answer"
    finally:
        await sub.unsubscribe()


@sp.function
def hosted() -> list[object]:
    """The app this executor was loaded for, the call's app, and its process."""
    import os

    here = runtime.current()
    invocation = runtime.current_invocation.get()
    assert here is not None and invocation is not None
    return [here.app, invocation.app, os.getpid()]
