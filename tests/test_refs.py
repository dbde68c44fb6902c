"""Object references (issue 16, item 1): ``sp.put`` / ``sp.get``, Refs as arguments at
any depth, Refs made inside functions, durable and ephemeral lifetimes, and the
permissions of a caller-role client and of an executor's own user."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import superpose as sp
from conftest import Lattice, lattice_env, poll, superpose_cli
from superpose import config, protocol
from superpose.client.refs import holder_of
from superpose.errors import SettingError
from superpose.lattice import connection, objects, payload, ref_sealing, sealed
from superpose.lattice.ref_args import RefCache, swap
from superpose.lattice.refs import Ref
from test_cli import deploy, unique, write_app
from test_roles import Wire, cli, connected, mint
from test_wire_pins import Wire as PinWire

BIG = 300 * 1024
"""Over the spill threshold: held by its putter, not inline."""

APP = '''
import superpose as sp


@sp.function
def shape(*args, **kwargs):
    """What arrived: each argument's type and length, at any depth."""
    def describe(value):
        if isinstance(value, sp.Ref):
            return "Ref"
        if isinstance(value, (list, tuple)):
            return [describe(item) for item in value]
        if isinstance(value, dict):
            return {key: describe(item) for key, item in value.items()}
        if isinstance(value, bytes):
            return f"bytes:{len(value)}:{value[:1].decode()}"
        return repr(value)
    return describe(list(args)) + [describe(kwargs)]


@sp.function
async def shape_async(value):
    return f"{type(value).__name__}:{len(value)}"


@sp.function
def make(n, durable=False):
    """A Ref made inside a function, returned to the caller."""
    return sp.put(b"m" * n, durable=durable)


@sp.function
def make_here(n):
    """A Ref and the process holding it (for a test that kills that process)."""
    import os
    return sp.put(b"h" * n), os.getpid()


@sp.function
async def make_async(n):
    return await sp.put.aio(b"a" * n)


@sp.function
def read(box):
    """A Ref inside an object the node does not look into: read with sp.get."""
    return len(sp.get(box.ref))


@sp.function
async def read_async(box):
    return len(await sp.get.aio(box.ref))


@sp.function
async def write_others_record():
    """From inside a function, with its own creds: another holder's sp_refs record."""
    import asyncio
    import os
    from pathlib import Path

    import nats

    from superpose.client import session
    from superpose.security import jwt
    from superpose.security.creds import read_creds

    errors = []

    async def on_error(exc):
        errors.append(str(exc).lower())

    creds = os.environ["SUPERPOSE_CREDS"]
    me = jwt.claims_of(read_creds(Path(creds))[0])["name"]
    url = session.node_client().nc.connected_url.geturl()
    nc = await nats.connect(
        url, user_credentials=creds, inbox_prefix=f"_INBOX.{me}", error_cb=on_error,
        allow_reconnect=False,
    )
    subject = "$KV.sp_refs." + "ab" * 32 + ".someone"
    try:
        await nc.publish(subject, b"{}")
        for _ in range(100):
            if any("permissions violation" in e and subject.lower() in e for e in errors):
                return "denied"
            await asyncio.sleep(0.05)
        return "ALLOWED"
    finally:
        await nc.close()


@sp.function
def put_lock():
    import threading
    return sp.put(threading.Lock())
'''


@pytest.fixture(scope="module")
def client(lattice: Lattice) -> Iterator[sp.Client]:
    """A client of this module's own: closing it frees the objects its tests put,
    which other modules' checks of the session client's offers must not see."""
    with connected(lattice) as own:
        yield own


@pytest.fixture(scope="module")
def app(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = unique("refs")
    folder = write_app(tmp_path_factory.mktemp("refs") / name, {f"{name}.py": APP})
    deploy(lattice, folder)
    return name


def fn(client: sp.Client, app: str, name: str) -> sp.RemoteFunction:
    return client.function(f"{app}.{name}")


# --- put and get ------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, BIG, 6 * 1024 * 1024])
def test_put_and_get_round_trip(client: sp.Client, size: int) -> None:
    value = {"payload": b"v" * size, "n": size}
    ref = sp.put(value)
    assert isinstance(ref, sp.Ref)
    assert ref.size > size and len(ref.digest) == 64
    assert sp.get(ref) == value
    assert client.run(sp.get.aio(ref)) == value


def test_the_same_value_twice_is_one_object(client: sp.Client) -> None:
    holder = holder_of(client)
    before = len(holder)
    first, second = sp.put(b"s" * BIG), sp.put(b"s" * BIG)
    assert first == second and first.blob == second.blob
    assert len(holder) == before + 1


def test_a_small_value_travels_inside_its_ref(client: sp.Client) -> None:
    ref = sp.put([1, 2, 3])
    assert ref.data is not None and ref.holder == ""
    assert sp.get(pickle.loads(pickle.dumps(ref))) == [1, 2, 3]


# --- Refs as arguments --------------------------------------------------------------


def test_refs_at_any_depth_arrive_as_values(client: sp.Client, app: str) -> None:
    big, small = sp.put(b"b" * BIG), sp.put(b"s")
    got = fn(client, app, "shape").remote(
        big, [small, (big,)], {"deep": [{"deeper": big}]}, key=[small, big]
    )
    b = f"bytes:{BIG}:b"
    assert got == [b, ["bytes:1:s", [b]], {"deep": [{"deeper": b}]}, {"key": ["bytes:1:s", b]}]


def test_refs_in_durable_calls_and_async_functions(client: sp.Client, app: str) -> None:
    ref = sp.put(b"d" * BIG)
    assert fn(client, app, "shape").spawn(ref).result(timeout=60) == [f"bytes:{BIG}:d", {}]
    assert fn(client, app, "shape_async").remote(ref) == f"bytes:{BIG}"
    assert list(fn(client, app, "shape_async").map([ref, ref])) == [f"bytes:{BIG}"] * 2


def test_eight_calls_with_one_ref(client: sp.Client, app: str) -> None:
    ref = sp.put(b"e" * (2 * 1024 * 1024))
    futures = [fn(client, app, "shape_async").spawn(ref) for _ in range(8)]
    assert {f.result(timeout=60) for f in futures} == {f"bytes:{2 * 1024 * 1024}"}


def test_a_ref_the_node_does_not_look_into_is_read_with_get(client: sp.Client, app: str) -> None:
    box = SimpleNamespace(ref=sp.put(b"r" * BIG))
    assert fn(client, app, "read").remote(box) == BIG
    assert fn(client, app, "read_async").remote(box) == BIG


def test_swap_leaves_containers_without_refs_alone() -> None:
    ref = Ref("0" * 64, 1, data=b"x")
    plain = [1, (2, 3), {"a": "b"}]
    assert swap(plain, {ref.digest: "v"}) == plain
    assert swap({"k": (ref, [ref])}, {ref.digest: "v"}) == {"k": ("v", ["v"])}


# --- Refs made inside functions ------------------------------------------------------


@pytest.mark.parametrize("durable", [False, True])
def test_a_function_returns_a_ref_it_put(client: sp.Client, app: str, durable: bool) -> None:
    ref = fn(client, app, "make").remote(BIG, durable=durable)
    assert isinstance(ref, sp.Ref) and ref.durable == durable
    assert sp.get(ref) == b"m" * BIG


def test_an_async_function_returns_a_ref_it_put(client: sp.Client, app: str) -> None:
    ref = fn(client, app, "make_async").remote(BIG)
    assert len(ref.holder) == 16  # the executor's client: its own user
    assert ref.node and f"held by {ref.holder} on node {ref.node}" in ref.name()
    assert ref.producer and f"made by invocation {ref.producer}" in ref.name()
    assert sp.get(ref) == b"a" * BIG
    assert fn(client, app, "shape").remote(ref) == [f"bytes:{BIG}:a", {}]


# --- lifetimes ----------------------------------------------------------------------


def test_a_durable_object_outlives_its_putter(client: sp.Client, lattice: Lattice) -> None:
    with connected(lattice):
        ref = sp.put({"kept": b"k" * BIG}, durable=True)
    assert ref.durable
    assert sp.get(ref) == {"kept": b"k" * BIG}


def test_an_ephemeral_object_dies_with_its_putter(client: sp.Client, lattice: Lattice) -> None:
    with connected(lattice):
        ref = sp.put(b"g" * BIG)
        kept = pickle.loads(pickle.dumps(ref))
    with pytest.raises(sp.ObjectLostError, match=rf"object {ref.digest[:12]} .*held by"):
        sp.get(kept)


def test_an_ephemeral_object_is_freed_after_its_grace(
    client: sp.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERPOSE_REF_GRACE_S", "0.2")
    ref = sp.put(b"f" * BIG + b"unique grace")
    copy = pickle.loads(pickle.dumps(ref))  # not a live Ref: only the putter's count
    assert sp.get(copy)[:1] == b"f"
    del ref

    def lost() -> bool:
        try:
            sp.get(copy)
        except sp.ObjectLostError:
            return True
        return False

    poll(lost, "the object to be freed after its grace")
    with pytest.raises(sp.ObjectLostError, match=f"object {copy.digest[:12]}.*is gone"):
        sp.get(copy)


def test_a_pending_call_keeps_its_refs(
    client: sp.Client, app: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERPOSE_REF_GRACE_S", "0")
    future = fn(client, app, "shape").spawn(sp.put(b"p" * BIG + b"pending"))
    assert future.result(timeout=60) == [f"bytes:{BIG + 7}:p", {}]


def test_an_unknown_ref_is_lost(client: sp.Client) -> None:
    holderless = Ref("ab" * 32, BIG)
    with pytest.raises(sp.ObjectLostError, match="object abababababab"):
        sp.get(holderless)
    nowhere = Ref("cd" * 32, BIG, holder="gone", source=protocol.offers_subject("gone"), blob="x")
    with pytest.raises(sp.ObjectLostError, match="held by gone"):
        sp.get(nowhere)
    with pytest.raises(sp.ObjectLostError, match="not in the sp_objects store"):
        sp.get(Ref("ef" * 32, BIG, durable=True))


def test_a_lost_argument_fails_the_call_naming_it(client: sp.Client, app: str) -> None:
    lost = Ref("12" * 32, BIG, holder="gone", source=protocol.offers_subject("gone"), blob="x")
    with pytest.raises(sp.ObjectLostError, match="object 121212121212"):
        fn(client, app, "shape").remote(lost)


# --- bad input ----------------------------------------------------------------------


def test_an_unpicklable_value_is_named(client: sp.Client, app: str) -> None:
    unpicklable = r"the value given to sp\.put: cannot send a _thread\.lock"
    with pytest.raises(sp.SerializationError, match=unpicklable):
        sp.put(threading.Lock())
    with pytest.raises(sp.SerializationError, match=r"in it .*_thread.RLock"):
        sp.put({"ok": 1, "bad": threading.RLock()})
    with pytest.raises(sp.SerializationError, match=r"_thread\.lock"):
        fn(client, app, "put_lock").remote()


def test_get_of_something_else_is_refused(client: sp.Client) -> None:
    with pytest.raises(sp.UserError, match=r"sp\.get takes an sp\.Ref .*got a value of type int"):
        sp.get(42)  # type: ignore[arg-type]


# --- listing ------------------------------------------------------------------------


def test_objects_ls_shows_sizes_kinds_and_holders(client: sp.Client, lattice: Lattice) -> None:
    ephemeral = sp.put(b"l" * BIG + b"listed")
    durable = sp.put(b"L" * BIG + b"listed", durable=True)
    shown = superpose_cli("objects", "ls", "--json", url=lattice.url, check=True)
    rows = {row["digest"]: row for row in json.loads(shown.stdout)}
    assert rows[ephemeral.digest]["holders"] == [client.id]
    assert rows[ephemeral.digest]["durable"] is False
    stored = ref_sealing.object_name(durable.digest)  # sealed: the digest is not listed
    assert durable.digest not in rows
    assert rows[stored] == {
        "digest": stored,
        "size": durable.size,
        "durable": True,
        "holders": [],
    }
    table = superpose_cli("objects", "ls", url=lattice.url, check=True).stdout
    assert ephemeral.digest[:16] in table and "ephemeral" in table and "durable" in table


@pytest.mark.parametrize("by_stored_name", [False, True])
def test_objects_rm_removes_a_durable_object(
    client: sp.Client, lattice: Lattice, by_stored_name: bool
) -> None:
    ref = sp.put(b"x" * BIG + b"removed" + bytes([by_stored_name]), durable=True)
    named = ref_sealing.object_name(ref.digest) if by_stored_name else ref.digest
    superpose_cli("objects", "rm", named, url=lattice.url, check=True)
    with pytest.raises(sp.ObjectLostError):
        sp.get(ref)
    bad = superpose_cli("objects", "rm", "nope", url=lattice.url)
    assert bad.returncode != 0 and "not an object's digest" in bad.stderr


# --- permissions --------------------------------------------------------------------


def test_a_caller_puts_gets_and_passes_refs(lattice: Lattice, app: str) -> None:
    creds = mint(lattice, "caller")
    with connected(lattice, creds) as caller:
        big, durable = sp.put(b"c" * BIG), sp.put(b"D" * BIG, durable=True)
        assert sp.get(big) == b"c" * BIG and sp.get(durable) == b"D" * BIG
        got = fn(caller, app, "shape").remote([big, durable])
        assert got == [[f"bytes:{BIG}:c", f"bytes:{BIG}:D"], {}]
        made = fn(caller, app, "make").remote(BIG)  # held by an executor's own user
        assert sp.get(made) == b"m" * BIG
        assert big.holder == caller.id
        listed = cli(lattice, creds, "objects", "ls", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = {row["digest"]: row for row in json.loads(listed.stdout)}
        assert rows[big.digest]["holders"] == [caller.id]
        assert not any(row["durable"] for row in rows.values())
        assert "only admin credentials may list them" in listed.stderr


def test_async_get_from_another_loop(client: sp.Client) -> None:
    ref = sp.put(b"z" * BIG)

    async def read() -> Any:
        return await sp.get.aio(ref)

    assert asyncio.run(read()) == b"z" * BIG


def test_an_executor_fetches_each_object_once(client: sp.Client) -> None:
    """Eight calls given one Ref at once share one fetch; the least recently used
    objects go once the cache is over its size."""
    first, second = sp.put(b"1" * BIG, durable=True), sp.put(b"2" * BIG, durable=True)

    async def fetch_all() -> RefCache:
        cache = RefCache(client.nc, max_bytes=BIG + BIG // 2)
        datas = await asyncio.gather(*(cache.bytes_of(first) for _ in range(8)))
        assert {len(d) for d in datas} == {first.size} and cache.fetched == 1
        await cache.bytes_of(second)  # over the size: the first goes
        await cache.bytes_of(second)
        assert cache.fetched == 2
        await cache.bytes_of(first)
        assert cache.fetched == 3
        return cache

    client.run(fetch_all())


def test_a_bad_grace_setting_is_named() -> None:
    with pytest.raises(SettingError, match="SUPERPOSE_REF_GRACE_S='soon'"):
        config.settings({"SUPERPOSE_REF_GRACE_S": "soon"})
    with pytest.raises(SettingError, match="0 or more"):
        config.settings({"SUPERPOSE_REF_GRACE_S": "-1"})
    assert config.settings({"SUPERPOSE_REF_GRACE_S": "0.5"}).ref_grace_s == 0.5


def test_objects_rm_of_an_unknown_object_is_an_error(lattice: Lattice) -> None:
    shown = superpose_cli("objects", "rm", "ab" * 32, url=lattice.url)
    assert shown.returncode == 1 and "no durable object abababababab" in shown.stderr


async def test_a_caller_may_not_write_another_holders_records(lattice: Lattice) -> None:
    w = await Wire().open(lattice.url, mint(lattice, "caller"))
    try:
        key = protocol.ref_record_key("ab" * 32, "x.y")
        subject = protocol.kv_subject(protocol.REFS_BUCKET, key)
        await w.nc.publish(subject, b"{}")
        assert await w.refused(subject)
    finally:
        await w.nc.close()


def test_a_viewer_lists_ephemeral_objects_and_is_told_why_not_durable(
    client: sp.Client, lattice: Lattice
) -> None:
    ref = sp.put(b"v" * BIG + b"viewed")
    listed = cli(lattice, mint(lattice, "viewer"), "objects", "ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert ref.digest in {row["digest"] for row in json.loads(listed.stdout)}
    assert "only admin credentials may list them" in listed.stderr


def test_a_ref_whose_holder_was_killed_is_lost_naming_it(client: sp.Client, app: str) -> None:
    ref, pid = fn(client, app, "make_here").remote(BIG)
    assert sp.get(ref) == b"h" * BIG
    os.kill(pid, signal.SIGKILL)

    def lost() -> str:
        try:
            sp.get(ref)
        except sp.ObjectLostError as exc:
            return str(exc)
        return ""

    message = poll(lost, "the killed holder's object to be lost")
    assert f"object {ref.digest[:12]}" in message
    assert f"held by {ref.holder} on node {ref.node}" in message


def test_a_function_may_not_write_another_holders_record(client: sp.Client, app: str) -> None:
    assert fn(client, app, "write_others_record").remote() == "denied"


READER = """
import gc, pickle, sys
import superpose as sp
sp.connect(show_logs=False)
ref = pickle.loads(bytes.fromhex(sys.stdin.readline()))
print("holding", flush=True)
sys.stdin.readline()
del ref
gc.collect()
print("dropped", flush=True)
sys.stdin.readline()
"""


def test_a_ref_held_in_another_process_keeps_its_object(
    lattice: Lattice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers renew leases: the putter dropped its Ref, and the object stays while
    another process holds one; once that one is dropped it goes after the lease."""
    monkeypatch.setenv("SUPERPOSE_REF_GRACE_S", "0.3")
    env = {**os.environ, **lattice_env(lattice.url)}
    reader = subprocess.Popen(
        [sys.executable, "-c", READER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert reader.stdin is not None and reader.stdout is not None
    try:
        with connected(lattice) as putter:
            holder = holder_of(putter)
            ref = sp.put(b"k" * BIG + b"leased")
            digest = ref.digest
            reader.stdin.write(pickle.dumps(ref).hex() + "\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "holding"
            del ref  # the putter's own Ref: only the reader's lease keeps it now
            heard = holder.leases_heard
            poll(lambda: holder.leases_heard >= heard + 10, "ten more lease renewals")
            assert holder.bytes_of(digest) is not None  # far past the putter's 0.3 s grace
            reader.stdin.write("drop\n")
            reader.stdin.flush()
            assert reader.stdout.readline().strip() == "dropped"
            poll(lambda: holder.bytes_of(digest) is None, "the object to go once unleased")
    finally:
        reader.stdin.close()
        reader.wait(timeout=30)


def test_a_keep_message_that_is_not_one_is_refused() -> None:
    assert protocol.parse_ref_keep(protocol.ref_keep_message(2, ["ab", "cd"])) == (
        2.0,
        ["ab", "cd"],
    )
    for bad in (b"", b"soon ab", b"-1 ab", b"99999999 ab"):
        with pytest.raises(protocol.ProtocolError):
            protocol.parse_ref_keep(bad)


# --- sealing ------------------------------------------------------------------------


def test_a_durable_object_is_stored_sealed_under_a_hash_of_its_digest(
    client: sp.Client,
) -> None:
    value = b"S" * BIG + b"sealed"
    ref = sp.put(value, durable=True)

    async def stored() -> tuple[bool, bytes]:
        here = await objects.size(client.nc.jetstream(), protocol.OBJECTS_BUCKET, ref.digest)
        sealed = await objects.get(
            client.nc, protocol.OBJECTS_BUCKET, ref_sealing.object_name(ref.digest)
        )
        return here is not None, sealed

    by_digest, sealed = client.run(stored())
    assert not by_digest and sealed != pickle.dumps(value) and b"SSSS" not in sealed
    opened = ref_sealing.unseal(ref.digest, sealed)  # the bytes a call's argument would be
    assert payload.decode_value(opened, protocol.CODEC_PICKLE) == value
    assert sp.get(ref) == value


def test_an_altered_durable_object_is_lost_naming_it(client: sp.Client) -> None:
    ref = sp.put(b"T" * BIG + b"tampered", durable=True)
    name = ref_sealing.object_name(ref.digest)

    async def alter() -> None:
        sealed = await objects.get(client.nc, protocol.OBJECTS_BUCKET, name)
        await objects.delete(client.nc, protocol.OBJECTS_BUCKET, name)
        flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
        await objects.put(client.nc, protocol.OBJECTS_BUCKET, name, flipped)

    client.run(alter())
    with pytest.raises(sp.ObjectLostError, match=f"{ref.digest[:12]} does not open"):
        sp.get(ref)


def test_a_durable_object_too_big_to_seal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sealed, "MAX_SEALED_BYTES", 4)
    with pytest.raises(sp.SerializationError, match="durable object of 5 bytes is over the 4"):
        ref_sealing.seal("ab" * 32, b"12345")


def test_a_sealed_object_opens_with_its_digest_only() -> None:
    value = b"value"
    digest = hashlib.sha256(value).hexdigest()
    box = ref_sealing.seal(digest, value)
    assert value not in box and ref_sealing.unseal(digest, box) == value
    with pytest.raises(sp.ObjectLostError, match=f"{'ab' * 6} does not open"):
        ref_sealing.unseal("ab" * 32, box)


async def test_a_caller_snooping_the_durable_store_finds_only_ciphertext(
    lattice: Lattice,
) -> None:
    """A caller may read ``sp_objects`` only in forms that name an object; a literal
    ``*`` in those forms still reads the newest object and every chunk (as for blobs),
    and finds a hashed name and sealed bytes, neither the digest nor the value."""
    marker = unique("durable-secret").encode()
    value = marker + b"." * BIG
    creds = mint(lattice, "caller")
    nc = await connection.connect(lattice.url, name="refs-snoop", creds=creds)
    try:
        await objects.put(nc, protocol.OBJECTS_BUCKET, "x", b"")  # a write is allowed
        digest = hashlib.sha256(value).hexdigest()
        name = ref_sealing.object_name(digest)
        await objects.put(nc, protocol.OBJECTS_BUCKET, name, ref_sealing.seal(digest, value))
        assert ref_sealing.unseal(digest, await objects.get(nc, protocol.OBJECTS_BUCKET, name))
    finally:
        await nc.close()
    stream = protocol.object_stream(protocol.OBJECTS_BUCKET)
    wire = await PinWire().open(lattice.url, creds)
    seen: list[bytes] = []
    try:
        await wire.refused(f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": 1})
        await wire.refused(f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream})
        meta = protocol.object_meta_subject(protocol.OBJECTS_BUCKET, "*")
        newest = await wire.nc.request(f"{protocol.direct_get_subject(stream)}.{meta}", b"")
        seen.append(newest.data)
        chunk = protocol.object_chunk_subject(protocol.OBJECTS_BUCKET, "*")
        chunks = await wire.nc.request(f"{protocol.direct_get_subject(stream)}.{chunk}", b"")
        seen.append(chunks.data)
    finally:
        await wire.nc.close()
    assert all(seen) and not any(marker in data or digest.encode() in data for data in seen)
    assert json.loads(seen[0])["name"] == name
