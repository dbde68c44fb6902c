"""Fast reads and writes of JetStream Object Store objects.

Objects keep the Object Store's own layout (chunks on ``$O.<bucket>.C.<nuid>``,
meta on ``$O.<bucket>.M.<name>``), so the ``nats`` CLI still reads them, but
the transfer is ours: nats-py's ``put()`` waits for one ack per chunk and its
``get()`` grows the result by concatenation (quadratic). Here the writer
pipelines chunks and collects their acks together, and the reader pulls the
chunks with one consumer and joins them once. Measured figures are in
docs/architecture.md.

Every read names what it reads in its request subject, so a narrow user's
permissions can allow reading an object by name and refuse listing the bucket
(docs/architecture.md, "Roles on the wire"): the metadata and a one-chunk object by
a direct get of their subject, the chunks of a bigger one through a consumer created
with its filter in the API subject (``CONSUMER.CREATE.<stream>.<name>.<filter>``).
``STREAM.MSG.GET`` and unnamed consumers, which name no subject, are never sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError as JSNotFound
from nats.js.errors import ObjectNotFoundError

from superpose import protocol
from superpose.errors import NotFoundError, SuperposeError
from superpose.lattice import chunk_reader
from superpose.support.retry import Backoff, retry

ROLLUP_HEADER = "Nats-Rollup"
CHUNK_BYTES = 1024 * 1024
TRANSFER_TIMEOUT_S = 120.0
WINDOW_BYTES = 16 * 1024 * 1024
"""Chunks in flight without an ack: enough to keep the pipe full, little enough that
JetStream never answers "too many requests"."""
PUT_ATTEMPTS = 3
PUT_BACKOFF = Backoff(0.5, factor=2)


def _meta_subject(bucket: str, name: str) -> str:
    return protocol.object_meta_subject(bucket, base64.urlsafe_b64encode(name.encode()).decode())


_chunk_subject = protocol.object_chunk_subject
_stream = protocol.object_stream


def chunk_size_for(nc: NATS) -> int:
    """Largest chunk the server accepts, leaving room for headers."""
    return max(64 * 1024, min(CHUNK_BYTES, nc.max_payload - 4096))


async def exists(js: JetStreamContext, bucket: str, name: str) -> bool:
    return await size(js, bucket, name) is not None


async def size(js: JetStreamContext, bucket: str, name: str) -> int | None:
    """The object's size in bytes, or None if there is no such object."""
    try:
        info = await _get_info(js, bucket, name)
    except NotFoundError:
        return None
    return None if info.deleted else int(info.size or 0)


async def size_of(js: JetStreamContext, bucket: str, name: str) -> int | None:
    """The stored size of an object; None when it, or its bucket, is not there."""
    try:
        info = await _get_info(js, bucket, name)
    except NotFoundError:
        return None
    return None if info.deleted else int(info.size or 0)


async def _get_info(js: JetStreamContext, bucket: str, name: str) -> js_api.ObjectInfo:
    try:
        msg = await js.get_last_msg(_stream(bucket), _meta_subject(bucket, name), direct=True)
    except (JSNotFound, ObjectNotFoundError) as exc:
        raise NotFoundError(f"object {name!r} not found in {bucket}") from exc
    assert msg.data is not None
    info: js_api.ObjectInfo = js_api.ObjectInfo.from_response(json.loads(msg.data))
    return info


async def put(nc: NATS, bucket: str, name: str, data: bytes | memoryview) -> int:
    """Store ``data`` as object ``name``; returns its size.

    If the store refuses a chunk (JetStream answers "too many requests" when
    pushed too hard), the partial object is purged and written again under a
    fresh id: re-sending one chunk would put it out of order.
    """
    view = memoryview(data)
    size = chunk_size_for(nc)
    chunks = [view[i : i + size] for i in range(0, len(view), size)]
    digest = hashlib.sha256(view).digest()

    async def write_chunks() -> str:
        nuid = uuid.uuid4().hex
        try:
            await _publish_acked(nc, _chunk_subject(bucket, nuid), chunks)
        except ChunkRefused:
            await nc.jetstream().purge_stream(_stream(bucket), subject=_chunk_subject(bucket, nuid))
            raise
        return nuid

    nuid = await retry(
        write_chunks, backoff=PUT_BACKOFF, attempts=PUT_ATTEMPTS, retry_on=ChunkRefused
    )
    info = js_api.ObjectInfo(
        name=name,
        bucket=bucket,
        nuid=nuid,
        size=len(view),
        chunks=len(chunks),
        mtime=datetime.now(UTC).isoformat(),
        digest="SHA-256=" + base64.urlsafe_b64encode(digest).decode(),
        options=js_api.ObjectMetaOptions(max_chunk_size=size),
    )
    await nc.jetstream().publish(
        _meta_subject(bucket, name),
        json.dumps(info.as_dict()).encode(),
        headers={ROLLUP_HEADER: "sub"},
    )
    return len(view)


class ChunkRefused(SuperposeError):
    """The object store refused a chunk; the object must be written again."""


async def _publish_acked(nc: NATS, subject: str, chunks: list[memoryview]) -> None:
    """Publish chunks with at most ``WINDOW_BYTES`` un-acked, and wait for every ack."""
    if not chunks:
        return
    window = asyncio.Semaphore(max(1, WINDOW_BYTES // max(1, len(chunks[0]))))
    inbox = nc.new_inbox()
    acked = 0
    errors: list[str] = []
    all_acked = asyncio.get_running_loop().create_future()

    async def on_ack(msg: Msg) -> None:
        nonlocal acked
        reply = json.loads(msg.data or b"{}")
        if "error" in reply:
            errors.append(str(reply["error"].get("description", reply["error"])))
        acked += 1
        window.release()
        if acked == len(chunks) and not all_acked.done():
            all_acked.set_result(None)

    sub = await nc.subscribe(inbox, cb=on_ack)
    try:
        for chunk in chunks:
            await asyncio.wait_for(window.acquire(), TRANSFER_TIMEOUT_S)
            if errors:
                break
            await nc.publish(subject, bytes(chunk), reply=inbox)
        if not errors:
            await asyncio.wait_for(all_acked, TRANSFER_TIMEOUT_S)
    except TimeoutError as exc:
        raise SuperposeError(
            f"object store did not acknowledge {len(chunks) - acked} of {len(chunks)} chunks "
            f"within {TRANSFER_TIMEOUT_S:.0f} s"
        ) from exc
    finally:
        await sub.unsubscribe()
    if errors:
        raise ChunkRefused(f"object store refused a chunk: {errors[0]}")


async def get(nc: NATS, bucket: str, name: str) -> bytes:
    """Read object ``name`` whole, verifying its SHA-256 digest."""
    js = nc.jetstream()
    info = await _get_info(js, bucket, name)
    if info.deleted:
        raise NotFoundError(f"object {name!r} was deleted from {bucket}")
    if not info.size:
        return b""
    assert info.nuid is not None and info.chunks is not None
    parts = await _fetch_chunks(nc, bucket, _chunk_subject(bucket, info.nuid), info.chunks)
    data = b"".join(parts)
    expected = (info.digest or "").split("=", 1)[-1]
    actual = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    if expected and expected.rstrip("=") != actual.rstrip("="):
        raise SuperposeError(f"object {name!r} in {bucket} failed its SHA-256 check")
    return data


async def _fetch_chunks(nc: NATS, bucket: str, subject: str, count: int) -> list[bytes]:
    if count == 1:
        msg = await nc.jetstream().get_last_msg(_stream(bucket), subject, direct=True)
        return [msg.data or b""]
    return await chunk_reader.read(nc, _stream(bucket), subject, count, TRANSFER_TIMEOUT_S)


async def delete(nc: NATS, bucket: str, name: str) -> None:
    """Drop an object's chunks and mark it deleted (best effort)."""
    js = nc.jetstream()
    try:
        info = await _get_info(js, bucket, name)
    except NotFoundError:
        return
    if info.nuid:
        await js.purge_stream(_stream(bucket), subject=_chunk_subject(bucket, info.nuid))
    info.deleted = True
    info.size = 0
    info.chunks = 0
    await js.publish(
        _meta_subject(bucket, name),
        json.dumps(info.as_dict()).encode(),
        headers={ROLLUP_HEADER: "sub"},
    )
