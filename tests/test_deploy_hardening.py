"""Hardened deploy: links, limits, names and manifests, on real files and a real lattice.

What a deploy takes from a folder it does not control, and what a node unpacks from
a manifest anyone could have written: every refusal is a DeployError naming the
file, link or entry, and a refused deploy leaves the registry and the bundles store
as they were.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import resource
import subprocess
from pathlib import Path

import pytest

from conftest import Lattice, superpose_cli
from superpose import protocol
from superpose.code import bundle as bundles
from superpose.code import folder, manifest, paths, store
from superpose.config import MAX_BUNDLE_BYTES, MAX_BUNDLE_DEPTH, MAX_BUNDLE_FILES
from superpose.errors import DeployError
from superpose.lattice import objects
from superpose.lattice.connection import connect
from test_cli import app_names, deploy, unique, write_app

APP = """
import superpose as sp


@sp.function
def hello() -> str:
    return "{tag}"
"""
SHA = "a" * 64


def _app(root: Path, tag: str = "x") -> Path:
    return write_app(root, {"app.py": APP.format(tag=tag)})


def _sparse(path: Path, size: int) -> Path:
    subprocess.run(["truncate", "-s", str(size), str(path)], check=True)
    return path


# --- links ---------------------------------------------------------------------------


def test_a_link_out_of_the_folder_is_refused_naming_it_and_its_target(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / "secrets.txt").symlink_to("/etc/passwd")
    with pytest.raises(DeployError, match=r"'secrets\.txt' is a symbolic link to '/etc/passwd'"):
        bundles.from_folder(root)


def test_a_relative_link_that_climbs_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("not yours")
    root = _app(tmp_path / "app")
    (root / "data").mkdir()
    (root / "data" / "up.txt").symlink_to("../../outside.txt")
    with pytest.raises(
        DeployError, match=r"'data/up\.txt' is a symbolic link to '\.\./\.\./outside"
    ):
        bundles.from_folder(root)


def test_a_link_inside_the_folder_is_stored_as_a_copy_of_its_file(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / "data").mkdir()
    (root / "data" / "table.csv").write_text("a,b\n")
    (root / "table.csv").symlink_to("data/table.csv")
    bundle = bundles.from_folder(root)
    assert sorted(bundle.files) == ["app.py", "data/table.csv", "table.csv"]
    assert bundle.files["table.csv"] == b"a,b\n"
    assert bundle.listing["table.csv"] == bundle.listing["data/table.csv"]  # stored once


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda root: (root / "gone.txt").symlink_to("nowhere.txt"), "does not exist"),
        (lambda root: (root / "loop.txt").symlink_to("loop.txt"), "loop of links"),
        (lambda root: (root / "again").symlink_to("."), "not a regular file"),
    ],
)
def test_dangling_looping_and_folder_links_are_refused(tmp_path: Path, make, why: str) -> None:  # type: ignore[no-untyped-def]
    root = _app(tmp_path / "app")
    make(root)
    with pytest.raises(DeployError, match=why):
        bundles.from_folder(root)


# --- limits, before anything is read -------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def test_a_sparse_2gb_file_is_refused_without_being_read(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    _sparse(root / "huge.bin", 2 * 2**30)
    before = _peak_rss_mb()
    with pytest.raises(DeployError, match=r"'huge\.bin' is 2048\.0 MB, more than the 200 MB"):
        bundles.from_folder(root)
    assert _peak_rss_mb() - before < 50, "the file was read before its size was checked"


def test_files_that_add_up_past_the_limit_are_refused_naming_the_total(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    for name in ("a.bin", "b.bin"):
        _sparse(root / name, MAX_BUNDLE_BYTES // 2 + 1)
    before = _peak_rss_mb()
    with pytest.raises(DeployError, match=r"holds 200\.0 MB of files, more than the limit of 200"):
        bundles.from_folder(root)
    assert _peak_rss_mb() - before < 50


def test_a_folder_of_more_files_than_the_limit_is_refused_naming_the_count(
    tmp_path: Path,
) -> None:
    root = _app(tmp_path / "app")
    many = root / "many"
    many.mkdir()
    for i in range(MAX_BUNDLE_FILES):  # with app.py: one more than the limit
        (many / f"{i}.txt").touch()
    with pytest.raises(DeployError, match=r"holds 10001 files, more than the limit of 10000"):
        bundles.from_folder(root)


def test_files_are_hashed_as_streams_and_reread_only_if_unchanged(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / "big.bin").write_bytes(os.urandom(3 * folder.CHUNK_BYTES + 5))
    bundle = bundles.from_folder(root)
    assert bundle.listing["big.bin"] == hashlib.sha256((root / "big.bin").read_bytes()).hexdigest()
    (root / "app.py").write_text(APP.format(tag="y"))  # same size, other content
    with pytest.raises(DeployError, match=r"'app\.py' changed while being deployed"):
        bundle.files["app.py"]


# --- names ---------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_is_refused_naming_its_bytes(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / os.fsdecode(b"caf\xe9.py")).write_text("X = 1\n")
    with pytest.raises(DeployError, match=r"b'caf\\xe9\.py' is not a UTF-8 name"):
        bundles.from_folder(root)


def test_deep_nesting_is_refused_naming_the_folder(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    deep = root.joinpath(*["d"] * (MAX_BUNDLE_DEPTH + 2))
    deep.mkdir(parents=True)
    (deep / "x.py").touch()
    with pytest.raises(DeployError, match=rf"nests {MAX_BUNDLE_DEPTH} deep"):
        bundles.from_folder(root)


def test_an_over_long_path_is_refused_naming_it(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    long = root.joinpath(*["n" * 250] * 5)
    long.mkdir(parents=True)
    (long / "x.py").touch()
    with pytest.raises(DeployError, match=r"bytes long, more than the limit of 1024"):
        bundles.from_folder(root)


def test_files_outside_the_bundle_root_are_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.py").touch()
    root = _app(tmp_path / "app")
    with pytest.raises(DeployError, match=r"elsewhere\.py is not under"):
        bundles.from_files(root, [root / "app.py", tmp_path / "elsewhere.py"])


BAD_PATHS = [
    ("", "is empty"),
    (".", r"'\.' or '\.\.'"),
    ("..", r"'\.' or '\.\.'"),
    ("a/../b", r"'\.' or '\.\.'"),
    ("./a", r"'\.' or '\.\.'"),
    ("a//b", "empty component"),
    ("a/", "empty component"),
    ("/etc/passwd", "is absolute"),
    ("C:/x.py", "is absolute"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("/".join(["d"] * (MAX_BUNDLE_DEPTH + 1)), "nests"),
    ("n" * 256, "a name of 256 bytes"),
    ("/".join(["n" * 200] * 6), "bytes long"),
    (paths.COMPLETE_MARKER, "mark an unpacked bundle"),
]


@pytest.mark.parametrize(("path", "why"), [*BAD_PATHS, ("\udcff.py", "not a UTF-8 name")])
def test_every_rule_names_why_a_path_is_refused(path: str, why: str) -> None:
    with pytest.raises(DeployError, match=why):
        paths.require(path, "here")


def test_a_lone_surrogate_in_a_manifest_is_a_deploy_error() -> None:
    data = b'{"files": {"\\udcff.py": "' + SHA.encode() + b'"}}'
    with pytest.raises(DeployError, match="bundle manifest is malformed"):
        manifest.decode(data)


@pytest.mark.parametrize(("path", "why"), BAD_PATHS)
def test_a_manifest_entry_that_cannot_be_unpacked_is_refused_naming_it(path: str, why: str) -> None:
    data = json.dumps({"files": {"ok.py": SHA, path: SHA}}).encode("utf-8", "surrogatepass")
    with pytest.raises(DeployError, match=why) as refused:
        manifest.decode(data)
    assert "ok.py" not in str(refused.value) and "path " in str(refused.value)


@pytest.mark.parametrize(
    ("listing", "why"),
    [
        ({"a.py": "not-a-digest"}, "no valid SHA-256"),
        ({"a.py": SHA.upper()}, "no valid SHA-256"),
        ({"a": SHA, "a/b.py": SHA}, "'a' is a file and also the folder of 'a/b.py'"),
        ({f"{i}.py": SHA for i in range(MAX_BUNDLE_FILES + 1)}, "lists 10001 files"),
    ],
)
def test_a_manifest_with_bad_digests_clashes_or_too_many_files_is_refused(
    listing: dict[str, str], why: str
) -> None:
    with pytest.raises(DeployError, match=why):
        manifest.decode(json.dumps({"files": listing}).encode())


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b'{"files": []}', b'{"files": {"a": 1}}', b"[" * 100_000]
)
def test_bytes_that_are_no_manifest_are_a_deploy_error(data: bytes) -> None:
    with pytest.raises(DeployError, match="bundle manifest is malformed"):
        manifest.decode(data)


def test_mutated_manifests_decode_to_safe_listings_or_a_deploy_error() -> None:
    """Seeded fuzz: a mutated manifest never escapes as another exception, and whatever
    decodes has only paths that pass every rule."""
    rng = random.Random(int(os.environ.get("SP_FUZZ_SEED", "15")))
    pieces = ["a", "..", ".", "", "/", "\x00", "\n", "é", "b.py", "\\", "C:", "//"]
    for _ in range(2000):
        path = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 6)))
        listing = {"app.py": SHA, path: rng.choice([SHA, "x", ""])}
        data = bytearray(json.dumps({"files": listing}).encode())
        if rng.random() < 0.3 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            decoded = manifest.decode(bytes(data))
        except DeployError:
            continue
        assert all(paths.problem(p) is None for p in decoded), decoded


# --- on the real lattice ---------------------------------------------------------------


async def test_a_node_refuses_a_hostile_manifest_and_writes_nothing_outside(
    lattice: Lattice, tmp_path: Path
) -> None:
    content = hashlib.sha256(b"gotcha").hexdigest()
    listing = {"../../escaped.txt": content}
    digest = bundles.digest_of_listing(listing)
    nc = await connect(lattice.url, name="test-hostile-manifest")
    try:
        await objects.put(
            nc, protocol.BUNDLES_BUCKET, protocol.file_object_name(content), b"gotcha"
        )
        data = json.dumps({"files": listing}).encode()
        await objects.put(nc, protocol.BUNDLES_BUCKET, protocol.bundle_manifest_name(digest), data)
        cache = tmp_path / "node" / "bundles"
        with pytest.raises(
            DeployError, match=r"path '\.\./\.\./escaped\.txt' has a '\.' or '\.\.'"
        ):
            await store.materialize(nc, digest, cache)
    finally:
        await nc.close()
    assert not list(tmp_path.rglob("escaped.txt"))
    assert list(cache.iterdir()) == []  # no staging folder left behind


async def test_a_refused_deploy_registers_nothing_and_uploads_nothing(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("linked")
    root = _app(tmp_path / name, tag=name)
    (root / "passwd").symlink_to("/etc/passwd")
    proc = superpose_cli("deploy", str(root), url=lattice.url)
    assert proc.returncode != 0
    assert "'passwd' is a symbolic link to '/etc/passwd'" in proc.stderr, proc.stderr
    assert name not in app_names(lattice)
    app_py = hashlib.sha256((root / "app.py").read_bytes()).hexdigest()
    passwd = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    nc = await connect(lattice.url, name="test-refused-deploy")
    try:
        js = nc.jetstream()
        for file_digest in (app_py, passwd):
            name_ = protocol.file_object_name(file_digest)
            assert not await objects.exists(js, protocol.BUNDLES_BUCKET, name_)
    finally:
        await nc.close()


READER = """
import hashlib
from pathlib import Path

import superpose as sp


@sp.function
def inventory() -> list:
    here = Path(__file__).parent
    small = sorted(p.name for p in (here / "small").iterdir())
    big = hashlib.sha256((here / "big.bin").read_bytes()).hexdigest()
    return [len(small), small[0], small[-1], big]
"""


def test_a_node_fetches_hundreds_of_files_and_a_large_one_and_runs_from_them(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("many")
    root = write_app(tmp_path / name, {"reader.py": READER})
    (root / "small").mkdir()
    for i in range(300):
        (root / "small" / f"f{i:03}.txt").write_text(f"{name} {i}\n")
    big = os.urandom(6 * 2**20)
    (root / "big.bin").write_bytes(big)
    deploy(lattice, root)
    out = superpose_cli("call", f"{name}.inventory", url=lattice.url, check=True)
    assert json.loads(out.stdout) == [300, "f000.txt", "f299.txt", hashlib.sha256(big).hexdigest()]


async def test_a_fetch_moves_at_most_16_files_at_once_while_the_loop_runs(
    lattice: Lattice, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(200):
        (root / f"f{i:03}.txt").write_text(f"{tmp_path} {i}\n")
    bundle = bundles.from_folder(root)
    in_flight = peak = ticks = 0
    fetch = store._fetch_file

    async def counted(nc: object, file_digest: str) -> bytes:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await fetch(nc, file_digest)  # type: ignore[arg-type]
        finally:
            in_flight -= 1

    monkeypatch.setattr(store, "_fetch_file", counted)
    nc = await connect(lattice.url, name="test-bounded-fetch")
    try:
        digest, _ = await store.upload(nc, bundle)

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        path = await store.materialize(nc, digest, tmp_path / "cache")
        tick_task.cancel()
    finally:
        await nc.close()
    assert 1 < peak <= store.TRANSFER_CONCURRENCY
    assert ticks > len(bundle.files) // store.TRANSFER_CONCURRENCY  # the loop ran meanwhile
    assert (path / "f199.txt").read_text() == f"{tmp_path} 199\n"


def test_a_bundle_no_node_can_unpack_fails_its_call_as_prepare_not_internal() -> None:
    """Internal failures are sent again; a bad manifest would fail every time."""
    from superpose.node.calls import _error_info

    info = _error_info(DeployError("bundle 0123 manifest: path '..' has a '..'"))
    assert (info.kind, info.type) == (protocol.ERR_PREPARE, "DeployError")
    assert info.kind not in protocol.INFRASTRUCTURE_ERRORS
    assert "path '..'" in info.message
