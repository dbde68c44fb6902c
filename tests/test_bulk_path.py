"""Bulk bytes take the short way (issue 16, item 3): an offer is also written once to
host-local shared memory and mapped by a reader on the same host, the NATS pull
stays the fallback, and big buffers are pickled out of band."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from superpose import protocol
from superpose.config import SPILL_THRESHOLD_BYTES
from superpose.lattice import offers, oob, payload, shm
from superpose.lattice.connection import connect
from superpose.lattice.offers import OfferGoneError, Offers
from superpose.node import sandbox
from test_cli import deploy, unique, write_app
from test_roles import connected, mint

MB = 1024 * 1024
BIG = SPILL_THRESHOLD_BYTES * 8


def _digest(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the shelf: files, names, refusals ------------------------------------------------


@pytest.fixture
def shelf(tmp_path: Path) -> shm.Shelf:
    return shm.Shelf(root=tmp_path)


def test_a_shelved_offer_maps_back_whole(shelf: shm.Shelf, tmp_path: Path) -> None:
    data = os.urandom(3 * MB + 7)
    name = shelf.put(data)
    assert name is not None and name.startswith(f"superpose-{os.geteuid()}/{os.getpid()}-")
    folder = tmp_path / f"superpose-{os.geteuid()}"
    assert folder.stat().st_mode & 0o777 == shm.FOLDER_MODE  # others cannot list it
    assert (tmp_path / name).stat().st_mode & 0o777 == shm.FILE_MODE
    with shm.read(name, len(data), root=tmp_path) as mapping:
        assert _digest(mapping) == _digest(data)
    shelf.remove(name)
    assert not (tmp_path / name).exists()


def test_a_wrong_or_expired_name_is_refused(shelf: shm.Shelf, tmp_path: Path) -> None:
    name = shelf.put(b"x" * 100)
    assert name is not None
    folder = name.partition("/")[0]
    guessed = f"{folder}/{os.getpid()}-{secrets.token_hex(16)}"
    with pytest.raises(shm.ShmRefusedError, match="cannot be opened here"):
        shm.read(guessed, 100, root=tmp_path)
    for bad in ("../../etc/passwd", f"{folder}/../x", "superpose-0/1-abc", "/etc/passwd"):
        with pytest.raises(shm.ShmRefusedError, match="is not one superpose writes"):
            shm.read(bad, 100, root=tmp_path)
    with pytest.raises(shm.ShmRefusedError, match="holds 100 bytes, the offer says 99"):
        shm.read(name, 99, root=tmp_path)
    shelf.remove(name)  # withdrawn or expired: the file is gone
    with pytest.raises(shm.ShmRefusedError, match="no such file"):
        shm.read(name, 100, root=tmp_path)


def test_a_file_whose_process_is_gone_is_refused(shelf: shm.Shelf, tmp_path: Path) -> None:
    """Its offer ended with its process, swept or not: a Ref's reader then hears "lost"
    from its holder's absence, whenever the sweep comes."""
    name = shelf.put(b"d" * 100)
    assert name is not None
    said = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    gone_pid = int(said.stdout)  # a shell that has ended
    folder, _, file = name.partition("/")
    orphan = f"{folder}/{gone_pid}-{file.partition('-')[2]}"
    os.rename(tmp_path / name, tmp_path / orphan)
    with pytest.raises(shm.ShmRefusedError, match="the process holding it is gone"):
        shm.read(orphan, 100, root=tmp_path)


def test_a_file_its_folder_does_not_own_is_refused(shelf: shm.Shelf, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file away")
    name = shelf.put(b"y" * 10)
    assert name is not None
    os.chown(tmp_path / name, 12345, 12345)
    with pytest.raises(shm.ShmRefusedError, match=f"not a regular file of uid {os.geteuid()}"):
        shm.read(name, 10, root=tmp_path)


def test_another_uid_that_knows_the_name_maps_it() -> None:
    """A sandboxed executor is another uid: the name is its key, not its uid."""
    if os.geteuid() != 0:
        pytest.skip("only root can switch users")
    shelf = shm.Shelf()
    data = os.urandom(1000)
    name = shelf.put(data)
    assert name is not None
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.setgid(61000)
                os.setuid(61000)
                with shm.read(name, len(data)) as mapping:
                    code = 0 if mapping[:] == data else 2
                try:
                    os.listdir(shm.ROOT / name.partition("/")[0])
                    code = 3  # it must not list what else is offered
                except PermissionError:
                    pass
            finally:
                os._exit(code)
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        shelf.remove(name)


def test_a_removed_folder_is_made_again(shelf: shm.Shelf, tmp_path: Path) -> None:
    shm.remove_folder(os.geteuid(), root=tmp_path)
    name = shelf.put(b"again" * 100)
    assert name is not None and (tmp_path / name).stat().st_size == 500


def test_a_folder_someone_else_made_is_not_used(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a folder away")
    planted = tmp_path / f"superpose-{os.geteuid()}"
    planted.mkdir(mode=0o777)
    os.chown(planted, 12345, 12345)  # another user could list and replace files here
    shelf = shm.Shelf(root=tmp_path)
    assert not shelf.usable
    assert shelf.put(b"z") is None  # its offers go over NATS only


def test_a_file_whose_readers_are_done_is_written_again_under_a_new_name(
    shelf: shm.Shelf, tmp_path: Path
) -> None:
    first = shelf.put(os.urandom(2 * MB))
    assert first is not None
    inode = (tmp_path / first).stat().st_ino
    shelf.remove(first, reuse=True)
    with pytest.raises(shm.ShmRefusedError, match="no such file"):  # its name is dead
        shm.read(first, 2 * MB, root=tmp_path)
    data = os.urandom(MB + 5)
    second = shelf.put(data)
    assert second is not None and second != first
    assert (tmp_path / second).stat().st_ino == inode  # the same pages, a new name
    with shm.read(second, len(data), root=tmp_path) as mapping:
        assert mapping[:] == data
    shelf.remove(second)  # a reader may still be at it: unlinked, never reused
    assert shelf.put(b"x" * (2 * MB)) != second
    assert not (tmp_path / second).exists()
    shelf.close()


def test_a_full_tmpfs_leaves_no_partial_file_and_the_offer_goes_over_nats(
    tmp_path: Path,
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        shelf = shm.Shelf(root=small)
        assert shelf.put(os.urandom(2 * MB)) is None  # ENOSPC: None, so NATS carries it
        assert list((small / shelf.folder_name).iterdir()) == []
        name = shelf.put(b"fits" * 1000)
        assert name is not None
        with shm.read(name, 4000, root=small) as mapping:
            assert mapping[:4] == b"fits"
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_files_of_dead_processes_are_swept(tmp_path: Path) -> None:
    shm.Shelf(root=tmp_path)
    folder = tmp_path / f"superpose-{os.geteuid()}"
    dead_pid = _dead_pid()
    orphan = folder / f"{dead_pid}-{secrets.token_hex(16)}"
    orphan.write_bytes(b"left behind")
    mine = folder / f"{os.getpid()}-{secrets.token_hex(16)}"
    mine.write_bytes(b"still offered")
    shm.Shelf(root=tmp_path)  # the next process of this uid to offer sweeps
    assert not orphan.exists() and mine.exists()


def test_a_node_sweeps_every_folder_it_may(tmp_path: Path) -> None:
    folders = [tmp_path / "superpose-12345", tmp_path / "superpose-23456"]
    dead = _dead_pid()
    for folder in folders:
        folder.mkdir()
        (folder / f"{dead}-{secrets.token_hex(16)}").write_bytes(b"orphan")
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / f"{dead}-x").write_bytes(b"not ours")
    assert shm.sweep_all(root=tmp_path) == 2
    assert (tmp_path / "unrelated" / f"{dead}-x").exists()


def _dead_pid() -> int:
    proc = os.fork()
    if proc == 0:
        os._exit(0)
    os.waitpid(proc, 0)
    return proc


# --- out-of-band pickles ----------------------------------------------------------------


def test_big_buffers_are_pickled_out_of_band_and_come_back_equal() -> None:
    big = os.urandom(2 * MB)
    shared = [big[:100_000]]
    for args, kwargs in [
        ((big,), {}),
        ((bytearray(big[:200_000]), 5), {"k": big[:70_000]}),
        (([big[:100_000]] * 3,), {}),
        ((shared, shared), {}),
        ((1, "small", b"tiny"), {}),
    ]:
        data = bytes(payload.encode_args(args, kwargs, protocol.CODEC_PICKLE))
        got_args, got_kwargs = payload.decode_args(memoryview(data), protocol.CODEC_PICKLE)
        assert got_args == args and got_kwargs == kwargs
        assert [type(a) for a in got_args] == [type(a) for a in args]
    framed = payload.encode_args((big,), {}, protocol.CODEC_PICKLE)
    assert isinstance(framed, oob.Frame) and oob.is_framed(bytes(framed))  # not yet joined
    assert len(payload.encode_args(([big[:100_000]] * 3,), {}, protocol.CODEC_PICKLE)) < 110_000
    assert not oob.is_framed(payload.encode_args((b"tiny",), {}, protocol.CODEC_PICKLE))
    same, again = payload.decode_args(
        bytes(payload.encode_args((shared, shared), {}, protocol.CODEC_PICKLE)),
        protocol.CODEC_PICKLE,
    )[0]
    assert same is again  # one list stays one list
    (writable,), _ = payload.decode_args(
        bytes(payload.encode_args((bytearray(200_000),), {}, protocol.CODEC_PICKLE)),
        protocol.CODEC_PICKLE,
    )
    writable[0] = 1  # a bytearray arrives writable, as an in-band pickle would give it


def test_a_buffer_changed_after_encoding_is_sent_as_it_was() -> None:
    mutable = bytearray(2 * MB)
    data = payload.encode_args((mutable,), {}, protocol.CODEC_PICKLE)
    mutable[:4] = b"late"  # after spawn() returned, before the bytes left
    (sent,), _ = payload.decode_args(bytes(data), protocol.CODEC_PICKLE)
    assert sent == bytearray(2 * MB)


def test_a_truncated_frame_is_refused() -> None:
    data = bytes(payload.encode_args((os.urandom(200_000),), {}, protocol.CODEC_PICKLE))
    with pytest.raises(Exception, match="truncated or padded"):
        payload.decode_args(data[:-10], protocol.CODEC_PICKLE)


# --- offers: shared memory first, NATS as the fallback --------------------------------


def test_a_reader_on_this_host_maps_the_offer_without_the_broker(lattice: Lattice) -> None:
    async def body() -> None:
        owner_nc = await connect(lattice.url, name="test-bulk-owner")
        reader_nc = await connect(lattice.url, name="test-bulk-reader")
        owned = Offers(owner_nc, "bulkowner" + os.urandom(4).hex())  # serves nothing on NATS
        try:
            data = payload.encode_args((os.urandom(BIG),), {}, protocol.CODEC_PICKLE)
            offered = owned.offer(data, protocol.CODEC_PICKLE, hold_s=60)
            assert offered.shm is not None
            got = await offers.pull(reader_nc, offered)
            assert isinstance(data, oob.Frame)  # written to the file part by part
            assert _digest(got) == _digest(bytes(data))
            owned.withdraw(offered)
            assert not (shm.ROOT / offered.shm).exists()
            with pytest.raises(OfferGoneError, match="is gone"):  # nor on NATS: no one
                await offers.pull(reader_nc, offered)
        finally:
            owned.close()
            await owner_nc.close()
            await reader_nc.close()

    asyncio.run(body())


def test_when_the_mapping_fails_the_reader_pulls_over_nats(lattice: Lattice) -> None:
    async def body() -> None:
        owner_nc = await connect(lattice.url, name="test-bulk-owner")
        reader_nc = await connect(lattice.url, name="test-bulk-reader")
        owned = Offers(owner_nc, "bulkowner" + os.urandom(4).hex())
        await owner_nc.subscribe(owned.subject, cb=owned.serve)
        await owner_nc.flush()
        try:
            data = os.urandom(BIG)
            offered = owned.offer(data, protocol.CODEC_PICKLE, hold_s=60)
            assert offered.shm is not None
            owned.shelf.remove(offered.shm)  # the file is gone; the offer is not
            assert await offers.pull(reader_nc, offered) == data
            elsewhere = protocol.Payload(  # a name from another host: nothing here
                codec=offered.codec,
                blob=offered.blob,
                size=offered.size,
                source=offered.source,
                shm=f"superpose-{os.geteuid()}/1-{secrets.token_hex(16)}",
            )
            assert await offers.pull(reader_nc, elsewhere) == data
        finally:
            owned.close()
            await owner_nc.close()
            await reader_nc.close()

    asyncio.run(body())


# --- whole calls --------------------------------------------------------------------


def test_fifty_megabytes_in_and_out_arrive_intact(client: sp.Client) -> None:
    data = os.urandom(50 * MB)
    assert fns.echo_size.remote(data) == len(data)
    back = fns.identity.remote(data)
    assert _digest(back) == _digest(data)
    assert fns.make_bytes.remote(50 * MB) == b"\x07" * (50 * MB)
    assert fns.relay_size.remote(BIG) == BIG  # nested: an executor offers and maps
    assert len(client.offers) == 0
    # Withdrawn arguments leave no file but the few kept, renamed, for the next ones.
    assert len(_files_of(os.getpid())) <= shm.KEEP_FREE_FILES


def _files_of(pid: int) -> list[Path]:
    folder = shm.ROOT / f"superpose-{os.geteuid()}"
    return list(folder.glob(f"{pid}-*")) if folder.is_dir() else []


def test_a_call_whose_mapping_fails_falls_back_to_nats(
    client: sp.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put = shm.Shelf.put

    def put_then_lose(self: shm.Shelf, data: Any) -> str | None:
        name = real_put(self, data)
        self.remove(name)  # as if the file went before the executor could map it
        return name

    monkeypatch.setattr(shm.Shelf, "put", put_then_lose)
    data = os.urandom(8 * MB)
    assert _digest(fns.identity.remote(data)) == _digest(data)


def test_one_argument_read_by_eight_calls_on_two_nodes(client: sp.Client) -> None:
    data = os.urandom(12 * MB)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda _: fns.echo_size.remote(data), range(8)))
        backs = list(pool.map(lambda _: _digest(fns.identity.remote(data)), range(8)))
    assert sizes == [len(data)] * 8
    assert backs == [_digest(data)] * 8
    assert len(client.offers) == 0


ECHO_APP = """
import superpose as sp


@sp.function
def size(data: bytes) -> int:
    return len(data)


@sp.function
def make(n: int) -> bytes:
    return b"\\x03" * n
"""


def test_a_caller_role_client_sends_and_receives_bulk_bytes(
    lattice: Lattice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("bulk")
    deploy(lattice, write_app(tmp_path / name, {f"{name}.py": ECHO_APP}))
    data = os.urandom(6 * MB)
    with connected(lattice, mint(lattice, "caller")) as caller:
        size, make = caller.function(f"{name}.size"), caller.function(f"{name}.make")
        assert size.remote(data) == len(data)
        assert make.remote(6 * MB) == b"\x03" * (6 * MB)
        monkeypatch.setattr(shm.Shelf, "put", lambda self, data: None)  # over NATS only
        assert size.remote(data) == len(data)


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    if os.geteuid() != 0:
        pytest.skip("only root can switch users")
    handle = start_lattice(
        tmp_path_factory.mktemp("bulk-sandboxed"),
        workers=1,
        gateway=False,
        env={"SUPERPOSE_SANDBOX": "user"},
    )
    yield handle
    stop_lattice(handle)


def test_a_released_sandbox_uid_takes_its_shared_memory_folder_with_it(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which(sandbox.SETPRIV) is None:
        pytest.skip("only root can switch users")

    async def body() -> None:
        identity = await sandbox.claim_identity(tmp_path / "tmp")
        folder = shm.ROOT / f"superpose-{identity.uid}"
        folder.mkdir(exist_ok=True)
        (folder / f"1-{secrets.token_hex(16)}").write_bytes(b"left by a killed executor")
        await identity.release()
        assert not folder.exists()

    asyncio.run(body())


def test_a_sandboxed_executor_maps_and_offers_bulk_bytes(sandboxed: Lattice) -> None:
    data = os.urandom(20 * MB)
    with client_on(sandboxed):
        assert fns.echo_size.remote(data) == len(data)  # another uid maps the caller's file
        assert _digest(fns.identity.remote(data)) == _digest(data)  # and the caller its
        assert fns.relay_size.remote(BIG) == BIG
