"""Every version live at once, aliases, promote and rollback, against a real lattice."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import superpose as sp
from conftest import Lattice, superpose_cli
from superpose import protocol
from superpose.code import store
from superpose.code.bundle import Bundle
from superpose.lattice.connection import connect
from superpose.node.prefetch import AliasPrefetcher
from test_cli import deploy, unique, write_app

VISIBLE_WITHIN_S = 1.0

TAGGED = """
import superpose as sp


@sp.function
def tag() -> str:
    return "{tag}"
"""


@dataclass
class App:
    name: str
    digests: list[str]
    """Oldest first: digests[0] answers "v1", digests[1] "v2", ..."""


def deploy_versions(lattice: Lattice, folder: Path, steps: list[dict[str, str | None]]) -> App:
    """Deploy one folder several times; each step writes (or, with None, deletes) files."""
    digests = []
    for step in steps:
        for path, text in step.items():
            if text is None:
                (folder / path).unlink()
            else:
                write_app(folder, {path: text})
        digests.append(deploy(lattice, folder))
    return App(folder.name, digests)


def tagged_versions(lattice: Lattice, tmp_path: Path, count: int) -> App:
    name = unique("ver")
    steps: list[dict[str, str | None]] = [
        {"mod.py": TAGGED.format(tag=f"v{i}")} for i in range(1, count + 1)
    ]
    return deploy_versions(lattice, tmp_path / name, steps)


def cli(lattice: Lattice, *args: str) -> str:
    return superpose_cli(*args, url=lattice.url, check=True).stdout


def call_tag(lattice: Lattice, name: str) -> str:
    answer: str = json.loads(cli(lattice, "call", name))
    return answer


def refused(lattice: Lattice, *args: str) -> str:
    """Run a command that must fail cleanly; returns its error message."""
    proc = superpose_cli(*args, url=lattice.url)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    return proc.stderr


def wait_resolves(client: sp.Client, app: str, ref: str, digest: str) -> float:
    """Poll a running client's registry mirror until ``app@ref`` is ``digest``; seconds taken."""
    started = time.monotonic()
    while True:
        try:
            if client.resolve(app, "tag", ref).digest == digest:
                return time.monotonic() - started
        except sp.NotFoundError:
            pass
        assert time.monotonic() - started < VISIBLE_WITHIN_S, f"{app}@{ref} never became {digest}"


def aliases_of(lattice: Lattice, app: str) -> dict[str, str]:
    found: dict[str, str] = json.loads(cli(lattice, "versions", app, "--json"))["aliases"]
    return found


# --- every version live at once -------------------------------------------------------------


def test_versions_answer_side_by_side_by_prefix_and_by_alias(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = tagged_versions(lattice, tmp_path, 2)
    v1, v2 = app.digests
    assert "(none) → " + v1[:12] in cli(lattice, "alias", app.name, "stable", v1[:8])

    assert call_tag(lattice, f"{app.name}.tag") == "v2"
    assert call_tag(lattice, f"{app.name}.tag@{v1[:6]}") == "v1"
    assert call_tag(lattice, f"{app.name}.tag@{v2}") == "v2"
    assert call_tag(lattice, f"{app.name}.tag@stable") == "v1"

    wait_resolves(client, app.name, "stable", v1)
    assert client.function(f"{app.name}.tag", version="stable").remote() == "v1"
    assert client.function(f"{app.name}.tag@stable").remote() == "v1"
    assert client.function(f"{app.name}.tag", version=v2[:6]).remote() == "v2"
    assert client.function(f"{app.name}.tag", version=v1[:10]).remote() == "v1"

    with httpx.Client(base_url=lattice.gateway, headers=lattice.auth, timeout=60) as http:
        by_header = http.post(f"/v1/call/{app.name}.tag", headers={"X-Superpose-Version": "stable"})
        assert by_header.json() == {"result": "v1"}
        assert http.post(f"/v1/call/{app.name}.tag@stable").json() == {"result": "v1"}
        assert http.post(f"/v1/call/{app.name}.tag").json() == {"result": "v2"}


def test_versions_lists_files_changed_from_the_previous_version(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("files")
    app = deploy_versions(
        lattice,
        tmp_path / name,
        [
            {"mod.py": TAGGED.format(tag="v1"), "helper.py": "X = 1\n"},
            {"mod.py": TAGGED.format(tag="v2"), "extra.py": "Y = 2\n"},  # +1 ~1
            {"mod.py": TAGGED.format(tag="v3"), "helper.py": None, "extra.py": "Y = 3\n"},
        ],
    )
    v1, v2, v3 = app.digests
    cli(lattice, "alias", name, "stable", v1[:8])

    listed = json.loads(cli(lattice, "versions", name, "--json"))
    assert listed["app"] == name
    assert listed["aliases"] == {"latest": v3, "stable": v1}
    rows = listed["versions"]
    assert [r["version"] for r in rows] == [v3, v2, v1]  # newest first
    assert [r["previous"] for r in rows] == [v2, v1, None]
    assert [r["files"] for r in rows] == [2, 3, 2]
    assert rows[0]["changes"] == {"added": 0, "removed": 1, "modified": 2}
    assert rows[1]["changes"] == {"added": 1, "removed": 0, "modified": 1}
    assert rows[2]["changes"] is None
    assert [r["aliases"] for r in rows] == [["latest"], [], ["stable"]]
    assert rows[0]["created"] >= rows[1]["created"] >= rows[2]["created"]
    assert all(r["size"] > 0 and r["functions"] == ["tag"] for r in rows)

    text = cli(lattice, "versions", name).splitlines()
    assert text[0].startswith(f"{name}: 3 version(s)")
    assert v3[:12] in text[1] and "+0 -1 ~2" in text[1] and "[latest]" in text[1]
    assert v2[:12] in text[2] and "+1 -0 ~1" in text[2]
    assert v1[:12] in text[3] and "first" in text[3] and "[stable]" in text[3]

    with httpx.Client(base_url=lattice.gateway, headers=lattice.auth, timeout=60) as http:
        over_http = http.get(f"/v1/apps/{name}").json()
        assert over_http.pop("routing")["latest"] == v3  # plus the routing rules
        assert over_http == listed
        missing = http.get("/v1/apps/no_such_app_x")
        assert missing.status_code == 404
        assert "no_such_app_x" in missing.json()["error"]["message"]
        assert http.get("/v1/apps/bad!name").status_code == 400


def test_redeploying_old_code_keeps_its_place_in_the_listing(
    lattice: Lattice, tmp_path: Path
) -> None:
    app = tagged_versions(lattice, tmp_path, 2)
    v1, v2 = app.digests
    write_app(tmp_path / app.name, {"mod.py": TAGGED.format(tag="v1")})
    assert deploy(lattice, tmp_path / app.name) == v1
    rows = json.loads(cli(lattice, "versions", app.name, "--json"))["versions"]
    assert [r["version"] for r in rows] == [v2, v1]
    assert rows[1]["aliases"] == ["latest"]


# --- aliases, promote, rollback ----------------------------------------------------------------


def test_alias_promote_and_rollback_move_what_calls_get(lattice: Lattice, tmp_path: Path) -> None:
    app = tagged_versions(lattice, tmp_path, 3)
    v1, v2, v3 = app.digests
    fn = f"{app.name}.tag"

    assert cli(lattice, "alias", app.name, "stable", v1[:8]).strip() == (
        f"{app.name} stable: (none) → {v1[:12]}"
    )
    assert cli(lattice, "alias", app.name, "canary", "stable").strip() == (
        f"{app.name} canary: (none) → {v1[:12]}"
    )
    assert call_tag(lattice, f"{fn}@canary") == "v1"
    listed = cli(lattice, "alias", app.name, "--list")
    assert f"canary  → {v1[:12]}" in listed and f"latest  → {v3[:12]}" in listed

    assert cli(lattice, "promote", app.name, v2[:7]).strip() == (
        f"{app.name} latest: {v3[:12]} → {v2[:12]}"
    )
    assert call_tag(lattice, fn) == "v2"
    assert f"{v2[:12]} → {v1[:12]}" in cli(lattice, "promote", app.name, "stable")
    assert call_tag(lattice, fn) == "v1"

    assert cli(lattice, "rollback", app.name).strip() == (
        f"{app.name} latest: {v1[:12]} → {v2[:12]}"
    )
    assert call_tag(lattice, fn) == "v2"
    # latest's history is v1 v2 v3 v2 v1 v2: the newest other value is v1 again
    assert f"{v2[:12]} → {v1[:12]}" in cli(lattice, "rollback", app.name)
    assert call_tag(lattice, fn) == "v1"

    assert "nothing moved" in cli(lattice, "promote", app.name, v1[:12])
    assert f"{v1[:12]} → {v3[:12]}" in cli(lattice, "alias", app.name, "stable", v3[:9])
    assert aliases_of(lattice, app.name) == {"latest": v1, "stable": v3, "canary": v1}
    assert call_tag(lattice, f"{fn}@stable") == "v3"


def test_a_rollback_reaches_a_running_client_within_a_second(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    app = tagged_versions(lattice, tmp_path, 2)
    v1, v2 = app.digests
    wait_resolves(client, app.name, "latest", v2)  # the deploy reached this client's mirror
    handle = client.function(f"{app.name}.tag")
    assert handle.remote() == "v2"

    cli(lattice, "rollback", app.name)
    wait_resolves(client, app.name, "latest", v1)  # asserts the one-second deadline
    assert handle.remote() == "v1"

    cli(lattice, "promote", app.name, v2[:8])
    wait_resolves(client, app.name, "latest", v2)
    assert handle.remote() == "v2"


# --- refused -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> App:
    """An app the refusal tests share: they must leave its aliases as they found them."""
    return tagged_versions(lattice, tmp_path_factory.mktemp("refused"), 2)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["versions", "no_such_app_v"], "'no_such_app_v'"),
        (["versions", "bad name"], "'bad name'"),
        (["alias", "no_such_app_a", "stable", "latest"], "'no_such_app_a'"),
        (["promote", "no_such_app_p", "latest"], "'no_such_app_p'"),
        (["rollback", "no_such_app_r"], "'no_such_app_r'"),
        (["alias", "no_such_app_l", "--list"], "'no_such_app_l'"),
    ],
)
def test_unknown_or_malformed_apps_are_refused(
    lattice: Lattice, args: list[str], named: str
) -> None:
    assert named in refused(lattice, *args)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["alias", "{app}", "stable", "ffffffffff"], "no version or alias 'ffffffffff'"),
        (["alias", "{app}", "stable", "no_such_alias"], "no version or alias 'no_such_alias'"),
        (["promote", "{app}", "eeeeeeee"], "no version or alias 'eeeeeeee'"),
        (["promote", "{app}", "abc"], "at least 6 characters"),
        (["alias", "{app}", "bad!", "latest"], "alias name 'bad!' is not allowed"),
        (["alias", "{app}", "9lives", "latest"], "alias name '9lives' is not allowed"),
        (["alias", "{app}", "cafe0123", "latest"], "'cafe0123' looks like a version digest"),
        (["alias", "{app}", "stable"], "which version 'stable'"),
    ],
)
def test_unknown_versions_and_bad_alias_names_are_refused(
    lattice: Lattice, two: App, args: list[str], named: str
) -> None:
    before = aliases_of(lattice, two.name)
    message = refused(lattice, *(a.format(app=two.name) for a in args))
    assert named in message
    assert aliases_of(lattice, two.name) == before


def test_rollback_with_nothing_to_go_back_to_is_refused(lattice: Lattice, tmp_path: Path) -> None:
    app = tagged_versions(lattice, tmp_path, 1)
    deploy(lattice, tmp_path / app.name)  # the same code again: latest is rewritten, not moved
    message = refused(lattice, "rollback", app.name)
    assert "nothing to roll back to" in message and app.digests[0][:12] in message


def colliding_sources() -> tuple[str, str, str]:
    """Two sources whose bundle digests share their first 6 hex digits, and that prefix."""
    seen: dict[str, str] = {}
    for i in range(200_000):
        source = TAGGED.format(tag=f"v{i}")
        prefix = Bundle({"mod.py": source.encode()}).digest[:6]
        if prefix in seen:
            return seen[prefix], source, prefix
        seen[prefix] = source
    raise AssertionError("no digest prefix collision found")


def test_an_ambiguous_digest_prefix_is_refused_naming_the_candidates(
    lattice: Lattice, tmp_path: Path
) -> None:
    first, second, prefix = colliding_sources()
    folder = tmp_path / unique("ambiguous")
    digests = []
    for source in (first, second):
        folder.mkdir(exist_ok=True)
        (folder / "mod.py").write_text(source)
        digests.append(deploy(lattice, folder))
    assert digests[0][:6] == digests[1][:6] == prefix
    for args in (["promote", folder.name, prefix], ["call", f"{folder.name}.tag@{prefix}"]):
        message = refused(lattice, *args)
        assert f"version '{prefix}' of {folder.name} is ambiguous" in message
        assert digests[0][:12] in message and digests[1][:12] in message
    longer = next(n for n in range(7, 64) if digests[0][:n] != digests[1][:n])
    assert "→" in cli(lattice, "promote", folder.name, digests[0][:longer])


# --- prefetch ----------------------------------------------------------------------------------


def test_prefetcher_fetches_each_new_alias_target_once(lattice: Lattice) -> None:
    app = unique("prefetch")
    before, first, second = (f"{tag}{app}" for tag in ("before", "first", "second"))

    async def scenario() -> list[str]:
        nc = await connect(lattice.url, name="test-prefetch")
        kv = await nc.jetstream().key_value(protocol.REGISTRY_BUCKET)
        key = protocol.alias_key(app, "latest")
        fetched: asyncio.Queue[str] = asyncio.Queue()
        mine = {before, first, second}

        async def fetch(digest: str) -> None:
            if digest in mine:
                fetched.put_nowait(digest)
            if digest == first:
                raise RuntimeError("a failed prefetch must not stop the next ones")

        await kv.put(key, before.encode())  # already there when the node starts: not fetched
        prefetcher = AliasPrefetcher(nc, fetch)
        await prefetcher.start()
        try:
            order = []
            for value in (first, first, second):  # the same value twice is one move
                await kv.put(key, value.encode())
            for _ in range(2):
                order.append(await asyncio.wait_for(fetched.get(), 10))
            await kv.put(protocol.alias_key(app, "stable"), second.encode())
            order.append(await asyncio.wait_for(fetched.get(), 10))
            return order
        finally:
            await prefetcher.stop()
            await kv.purge(key)
            await kv.purge(protocol.alias_key(app, "stable"))
            await nc.close()

    assert asyncio.run(scenario()) == [first, second, second]


def test_prefetcher_warms_the_bundle_a_promote_points_at(lattice: Lattice, tmp_path: Path) -> None:
    app = tagged_versions(lattice, tmp_path / "src", 2)
    v1 = app.digests[0]
    cache = tmp_path / "bundles"

    async def scenario() -> None:
        nc = await connect(lattice.url, name="test-prefetch-store")
        warmed = asyncio.Event()

        async def fetch(digest: str) -> None:
            await store.materialize(nc, digest, cache)
            if digest == v1:
                warmed.set()

        prefetcher = AliasPrefetcher(nc, fetch)
        await prefetcher.start()
        try:
            await asyncio.to_thread(
                superpose_cli, "promote", app.name, v1[:8], url=lattice.url, check=True
            )
            await asyncio.wait_for(warmed.wait(), 10)
        finally:
            await prefetcher.stop()
            await nc.close()

    asyncio.run(scenario())
    assert (cache / v1 / "mod.py").read_text() == TAGGED.format(tag="v1").lstrip()
    assert (cache / v1 / store.COMPLETE_MARKER).exists()


def test_nodes_prefetch_the_bundle_an_alias_moves_to(lattice: Lattice, tmp_path: Path) -> None:
    app = tagged_versions(lattice, tmp_path, 2)
    v1 = app.digests[0]
    cli(lattice, "promote", app.name, v1[:8])
    nodes = [p for p in (lattice.state_dir / "nodes").iterdir() if p.is_dir()]
    assert len(nodes) >= 2
    marker = Path("bundles") / v1 / store.COMPLETE_MARKER
    deadline = time.monotonic() + 10
    while not all((node / marker).exists() for node in nodes):
        assert time.monotonic() < deadline, [str(n) for n in nodes if not (n / marker).exists()]
        time.sleep(0.05)
