"""Least privilege on the wire, the forms a permission can pin (issue 15, item 2): a
narrow role sweeps durable results one direct get each, reads a blob by its name but
cannot list the blob bucket, and reads the logs of the apps its creds were made for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest

from conftest import Lattice, poll, raw_nats
from superpose import protocol
from superpose.errors import PermissionDeniedError, SerializationError, SuperposeError, UserError
from superpose.lattice import connection, objects, results, sealed
from superpose.security import permits, roles
from superpose.security.lookup import find_creds
from test_cli import deploy, unique, write_app
from test_roles import HELLO, cli, connected, mint

BIG = 300_000
"""Over the 256 KiB spill threshold: a durable payload this size travels as a blob."""
NESTED = """
import superpose as sp


@sp.function
def echo(text: str) -> str:
    print("echo", len(text))
    return text + "!"


@sp.function
def nested(text: str) -> int:
    return len(echo.spawn(text + "b" * 300_000).result())
"""
BLOBS = protocol.object_stream(protocol.BLOBS_BUCKET)


@pytest.fixture(scope="module")
def hello(lattice: Lattice) -> str:
    return deploy(lattice, HELLO)


@pytest.fixture(scope="module")
def nested_app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique("pins")
    deploy(lattice, write_app(tmp_path_factory.mktemp("pins") / name, {"mod.py": NESTED}))
    return name


class Wire:
    """A bare connection with some creds under its user's inbox prefix, keeping the
    permission errors the server sends back."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def open(self, url: str, creds: Path) -> Wire:
        async def keep(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        owner = roles.owner_of(creds)
        assert owner is not None
        self.nc = await nats.connect(
            url,
            user_credentials=str(creds),
            error_cb=keep,
            allow_reconnect=False,
            inbox_prefix=protocol.inbox_prefix(owner),
        )
        return self

    async def refused(self, subject: str, body: dict[str, Any]) -> None:
        """The request goes unanswered and the server names it in a permissions error."""
        with pytest.raises(nats.errors.TimeoutError):
            await self.nc.request(subject, json.dumps(body).encode(), timeout=1)
        want = f'permissions violation for publish to "{subject.lower()}"'
        for _ in range(100):
            if any(want in e for e in self.errors):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permissions violation for {subject}: {self.errors}")


# --- what a connection's creds let it send ----------------------------------------


def test_subjects_match_as_nats_matches_them() -> None:
    assert permits.subject_matches("a.*.c", "a.b.c")
    assert permits.subject_matches("a.>", "a.b.c")
    assert not permits.subject_matches("a.>", "a")
    assert not permits.subject_matches("a.*", "a.b.c")
    assert not permits.subject_matches("a.b", "a.c")


def test_a_narrow_role_may_not_batch_and_admin_may(lattice: Lattice, tmp_path: Path) -> None:
    batch = protocol.direct_get_subject(protocol.RESULTS_STREAM)
    caller = permits.of_creds(mint(lattice, "caller"))
    assert caller.narrow and not caller.may_publish(batch)
    assert not permits.of_creds(find_creds(lattice.url, None)).narrow  # admin: no list
    assert permits.of_creds(mint(lattice, "node")).may_publish(batch)  # a deny list
    not_creds = tmp_path / "x.creds"
    not_creds.write_text("not a creds file")
    assert permits.of_creds(not_creds) is permits.UNLIMITED  # the server decides


# --- 1. a caller's result sweep ----------------------------------------------------


def test_a_callers_sweep_collects_every_result_by_one_direct_get_each(
    lattice: Lattice, hello: str
) -> None:
    with connected(lattice, mint(lattice, "caller")) as client:
        assert not results.may_batch(client.nc)
        durable: Any = client._durable
        durable.on_notify = lambda msg: None  # every notification lost: only sweeps find them
        greet = client.function("hello.greet")
        futures = [greet.spawn(str(i)) for i in range(40)]
        assert [f.result(timeout=60) for f in futures] == [f"Hello, {i}!" for i in range(40)]


async def test_a_callers_get_many_reads_its_own_results(lattice: Lattice, hello: str) -> None:
    creds = mint(lattice, "caller")

    def spawned() -> list[str]:
        with connected(lattice, creds) as client:
            futures = [client.function("hello.greet").spawn(str(i)) for i in range(5)]
            for f in futures:
                f.result(timeout=60)
            return [f.invocation_id for f in futures]

    ids = await asyncio.to_thread(spawned)
    nc = await connection.connect(lattice.url, name="pins", creds=creds)
    try:
        found = await results.get_many(nc, [*ids, f"{ids[0]}9"])  # one that has none
    finally:
        await nc.close()
    assert sorted(found) == sorted(ids)


# --- 2. blobs by name only ---------------------------------------------------------


async def test_a_caller_reads_a_blob_it_names_but_cannot_list_them(lattice: Lattice) -> None:
    admin = await raw_nats(lattice.url)
    big, small = os.urandom(3_000_000), os.urandom(1000)  # several chunks; one chunk
    names = [protocol.blob_object_name(unique("blob")) for _ in range(2)]
    for name, data in zip(names, (big, small), strict=True):
        await objects.put(admin, protocol.BLOBS_BUCKET, name, data)
    await admin.close()
    creds = mint(lattice, "caller")
    nc = await connection.connect(lattice.url, name="pins", creds=creds)
    try:
        assert await objects.get(nc, protocol.BLOBS_BUCKET, names[0]) == big
        assert await objects.get(nc, protocol.BLOBS_BUCKET, names[1]) == small
    finally:
        await nc.close()
    wire = await Wire().open(lattice.url, creds)
    try:
        await wire.refused(f"$JS.API.STREAM.MSG.GET.{BLOBS}", {"seq": 1})
        await wire.refused(f"$JS.API.CONSUMER.CREATE.{BLOBS}", {"stream_name": BLOBS})
        await wire.refused(protocol.direct_get_subject(BLOBS), {"seq": 1})
    finally:
        await wire.nc.close()


def test_a_callers_durable_call_carries_big_payloads_both_ways(
    lattice: Lattice, hello: str, nested_app: str
) -> None:
    with connected(lattice, mint(lattice, "caller")) as client:
        text = "a" * BIG
        assert client.function("hello.shout").spawn(text).result(timeout=60) == "A" * BIG + "!"
        # inside a function, as the executor's own user: a nested durable call whose
        # argument and result are spilled blobs
        nested = client.function(f"{nested_app}.nested")
        assert nested.spawn(text).result(timeout=90) == 2 * BIG + 1


# --- 3. logs of one's own apps ------------------------------------------------------


def test_a_viewer_for_one_app_reads_its_logs_and_is_refused_anothers(
    lattice: Lattice, hello: str, nested_app: str
) -> None:
    with connected(lattice, mint(lattice, "caller")) as client:
        client.function("hello.greet").remote("logged")
        assert client.function(f"{nested_app}.echo").remote("x") == "x!"
    viewer = mint(lattice, "viewer", app="hello")

    def own_logs() -> bool:
        own = cli(lattice, viewer, "logs", "hello")
        assert own.returncode == 0, own.stderr
        return "greeting logged" in own.stdout

    poll(own_logs, "the viewer's own app's logs")
    other = cli(lattice, viewer, "logs", nested_app)  # refused before asking: no timeout
    assert other.returncode != 0
    assert f"may not read the logs of {nested_app}" in other.stderr
    assert "creds create --app" in other.stderr


async def test_a_viewer_cannot_make_an_unpinned_log_consumer(lattice: Lattice) -> None:
    wire = await Wire().open(lattice.url, mint(lattice, "viewer", app="hello"))
    try:
        body = {"stream_name": protocol.LOGS_STREAM, "config": {"deliver_policy": "all"}}
        await wire.refused(f"$JS.API.CONSUMER.CREATE.{protocol.LOGS_STREAM}", body)
        other = protocol.filtered_consumer_subject(
            protocol.LOGS_STREAM, "x", protocol.log_filter("other")
        )
        await wire.refused(other, body)
    finally:
        await wire.nc.close()


def test_the_permission_error_is_a_user_error() -> None:
    assert issubclass(PermissionDeniedError, UserError)


async def test_a_wildcard_in_a_pinned_subject_reads_nothing_it_can_use(
    lattice: Lattice, hello: str
) -> None:
    """A permission's ``*`` also matches a literal ``*`` token, and the server reads a
    wildcard there as one (probed): a direct get of ``…M.*`` answers the newest blob's
    metadata, and a consumer filtered on ``…C.*`` delivers every chunk. Blobs are sealed
    with a key derived from their random name, so what such reads find is ciphertext
    under a hashed name."""
    marker = unique("secret-argument").encode()
    arg = marker + b"." * BIG

    def spawn_big() -> None:
        with connected(lattice, mint(lattice, "caller")) as client:
            client.function("hello.shout").spawn(arg.decode()).result(timeout=60)

    await asyncio.to_thread(spawn_big)
    wire = await Wire().open(lattice.url, mint(lattice, "caller"))
    seen: list[bytes] = []
    try:
        meta = protocol.object_meta_subject(protocol.BLOBS_BUCKET, "*")
        newest = await wire.nc.request(f"{protocol.direct_get_subject(BLOBS)}.{meta}", b"")
        seen.append(newest.data)
        chunks = protocol.object_chunk_subject(protocol.BLOBS_BUCKET, "*")
        inbox = wire.nc.new_inbox()
        sub = await wire.nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
        config = {"name": "snoop", "deliver_subject": inbox, "filter_subject": chunks}
        body = json.dumps({"stream_name": BLOBS, "config": config}).encode()
        subject = protocol.filtered_consumer_subject(BLOBS, "snoop", chunks)
        await wire.nc.request(subject, body, timeout=5)
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                seen.append((await sub.next_msg(timeout=1)).data)
    finally:
        await wire.nc.close()
    assert len(seen) > 1  # the server did answer both
    assert not any(marker in data or marker.upper() in data for data in seen)
    name = json.loads(seen[0])["name"]  # the newest object's: a hash, not its id
    assert re.fullmatch("blob/[0-9a-f]{64}", name), name


def test_a_sealed_blob_opens_with_its_id_only() -> None:
    box = sealed.seal("id1", b"payload")
    assert b"payload" not in box
    assert sealed.unseal("id1", box) == b"payload"
    assert sealed.object_name("id1") != sealed.object_name("id2")
    altered = bytes([box[0] ^ 1]) + box[1:]
    with pytest.raises(SuperposeError, match="blob id1 does not open with its id"):
        sealed.unseal("id1", altered)
    with pytest.raises(SuperposeError, match="blob id2"):
        sealed.unseal("id2", box)


def test_a_payload_over_what_a_blob_holds_is_refused_naming_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sealed, "MAX_SEALED_BYTES", 4)
    with pytest.raises(SerializationError, match="payload of 5 bytes is over the 4 a blob"):
        sealed.seal("id1", b"12345")


# --- keyed results -----------------------------------------------------------------


async def test_a_keyed_result_read_by_wildcard_gives_away_neither_id_nor_value(
    lattice: Lattice, hello: str
) -> None:
    """A caller may read keyed results (``idem.*``: whoever holds a key shares its
    result), and a literal ``idem.*`` read answers the newest keyed record of anyone's:
    it is stored under a hash of its id and sealed with the id, so that read finds
    neither. Whoever holds the key (or the id) still gets the result."""
    marker = unique("keyed-secret")
    key = unique("key")

    def keyed() -> tuple[str, str]:
        with connected(lattice, mint(lattice, "caller")) as client:
            greet = client.function("hello.greet").with_options(idempotency_key=key)
            future = greet.spawn(marker)
            value = future.result(timeout=60)
            assert future.invocation_id is not None
            return future.invocation_id, value

    invocation_id, value = await asyncio.to_thread(keyed)
    assert marker in value and protocol.is_keyed(invocation_id)
    wire = await Wire().open(lattice.url, mint(lattice, "caller"))
    try:
        keyed_results = protocol.results_subject(protocol.idempotent_id("*"))
        newest = await wire.nc.request(
            f"{protocol.direct_get_subject(protocol.RESULTS_STREAM)}.{keyed_results}", b""
        )
    finally:
        await wire.nc.close()
    assert newest.data and marker.encode() not in newest.data
    found_at = (newest.headers or {}).get("Nats-Subject", "")
    assert found_at.startswith("$KV.sp_results.idem.") and invocation_id not in found_at
    assert invocation_id.encode() not in newest.data

    def again() -> tuple[str, Any]:  # another caller holding the key: the stored result
        with connected(lattice, mint(lattice, "caller")) as client:
            greet = client.function("hello.greet").with_options(idempotency_key=key)
            future = greet.spawn("ignored: the key's first run answers")
            return str(future.invocation_id), future.result(timeout=60)

    assert await asyncio.to_thread(again) == (invocation_id, value)


def test_a_keyed_record_that_does_not_open_with_its_id_is_as_good_as_absent() -> None:
    stored = results._stored("idem.aaaa", protocol.Result(id="idem.aaaa", node="n1").encode())
    assert b"idem.aaaa" not in stored
    assert results._decoded("idem.aaaa", stored) == protocol.Result(id="idem.aaaa", node="n1")
    assert results._decoded("idem.bbbb", stored) is None
    assert protocol.result_key("idem.aaaa") != "idem.aaaa"
    assert protocol.result_key("caller-1.ab12.3") == "caller-1.ab12.3"  # not keyed: by id
