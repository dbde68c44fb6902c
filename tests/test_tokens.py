"""Gateway tokens end to end: ``superpose token create|ls|revoke`` against the session's
lattice, and its real gateway refusing (401, 403) or serving what each token may do."""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from conftest import ROOT, Lattice, poll, superpose_cli
from http_errors import error_of
from superpose import protocol
from superpose.gateway import auth
from superpose.gateway.openapi import OPENAPI
from superpose.lattice import tokens
from superpose.lattice.connection import connect, ensure_assets
from superpose.local.gateway_token import ensure_admin_token

APP_SOURCE = '''
import json
import time

import superpose as sp


@sp.function
def echo(*args):
    return list(args)


@sp.function(timeout=60)
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return "rested"


async def app(scope, receive, send):
    """Answers with the headers it was sent, so a test sees what reached the app."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = json.dumps([[k.decode(), v.decode()] for k, v in scope["headers"]]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
'''


def deploy_app(lattice: Lattice, root: Path) -> str:
    name = f"tk_{uuid.uuid4().hex[:8]}"
    folder = root / name
    folder.mkdir()
    (folder / "entry.py").write_text(textwrap.dedent(APP_SOURCE))
    superpose_cli("deploy", str(folder), "--asgi", "entry:app", url=lattice.url, check=True)
    return name


@pytest.fixture(scope="module")
def apps(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two apps: a token limited to the first must not reach the second."""
    root = tmp_path_factory.mktemp("tokens")
    return deploy_app(lattice, root), deploy_app(lattice, root)


@pytest.fixture(scope="module")
def http(lattice: Lattice) -> Iterator[httpx.Client]:
    """A client that sends no token unless a request names one."""
    with httpx.Client(base_url=lattice.gateway, timeout=60) as c:
        yield c


def create(lattice: Lattice, *args: str) -> str:
    """A new token's text; waits until the gateway takes it (its watch brings it)."""
    proc = superpose_cli("token", "create", *args, url=lattice.url, check=True)
    text = proc.stdout.strip()
    assert text.startswith("sp_") and "\n" not in text, proc.stdout
    poll(lambda: status_with(lattice, text) != 401, "the gateway to know a new token")
    return text


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def status_with(lattice: Lattice, token: str) -> int:
    return httpx.get(f"{lattice.gateway}/v1/status", headers=bearer(token), timeout=30).status_code


def call(http: httpx.Client, token: str, app: str, *args: object) -> httpx.Response:
    return http.post(f"/v1/call/{app}.echo", json={"args": list(args)}, headers=bearer(token))


def test_health_and_the_document_need_no_token(http: httpx.Client) -> None:
    assert http.get("/v1/health").json() == {"ok": True}
    assert http.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({}, "needs a token: send `Authorization: Bearer <token>`"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "must be one `Bearer <token>`"),
        ({"Authorization": "Bearer"}, "must be one `Bearer <token>`"),
        ({"Authorization": "Bearer not-a-token"}, "not valid"),
        ({"Authorization": f"Bearer sp_{'0' * 12}_{'A' * 43}"}, "not valid"),
    ],
)
def test_no_malformed_or_unknown_token_is_a_401(
    http: httpx.Client, apps: tuple[str, str], headers: dict[str, str], named: str
) -> None:
    for method, path in [("GET", "/v1/status"), ("POST", f"/v1/call/{apps[0]}.echo")]:
        response = http.request(method, path, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert error_of(response)["type"] == "Unauthorized"
        assert named in error_of(response)["message"]


def test_a_wrong_secret_is_a_401(
    lattice: Lattice, http: httpx.Client, apps: tuple[str, str]
) -> None:
    token = create(lattice, "--role", "caller")
    token_id = token.split("_")[1]
    wrong = f"sp_{token_id}_{'B' * 43}"
    assert call(http, token, apps[0], 1).status_code == 200
    response = call(http, wrong, apps[0], 1)
    assert response.status_code == 401
    assert "not valid" in error_of(response)["message"]


def test_a_caller_calls_and_a_viewer_only_reads(
    lattice: Lattice, http: httpx.Client, apps: tuple[str, str]
) -> None:
    caller, viewer = create(lattice, "--role", "caller"), create(lattice, "--role", "viewer")
    assert call(http, caller, apps[0], 7).json() == {"result": [7]}
    refused = call(http, viewer, apps[0], 7)
    assert refused.status_code == 403
    assert error_of(refused)["type"] == "Forbidden"
    message = error_of(refused)["message"]
    assert "has role viewer, which may not POST /v1/call/{name}" in message
    assert "caller, deployer, admin" in message
    assert http.get("/v1/status", headers=bearer(viewer)).status_code == 200
    assert http.get(f"/v1/apps/{apps[0]}", headers=bearer(viewer)).status_code == 200
    invoked = http.post(f"/v1/invoke/{apps[0]}.echo", json={}, headers=bearer(viewer))
    assert invoked.status_code == 403


def test_a_token_limited_to_an_app_reaches_only_that_app(
    lattice: Lattice, http: httpx.Client, apps: tuple[str, str]
) -> None:
    mine, other = apps
    token = create(lattice, "--role", "caller", "--app", mine, "--name", "ci job")
    assert call(http, token, mine, "a").json() == {"result": ["a"]}
    refused = call(http, token, other, "a")
    assert refused.status_code == 403
    assert (
        f"limited to app {mine}, and POST /v1/call/{{name}} is app {other}"
        in (error_of(refused)["message"])
    )
    assert http.get(f"/v1/apps/{other}", headers=bearer(token)).status_code == 403
    lattice_wide = http.get("/v1/status", headers=bearer(token))
    assert lattice_wide.status_code == 403
    assert "needs a token created without --app" in error_of(lattice_wide)["message"]


def test_revoking_a_token_refuses_it_within_moments(
    lattice: Lattice, http: httpx.Client, apps: tuple[str, str]
) -> None:
    token = create(lattice, "--role", "admin")
    assert call(http, token, apps[0], 1).status_code == 200
    token_id = token.split("_")[1]
    revoked = superpose_cli("token", "revoke", token_id, url=lattice.url, check=True)
    assert f"token {token_id} revoked (role admin, every app)" in revoked.stdout
    poll(lambda: call(http, token, apps[0], 1).status_code == 401, "the revoke to take effect")
    assert status_with(lattice, token) == 401
    listed = superpose_cli("token", "ls", "--json", url=lattice.url, check=True)
    assert token_id not in {row["id"] for row in json.loads(listed.stdout)}


def test_rejected_tokens_change_nothing(
    lattice: Lattice, http: httpx.Client, apps: tuple[str, str]
) -> None:
    """A running invocation survives cancels by every token that may not cancel it."""
    admin = bearer(lattice.token)
    started = http.post(f"/v1/invoke/{apps[0]}.nap", json={"args": [3]}, headers=admin)
    assert started.status_code == 202, started.text
    inv_id = started.json()["id"]
    viewer = create(lattice, "--role", "viewer")
    scoped = create(lattice, "--role", "admin", "--app", apps[0])
    revoked = create(lattice, "--role", "admin")
    superpose_cli("token", "revoke", revoked.split("_")[1], url=lattice.url, check=True)
    poll(lambda: status_with(lattice, revoked) == 401, "the revoke to take effect")
    for token, status in [(viewer, 403), (scoped, 403), (revoked, 401), ("sp_x", 401)]:
        response = http.delete(f"/v1/invocations/{inv_id}", headers=bearer(token))
        assert response.status_code == status, (token, response.text)
    assert http.delete(f"/v1/invocations/{inv_id}").status_code == 401
    finished = http.get(f"/v1/invocations/{inv_id}?wait=60", headers=admin, timeout=90)
    assert finished.json() == {"id": inv_id, "status": "done", "result": "rested"}


def test_token_ls_shows_ids_roles_and_apps_never_a_secret(
    lattice: Lattice, apps: tuple[str, str]
) -> None:
    token = create(lattice, "--role", "deployer", "--app", apps[1], "--name", "deploy bot")
    _, token_id, secret = token.split("_", 2)
    table = superpose_cli("token", "ls", url=lattice.url, check=True).stdout
    rows = json.loads(superpose_cli("token", "ls", "--json", url=lattice.url, check=True).stdout)
    assert secret not in table and secret not in json.dumps(rows)
    mine = next(row for row in rows if row["id"] == token_id)
    assert mine["role"] == "deployer" and mine["app"] == apps[1]
    assert mine["name"] == "deploy bot" and mine["created"] > 0
    assert set(mine) == {"id", "role", "app", "name", "created"}
    line = next(line for line in table.splitlines() if line.startswith(token_id))
    assert "deployer" in line and apps[1] in line and "deploy bot" in line
    up_token = lattice.token.split("_")[1]
    assert any(row["id"] == up_token and row["role"] == "admin" for row in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create", "--role", "root"), "unknown role 'root': a token's role is one of viewer"),
        (("create", "--role", "caller", "--app", "no/such"), "'no/such' is not a valid app name"),
        (("create", "--role", "caller", "--name", "tab\there"), "is not a valid token name"),
        (("revoke", "0123456789ab"), "no token 0123456789ab (see `superpose token ls`)"),
        (("revoke", "nope"), "'nope' is not a token id"),
    ],
)
def test_bad_token_commands_are_clear_errors(
    lattice: Lattice, args: tuple[str, ...], message: str
) -> None:
    before = superpose_cli("token", "ls", "--json", url=lattice.url, check=True).stdout
    proc = superpose_cli("token", *args, url=lattice.url)
    assert proc.returncode == 1, proc.stdout
    assert message in proc.stderr
    after = superpose_cli("token", "ls", "--json", url=lattice.url, check=True).stdout
    assert json.loads(after) == json.loads(before)  # nothing was created or removed


def test_http_apps_are_open_and_never_see_a_lattice_token(
    lattice: Lattice, http: httpx.Client, apps: tuple[str, str]
) -> None:
    """HTTP apps are web sites (see auth.RULES): no token needed, and a lattice token sent
    anyway is taken off; the app's own Authorization schemes reach it."""
    open_ = http.get(f"/{apps[0]}/page")
    assert open_.status_code == 200
    seen = dict(http.get(f"/{apps[0]}/page", headers=bearer(lattice.token)).json())
    assert "authorization" not in seen
    own = dict(http.get(f"/{apps[0]}/page", headers={"Authorization": "Bearer app-own"}).json())
    assert own["authorization"] == "Bearer app-own"


def test_the_document_says_what_the_rules_check() -> None:
    assert OPENAPI["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, item in OPENAPI["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            rule, _ = auth.rule_for(method.upper(), path.replace("{", "x").replace("}", "x"))
            if path in ("/v1/health", "/openapi.json") or path.startswith("/{app}"):
                assert operation["security"] == [], (method, path)
            else:
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
                assert rule is not None and rule.role != auth.OPEN


def readme_roles() -> dict[str, set[tuple[str, str]]]:
    """README's role table: each role and the (method, path) pairs its row names."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Tokens\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[tuple[str, str]]] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        role = cells[0].removeprefix("| ").strip("`")
        if role in protocol.TOKEN_ROLES:
            rows[role] = {(m, p) for m, p in re.findall(r"`([A-Z]+) (/[^`]*)`", cells[1])}
    return rows


def test_the_readme_role_table_says_what_the_rules_check() -> None:
    """Each route is in the row of the least role the gateway lets use it."""
    rows = readme_roles()
    assert set(rows) == set(protocol.TOKEN_ROLES)
    for rule in auth.RULES:
        if rule.role == auth.OPEN:
            continue
        method = next(m for m in ("GET", "POST", "DELETE") if m in rule.methods)
        holders = {role for role, routes in rows.items() if (method, rule.template) in routes}
        assert holders == {rule.role}, (method, rule.template, holders)


def test_a_record_the_gateway_cannot_use_refuses_its_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A malformed record, or one of a role this gateway does not know, is skipped with
    a warning: its token gets a 401, never a 500 or more than it should."""
    good_text, good = tokens.mint("viewer")
    odd_text, odd = tokens.mint("viewer")
    book = auth.TokenBook()
    book._apply(good.id, good.as_json(), False)
    book._apply(odd.id, msgspec.structs.replace(odd, role="root").as_json(), False)
    book._apply("0123456789ab", b"{not json", False)
    assert book.holder(good_text) == good
    assert book.holder(odd_text) is None
    assert "unknown role 'root'" in caplog.text and "malformed TokenRecord" in caplog.text
    book._apply(good.id, None, True)  # revoked
    assert book.holder(good_text) is None


def test_up_keeps_a_valid_admin_token_and_replaces_a_revoked_one(
    lattice: Lattice, tmp_path: Path
) -> None:
    async def ensure() -> str:
        nc = await connect(lattice.url, name="test-admin-token")
        try:
            path = await ensure_admin_token((await ensure_assets(nc)).tokens, tmp_path)
        finally:
            await nc.close()
        assert path.stat().st_mode & 0o777 == 0o600
        return path.read_text().strip()

    first = lattice.run(ensure())
    assert lattice.run(ensure()) == first  # valid: kept
    superpose_cli("token", "revoke", first.split("_")[1], url=lattice.url, check=True)
    second = lattice.run(ensure())
    assert second != first and second.startswith("sp_")
    (tmp_path / "gateway.token").write_text("garbage\n")
    assert lattice.run(ensure()) not in ("garbage", second)
