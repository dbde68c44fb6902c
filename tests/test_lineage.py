"""Lineage (issue 16, item 4): an ephemeral object whose holder died is made again by
running its idempotent producer; otherwise the reader gets ``ObjectLostError`` naming
the object, its node and its producer. On a 2-node lattice of its own, with real node
processes killed by SIGKILL, readers inside functions and a caller-role client."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

import superpose as sp
from conftest import Lattice, poll, start_lattice, stop_lattice
from superpose import protocol
from superpose.errors import ObjectLostError
from superpose.lattice import lineage
from superpose.lattice.refs import Ref, digest_of, fetch_held
from superpose.local.embedded import EmbeddedServer
from test_cli import deploy, unique, write_app
from test_roles import Wire, connected, mint
from test_wire_pins import Wire as PinWire

BIG = 300 * 1024
"""Over the spill threshold: held by the executor that put it, not inline."""

APP = '''
import os

import superpose as sp
from superpose import runtime


def _counted(tag):
    sp.Dict("lineage_runs", shared=True).incr(tag)


@sp.function(idempotent=True)
def produce(n, tag):
    """An object held by this executor (its own per tag), and where: counted per run."""
    _counted(tag)
    return sp.put(tag.encode() + b"p" * n), os.getpid(), runtime.current().node_id


@sp.function(idempotent=True)
def produce_big_args(data, tag):
    """Arguments over the spill threshold: lineage keeps them beyond the caller's offer."""
    _counted(tag)
    return sp.put(data[::-1]), os.getpid(), runtime.current().node_id


@sp.function
def produce_once(n, tag):
    """Not idempotent: never run again behind its caller's back."""
    _counted(tag)
    return sp.put(b"q" * n), os.getpid(), runtime.current().node_id


@sp.function
def consume(data):
    """A reader on a node: the Ref arrives as its value."""
    return len(data), data[:1], runtime.current().node_id
'''


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """Two nodes of two slots: one is killed, the other serves the readers meanwhile."""
    handle = start_lattice(tmp_path_factory.mktemp("lineage"), workers=2, slots=2, gateway=False)
    yield handle
    stop_lattice(handle)


@pytest.fixture(scope="module")
def app(own: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique("lineage")
    folder = write_app(tmp_path_factory.mktemp("lineage") / name, {f"{name}.py": APP})
    deploy(own, folder)
    return name


@pytest.fixture(scope="module")
def client(own: Lattice) -> Iterator[sp.Client]:
    with connected(own) as c:
        yield c


def nodes(own: Lattice) -> list[str]:
    return sorted(child.name for child in own.lattice.children)


def pinned(client: sp.Client, app: str, fn: str, node: str) -> Any:
    return client.function(f"{app}.{fn}").with_options(needs={"node": node})


def runs(tag: str) -> int:
    """How many times a producer ran for ``tag`` (the producers count themselves)."""
    return int(sp.Dict("lineage_runs", shared=True).get(tag, 0))


def kill_holder(own: Lattice, client: sp.Client, ref: Ref, pid: int | None = None) -> None:
    """SIGKILL the holder's node (and its executor, ``pid``, as a crash of the machine
    would), then wait until the object really is gone."""
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    else:
        os.kill(own.lattice.pids()[ref.node], signal.SIGKILL)

    def gone() -> bool:
        try:
            client.run(fetch_held(client.nc, ref))
        except ObjectLostError:
            return True
        return False

    poll(gone, "the killed holder's object to be gone")


def test_a_consumer_on_the_other_node_gets_the_object_made_again(
    own: Lattice, client: sp.Client, app: str
) -> None:
    tag = unique("node")
    first, other = nodes(own)
    ref, pid, _ = pinned(client, app, "produce", first).remote(BIG, tag)
    os.kill(own.lattice.pids()[first], signal.SIGKILL)  # the node's process
    kill_holder(own, client, ref, pid)  # and its executor, which would outlive it briefly
    length, head, where = pinned(client, app, "consume", other).remote(ref)
    assert (length, head, where) == (len(tag) + BIG, tag[:1].encode(), other)
    assert runs(tag) == 2  # the first run, and one more to make it again


def test_a_lost_object_of_a_producer_not_idempotent_fails_naming_it(
    own: Lattice, client: sp.Client, app: str
) -> None:
    tag = unique("once")
    first, other = nodes(own)
    ref, pid, _ = pinned(client, app, "produce_once", first).remote(BIG, tag)
    kill_holder(own, client, ref, pid)
    with pytest.raises(sp.ObjectLostError) as failed:
        pinned(client, app, "consume", other).remote(ref)
    message = str(failed.value)
    assert f"object {ref.digest[:12]}" in message and f"on node {first}" in message
    assert f"made by invocation {ref.producer}" in message
    assert f"{app}.produce_once is not idempotent" in message
    with pytest.raises(sp.ObjectLostError, match="is not idempotent"):
        sp.get(ref)
    assert runs(tag) == 1


def test_the_callers_get_makes_it_again(own: Lattice, client: sp.Client, app: str) -> None:
    tag = unique("get")
    ref, pid, _ = pinned(client, app, "produce", nodes(own)[0]).remote(BIG, tag)
    kill_holder(own, client, ref, pid)
    assert sp.get(ref) == tag.encode() + b"p" * BIG
    assert sp.get(ref) == tag.encode() + b"p" * BIG  # the second read knows where it is
    assert runs(tag) == 2


@pytest.mark.parametrize("durable", [False, True])
def test_arguments_over_the_spill_threshold_are_kept_for_lineage(
    own: Lattice, client: sp.Client, app: str, durable: bool
) -> None:
    """A direct call's offered arguments are written to sp_blobs for the record; a
    durable call's spilled ones are there already and pointed to."""
    tag = unique("args")
    data = os.urandom(BIG)
    produce = pinned(client, app, "produce_big_args", nodes(own)[0])
    if durable:
        ref, pid, _ = produce.spawn(data, tag).result(timeout=120)
    else:
        ref, pid, _ = produce.remote(data, tag)
    kill_holder(own, client, ref, pid)
    assert sp.get(ref) == data[::-1]
    assert runs(tag) == 2


def test_concurrent_readers_make_it_again_once(own: Lattice, client: sp.Client, app: str) -> None:
    """Readers in every slot of the lattice (2 nodes x 2) and two in the caller: the
    producer runs once more, in a slot given back by a reader waiting for it."""
    tag = unique("many")
    ref, pid, _ = pinned(client, app, "produce", nodes(own)[0]).remote(BIG, tag)
    kill_holder(own, client, ref, pid)
    consume = client.function(f"{app}.consume")
    futures = [consume.spawn(ref) for _ in range(4)]
    got: list[Any] = []
    readers = [threading.Thread(target=lambda: got.append(sp.get(ref))) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=120)
    assert [f.result(timeout=120)[0] for f in futures] == [len(tag) + BIG] * 4
    assert got == [tag.encode() + b"p" * BIG] * 2
    assert runs(tag) == 2


def test_a_caller_role_reads_a_lost_object_made_again(
    own: Lattice, client: sp.Client, app: str
) -> None:
    """From a caller's narrow user: the lineage reads, claim and outcome are allowed."""
    tag = unique("caller")
    ref, pid, _ = pinned(client, app, "produce", nodes(own)[0]).remote(BIG, tag)
    kill_holder(own, client, ref, pid)
    with connected(own, mint(own, "caller")):
        assert sp.get(ref) == tag.encode() + b"p" * BIG
    assert runs(tag) == 2


def test_an_object_put_outside_a_function_has_no_lineage(own: Lattice) -> None:
    with connected(own):  # closing it frees what it put
        ref = sp.put(b"c" * BIG)
        assert not ref.producer
    with connected(own), pytest.raises(sp.ObjectLostError) as failed:
        sp.get(ref)
    assert "no lineage is recorded for it" in str(failed.value)


# --- the pieces, against the real KV -------------------------------------------------


def lost_ref(blob: str, digest: str = "ab" * 32) -> Ref:
    return Ref(digest, BIG, holder="gone.1", source="_SP.gone.1.b", blob=blob, node="n0")


async def _kv(own: Lattice, client: sp.Client) -> Any:
    return await client.nc.jetstream().key_value(protocol.LINEAGE_BUCKET)


def test_a_reader_waiting_on_another_is_bounded(own: Lattice, client: sp.Client) -> None:
    """A claim whose reader died: the others give up after their wait, saying why."""
    blob = unique("blob")
    record = protocol.LineageRecord(function="a.f", idempotent=True)
    kv = client.run(_kv(own, client))
    client.run(kv.create(protocol.lineage_key("claim", lineage.name_of(blob)), b""))
    lost = ObjectLostError(f"{lost_ref(blob).name()} is gone")
    with pytest.raises(ObjectLostError, match="has not finished in 0 s"):
        client.run(lineage._outcome(kv, blob, record, 0.1, lost))


def test_a_failed_remake_is_told_to_every_reader(own: Lattice, client: sp.Client) -> None:
    blob = unique("blob")
    record = protocol.LineageRecord(function="a.f", idempotent=True)
    kv = client.run(_kv(own, client))
    client.run(lineage._settle(kv, blob, {"error": "it raised"}))
    lost = ObjectLostError("object x is gone")
    with pytest.raises(ObjectLostError, match=r"running its producer a\.f again failed: it raised"):
        client.run(lineage._outcome(kv, blob, record, 5, lost))


def test_a_record_opens_only_with_its_offer_id(own: Lattice, client: sp.Client) -> None:
    """What a wildcard reader of the bucket finds is sealed: the key is a hash."""
    blob = unique("blob")
    record = protocol.LineageRecord(function="a.f", idempotent=False)
    client.run(lineage.record(client.nc, lost_ref(blob), record))
    kv = client.run(_kv(own, client))
    entry = client.run(kv.get(protocol.lineage_key("rec", lineage.name_of(blob))))
    assert blob.encode() not in entry.value and b"a.f" not in entry.value
    assert lineage.unseal("rec", "another", entry.value) is None
    opened = lineage.unseal("rec", blob, entry.value)
    assert msgspec.msgpack.decode(opened, type=protocol.LineageRecord) == record


def test_pick_takes_the_same_digest_or_the_only_ref(caplog: pytest.LogCaptureFixture) -> None:
    lost = lost_ref("x", digest="aa" * 32)
    same, other = Ref("aa" * 32, 1), Ref("bb" * 32, 1)
    assert lineage.pick(lost, (other, [same], 3), "a.f") is same
    with caplog.at_level(logging.WARNING, logger="superpose.lineage"):
        assert lineage.pick(lost, {"r": other}, "a.g") is other
        assert lineage.pick(lost, other, "a.g") is other
    warned = [r for r in caplog.records if "a.g made a different object" in r.getMessage()]
    assert len(warned) == 1  # once per function
    with pytest.raises(ObjectLostError, match="returned 0 objects, none with its digest"):
        lineage.pick(lost, 7, "a.f")
    with pytest.raises(ObjectLostError, match="returned 2 objects"):
        lineage.pick(lost, [other, Ref("cc" * 32, 1)], "a.f")


def test_a_put_whose_record_is_refused_still_puts_and_warns(
    own: Lattice, client: sp.Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A viewer may not write lineage: the record is skipped (warned once), not the put."""
    record = protocol.LineageRecord(function="a.refused", idempotent=True)

    async def twice() -> list[bool]:
        wire = await Wire().open(own.url, mint(own, "viewer"))
        try:
            return [
                await lineage.record(wire.nc, lost_ref(unique("blob")), record) for _ in range(2)
            ]
        finally:
            await wire.nc.close()

    with caplog.at_level(logging.WARNING, logger="superpose.lineage"):
        assert client.run(twice()) == [False, False]
    warned = [
        r for r in caplog.records if "objects a.refused puts have no lineage" in r.getMessage()
    ]
    assert len(warned) == 1


def test_a_reader_that_may_not_read_lineage_is_told_why(own: Lattice, client: sp.Client) -> None:
    blob = unique("blob")
    lost = ObjectLostError(f"{lost_ref(blob).name()} is gone")

    async def rerun(inv: protocol.Invocation, raw: Any) -> Any:
        raise AssertionError("never run: the record cannot be read")

    async def read() -> str:
        wire = await Wire().open(own.url, mint(own, "viewer"))
        try:
            await lineage.remake(wire.nc, lost_ref(blob), lost, rerun)
        except ObjectLostError as exc:
            return str(exc)
        finally:
            await wire.nc.close()
        return ""

    message = client.run(read())
    assert f"object {'ab' * 6}" in message
    assert f"its lineage in {protocol.LINEAGE_BUCKET} could not be used" in message


async def _without_the_bucket(state_dir: Path) -> str:
    server = EmbeddedServer(state_dir)
    url = await server.start()
    try:
        nc = await nats.connect(url)
        try:
            await lineage.remake(nc, lost_ref("x"), ObjectLostError("object x is gone"), _never)
        except ObjectLostError as exc:
            return str(exc)
        finally:
            await nc.close()
    finally:
        server.stop()
    return ""


async def _never(inv: protocol.Invocation, raw: Any) -> Any:
    raise AssertionError("never run")


def test_a_lattice_without_the_bucket_says_to_restart_its_nodes(tmp_path: Path) -> None:
    message = asyncio.run(_without_the_bucket(tmp_path / "nats"))
    assert "object x is gone" in message
    assert f"no {protocol.LINEAGE_BUCKET} bucket: its nodes predate lineage" in message


async def test_a_caller_snooping_lineage_finds_only_ciphertext(own: Lattice) -> None:
    """A literal ``*`` in a caller's direct get answers the newest lineage entry: its key
    is a hash and its value sealed, so it gives away neither arguments nor Refs; listing
    forms are refused."""
    blob, marker = unique("blob"), unique("secret-fn")
    record = protocol.LineageRecord(function=marker, idempotent=False)
    creds = mint(own, "caller")
    wire = await PinWire().open(own.url, creds)
    try:
        assert await lineage.record(wire.nc, lost_ref(blob), record)
        stream = protocol.kv_stream(protocol.LINEAGE_BUCKET)
        await wire.refused(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": 1})
        await wire.refused(f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream})
        wildcard = protocol.kv_subject(protocol.LINEAGE_BUCKET, "*.*")
        newest = await wire.nc.request(f"{protocol.direct_get_subject(stream)}.{wildcard}", b"")
    finally:
        await wire.nc.close()
    assert newest.data and marker.encode() not in newest.data and blob.encode() not in newest.data
    assert lineage.unseal("rec", blob, newest.data) is not None


class Producer:
    """Stands in for the client's re-run: counts runs, fails the first ``failures``."""

    def __init__(self, value: bytes, failures: int = 0) -> None:
        self.value, self.failures, self.runs = value, failures, 0

    async def __call__(self, inv: protocol.Invocation, raw: Any) -> Any:
        self.runs += 1
        assert bytes(raw) == b"args"
        if self.runs <= self.failures:
            raise RuntimeError("no node took it")
        return [Ref(digest_of(self.value), len(self.value), data=self.value)]


def recorded(client: sp.Client, value: bytes) -> Ref:
    """A lost Ref to ``value`` with an idempotent record (its arguments inline)."""
    ref = lost_ref(unique("blob"), digest=digest_of(value))
    inv = protocol.Invocation(
        id="i.1",
        app="a",
        fn="f",
        digest="d",
        module="m",
        qualname="f",
        args=protocol.Payload(codec=protocol.CODEC_PICKLE, data=b"args"),
        deadline=0.0,
        timeout_s=5.0,
    )
    record = protocol.LineageRecord(function="a.f", idempotent=True, invocation=inv.encode())
    assert client.run(lineage.record(client.nc, ref, record))
    return ref


def remade(client: sp.Client, ref: Ref, producer: Producer) -> bytes:
    lineage._remade.pop(ref, None)  # as a reader in another process
    lost = ObjectLostError(f"{ref.name()} is gone")
    return bytes(client.run(lineage.remake(client.nc, ref, lost, producer)))


def test_a_claim_whose_reader_died_is_taken_over(own: Lattice, client: sp.Client) -> None:
    ref, producer = recorded(client, b"value"), Producer(b"value")
    kv = client.run(_kv(own, client))
    client.run(kv.create(protocol.lineage_key("claim", lineage.name_of(ref.blob or "")), b"1"))
    assert remade(client, ref, producer) == b"value"
    assert producer.runs == 1


def test_a_failed_remake_is_tried_again_by_a_later_reader(own: Lattice, client: sp.Client) -> None:
    ref, producer = recorded(client, b"later"), Producer(b"later", failures=1)
    with pytest.raises(ObjectLostError, match="again failed: no node took it"):
        remade(client, ref, producer)
    assert remade(client, ref, producer) == b"later"
    assert remade(client, ref, producer) == b"later"  # made already: not run a third time
    assert producer.runs == 2
