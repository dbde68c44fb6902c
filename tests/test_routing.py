"""Canaries by session, version context through the call graph, pins, traces, and
runtime-linked apps with their lockfile — against a real lattice, through the CLI,
the gateway and the Python API."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Lattice, client_on, poll, start_lattice, stop_lattice, superpose_cli
from superpose.protocol import Canary
from superpose.registry.mirror import session_from
from test_cli import deploy, unique, write_app

CHAIN = """
import superpose as sp

below = {below}


@sp.function
def tag(user: str = "") -> list[str]:
    mine = ["{app}:{version}"]
    return mine + (below.tag.remote(user=user) if below is not None else [])
"""


@pytest.fixture(scope="module")
def lattice(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    """Its own lattice: the federation example names its apps (shop, pricing, tax)."""
    handle = start_lattice(tmp_path_factory.mktemp("routing"), workers=2)
    yield handle
    stop_lattice(handle)


def deploy_chain(lattice: Lattice, root: Path, names: list[str], versions: int) -> dict:  # type: ignore[type-arg]
    """Apps names[0] → names[1] → ... each calling the next with ``sp.use``; every app
    deployed ``versions`` times (v1, v2, ...). Returns app → [digest of v1, v2, ...]."""
    digests: dict[str, list[str]] = {}
    for i, app in enumerate(names):
        below = f'sp.use("{names[i + 1]}")' if i + 1 < len(names) else "None"
        for v in range(1, versions + 1):
            folder = write_app(
                root / app, {"chain.py": CHAIN.format(app=app, version=f"v{v}", below=below)}
            )
            digests.setdefault(app, []).append(deploy(lattice, folder))
    return digests


def call(
    lattice: Lattice, name: str, headers: dict[str, str] | None = None, **kwargs: str
) -> httpx.Response:
    response = httpx.post(
        f"{lattice.gateway}/v1/call/{name}",
        json={"args": [], "kwargs": kwargs},
        headers={**lattice.auth, **(headers or {})},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response


def test_canary_splits_sessions_and_each_session_sticks(lattice: Lattice, tmp_path: Path) -> None:
    (app,) = names = [unique("cn")]
    digests = deploy_chain(lattice, tmp_path, names, versions=2)
    v1, v2 = digests[app]
    superpose_cli(
        "canary", app, v1[:12], "--percent", "10", "--key", "header:X-Session",
        url=lattice.url, check=True,
    )  # fmt: skip
    with httpx.Client(headers=lattice.auth, timeout=60) as http:

        def version_for(session: str) -> str:
            response = http.post(
                f"{lattice.gateway}/v1/call/{app}.tag",
                json={"args": [], "kwargs": {}},
                headers={"X-Session": session},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-superpose-version"] in (v1, v2)
            return str(response.json()["result"][0].split(":")[1])

        first = {f"s{i}": version_for(f"s{i}") for i in range(1000)}
        share = Counter(first.values())["v1"] / 1000
        assert 0.06 <= share <= 0.14, share  # ±4 standard deviations: the app name seeds the split
        again = {s: version_for(s) for s in list(first)[:100]}
        assert again == {s: first[s] for s in again}  # every session sticks to its version
        # a per-request version override wins over the canary
        forced = http.post(
            f"{lattice.gateway}/v1/call/{app}.tag",
            json={"args": [], "kwargs": {}},
            headers={
                "X-Session": "s0",
                "X-Superpose-Version": v2[:12] if first["s0"] == "v1" else v1[:12],
            },
        )
        forced_to = forced.json()["result"][0].split(":")[1]
        assert forced_to != first["s0"]
    served = Counter([*first.values(), *again.values(), forced_to])

    def shown() -> dict | None:  # type: ignore[type-arg]
        state = json.loads(superpose_cli("status", "--json", url=lattice.url, check=True).stdout)
        (entry,) = [a for a in state["apps"] if a["app"] == app]
        rules = entry["routing"]
        return rules if sum(rules["traffic"].values()) >= 1101 else None

    rules = poll(shown, "the traffic in the nodes' heartbeats")
    printed = json.loads(superpose_cli("canary", app, "--json", url=lattice.url).stdout)
    assert printed["canary"] == {"version": v1, "percent": 10.0, "key": "header:X-Session"}
    assert 0 < printed["traffic_since"] <= time.time()  # the earliest live node's start
    text = superpose_cli("canary", app, url=lattice.url, check=True).stdout
    assert text.startswith(f"{app}: latest {v2[:12]}\n")
    assert f"  canary: 10 % → {v1[:12]} by header:X-Session\n" in text
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(printed["traffic_since"]))
    assert f"  calls served since {since} (the live nodes' counts, each from its own start)" in text
    assert f"    {v1[:12]}: {printed['traffic'][v1]} (" in text
    assert rules["canary"] == {"version": v1, "percent": 10.0, "key": "header:X-Session"}
    # every call the test made is counted once, on the version that answered it
    assert rules["traffic"] == {v1: served["v1"], v2: served["v2"]}
    listing = httpx.get(f"{lattice.gateway}/v1/apps/{app}", headers=lattice.auth, timeout=30).json()
    assert listing["routing"]["canary"]["version"] == v1
    human = superpose_cli("status", url=lattice.url, check=True).stdout
    assert f"canary: 10 % → {v1[:12]} by header:X-Session" in human

    superpose_cli("canary", app, "--off", url=lattice.url, check=True)
    assert {version_for_all(lattice, app, f"s{i}") for i in range(30)} == {"v2"}
    off = superpose_cli("canary", app, url=lattice.url, check=True).stdout
    assert "  no canary: every session goes to latest\n" in off


def version_for_all(lattice: Lattice, app: str, session: str) -> str:
    response = call(lattice, f"{app}.tag", {"X-Superpose-Session": session})
    return str(response.json()["result"][0].split(":")[1])


def test_a_session_sees_one_combination_of_versions_through_three_nested_calls(
    lattice: Lattice, tmp_path: Path
) -> None:
    """a → b → c, each app in a 50 % canary: the versions a session meets are decided
    once per app by its session key, whichever node runs each nested call."""
    names = [unique("ca"), unique("cb"), unique("cc")]
    digests = deploy_chain(lattice, tmp_path, names, versions=2)
    for app in names:
        first = digests[app][0][:12]
        superpose_cli(
            "canary", app, first, "--percent", "50", "--key", "arg:user",
            url=lattice.url, check=True,
        )  # fmt: skip
    combos = {}
    for user in (f"u{i}" for i in range(24)):
        seen = {
            tuple(call(lattice, f"{names[0]}.tag", user=user).json()["result"]) for _ in range(3)
        }
        assert len(seen) == 1, f"session {user} saw {seen}"
        combos[user] = seen.pop()
    assert len(set(combos.values())) >= 3  # the split is per app, not one coin for all
    # the same sessions from the Python API (session from the keyword argument)
    with client_on(lattice) as client:
        top = client.function(f"{names[0]}.tag")
        for user in list(combos)[:6]:
            assert tuple(top.remote(user=user)) == combos[user]
            assert tuple(top.remote(user)) == combos[user]  # the key names it by position too
        # a pin for one request wins down the whole graph, without any deploy
        pinned = top.with_options(pins={names[2]: digests[names[2]][1][:12]})
        assert all(pinned.remote(user=u)[2].endswith(":v2") for u in list(combos)[:6])
    # positional over HTTP and from the CLI
    for user in list(combos)[6:10]:
        response = httpx.post(
            f"{lattice.gateway}/v1/call/{names[0]}.tag",
            json={"args": [user]},
            headers=lattice.auth,
            timeout=60,
        )
        assert tuple(response.json()["result"]) == combos[user]
        printed = superpose_cli(
            "call", f"{names[0]}.tag", json.dumps([user]), url=lattice.url, check=True
        )
        assert tuple(json.loads(printed.stdout)) == combos[user]
    # and from the HTTP header
    user = next(u for u, combo in combos.items() if combo[2].endswith(":v2"))
    forced = call(
        lattice,
        f"{names[0]}.tag",
        {"X-Superpose-Pin": f"{names[2]}@{digests[names[2]][0][:12]}"},
        user=user,
    )
    assert forced.json()["result"][:2] == list(combos[user][:2])
    assert forced.json()["result"][2].endswith(":v1")


def test_a_trace_shows_which_versions_answered(lattice: Lattice, tmp_path: Path) -> None:
    names = [unique("ta"), unique("tb"), unique("tc")]
    digests = deploy_chain(lattice, tmp_path, names, versions=1)
    response = call(lattice, f"{names[0]}.tag", {"X-Superpose-Trace": "1"})
    trace_id = response.headers["x-superpose-trace-id"]

    def spans() -> list | None:  # type: ignore[type-arg]
        found = httpx.get(
            f"{lattice.gateway}/v1/traces/{trace_id}", headers=lattice.auth, timeout=30
        )
        body = found.json() if found.status_code == 200 else {"spans": []}
        return body["spans"] if len(body["spans"]) >= 3 else None

    found = poll(spans, "three spans")
    assert len(found) == 3, found
    assert [(s["app"], s["digest"]) for s in found] == [(n, digests[n][0]) for n in names]
    assert found[1]["parent_id"] == found[0]["id"] and found[2]["parent_id"] == found[1]["id"]
    shown = superpose_cli("trace", trace_id, url=lattice.url, check=True).stdout
    assert f"    {names[2]}.tag@{digests[names[2]][0][:12]}" in shown
    assert (
        httpx.get(f"{lattice.gateway}/v1/traces/nope", headers=lattice.auth, timeout=30).status_code
        == 404
    )
    proc = superpose_cli("trace", "bad id!", url=lattice.url)
    assert proc.returncode == 1 and "not a trace id" in proc.stderr
    proc = superpose_cli("trace", "0123456789abcdef", url=lattice.url)
    assert proc.returncode == 1 and "no spans recorded" in proc.stderr


def test_canary_and_pin_bad_input_is_refused(lattice: Lattice, tmp_path: Path) -> None:
    (app,) = names = [unique("bad")]
    deploy_chain(lattice, tmp_path, names, versions=1)
    for args, message in [
        (("canary", app, "latest", "--percent", "150"), "between 0 and 100"),
        (("canary", app, "latest", "--percent", "-1"), "between 0 and 100"),
        (("canary", app, "abcdef12", "--percent", "10"), "no version or alias 'abcdef12'"),
        (("canary", "no_app", "latest", "--percent", "10"), "no app named 'no_app'"),
        (("canary", app, "latest", "--percent", "10", "--key", "cookie:x"), "header:NAME"),
        (("canary", app, "latest"), "--percent"),
        (("canary", app, "--percent", "150"), "--percent and --key need the version"),
        (("canary", app, "--percent", "10"), "--percent and --key need the version"),
        (("canary", app, "--key", "header:X-S"), "--percent and --key need the version"),
        (("canary", app, "latest", "--percent", "nan"), "between 0 and 100"),
        (("canary", app, "latest", "--off"), "--off takes no version"),
    ]:
        proc = superpose_cli(*args, url=lattice.url)
        assert proc.returncode == 1, (args, proc.stdout)
        assert message in proc.stderr, (args, proc.stderr)
    bad_pin = httpx.post(
        f"{lattice.gateway}/v1/call/{app}.tag",
        json={"args": [], "kwargs": {}},
        headers={**lattice.auth, "X-Superpose-Pin": "nonsense"},
        timeout=30,
    )
    assert bad_pin.status_code == 400 and "APP@VERSION" in bad_pin.text
    unknown = httpx.post(
        f"{lattice.gateway}/v1/call/{app}.tag",
        json={"args": [], "kwargs": {}},
        headers={**lattice.auth, "X-Superpose-Pin": f"{app}@abcdef12"},
        timeout=30,
    )
    assert unknown.status_code == 404 and "abcdef12" in unknown.text


def test_three_deep_runtime_linked_update_and_lock(lattice: Lattice, tmp_path: Path) -> None:
    """The federation example: shop → pricing → tax, each deployed alone."""
    example = tmp_path / "federation"
    shutil.copytree(ROOT / "examples" / "federation", example)
    tax_v1 = deploy(lattice, example / "tax")
    deploy(lattice, example / "pricing")
    shop = deploy(lattice, example / "shop")

    def checkout() -> float:
        proc = superpose_cli(
            "call", "shop.checkout", '[["apple", "pear"]]', url=lattice.url, check=True
        )
        return float(json.loads(proc.stdout)["total"])

    assert checkout() == 3.6
    rates = example / "tax" / "rates.py"
    rates.write_text(rates.read_text().replace('"eu": 0.20', '"eu": 0.25'))
    tax_v2 = deploy(lattice, example / "tax")
    assert tax_v2 != tax_v1
    assert checkout() == 3.75  # a new tax reaches shop with no redeploy of shop or pricing
    assert deploy(lattice, example / "shop") == shop  # shop's code never changed

    superpose_cli("lock", "pricing", f"tax@{tax_v1[:12]}", url=lattice.url, check=True)
    assert checkout() == 3.6
    shown = json.loads(
        superpose_cli("lock", "pricing", "--show", url=lattice.url, check=True).stdout
    )
    assert shown == {
        "app": "pricing",
        "locked": {"tax": tax_v1},
        "default": "latest",
        "env": None,  # pricing declares no packages
        "packages": {},
    }
    # a call made outside pricing is not bound by pricing's lock
    direct = superpose_cli("call", "tax.rate", '["eu"]', url=lattice.url, check=True)
    assert json.loads(direct.stdout) == 0.25
    superpose_cli("unlock", "pricing", "tax", url=lattice.url, check=True)
    assert checkout() == 3.75

    for args, message in [
        (("lock", "pricing", "tax@abcdef12"), "no version or alias 'abcdef12'"),
        (("lock", "pricing", "no_app@abcdef12"), "no app named 'no_app'"),
        (("lock", "no_app", f"tax@{tax_v1[:12]}"), "no app named 'no_app'"),
        (("lock", "pricing", "tax"), "DEP@VERSION"),
        (("lock", "pricing"), "--show"),
        (("unlock", "pricing", "tax"), "has no lock on 'tax'"),
    ]:
        proc = superpose_cli(*args, url=lattice.url)
        assert proc.returncode == 1, (args, proc.stdout)
        assert message in proc.stderr, (args, proc.stderr)


def test_a_canary_argument_key_finds_its_argument_by_keyword_or_by_position() -> None:
    canary = Canary(version="v2", percent=50, key="arg:user")
    params = ["cart", "user"]
    assert session_from(canary, kwargs={"user": "u1"}, args=["c", "u2"], params=params) == "u1"
    assert session_from(canary, kwargs={}, args=["c", "u2"], params=params) == "u2"
    assert session_from(canary, kwargs={}, args=["c"], params=params) is None  # not given
    assert session_from(canary, args=["c", "u2"], params=["cart"]) is None  # no such parameter
    assert session_from(canary, args=["c", 7], params=params) == "7"
    header = Canary(version="v2", percent=50, key="header:X-Session")
    assert session_from(header, {"x-session": "s1"}, args=["c", "u2"], params=params) == "s1"


def test_the_split_says_since_when_it_counts_and_when_it_cannot() -> None:
    from superpose.cli.routing import rule_lines

    rules = {"canary": None, "pins": {"pay": "n1"}, "lock": {"tax": "ab" * 32}, "traffic": {}}
    assert rule_lines({**rules, "traffic_since": None}) == [
        "pinned: pay → n1",
        f"locked: tax → {'ab' * 6}",
        "calls served: unknown (no live node)",
    ]
    started = time.mktime((2026, 12, 7, 9, 30, 0, 0, 0, -1))
    idle = rule_lines({**rules, "traffic_since": started})
    assert (
        idle[-1]
        == "calls served: none since 2026-12-07 09:30:00 (when the first live node started)"
    )
