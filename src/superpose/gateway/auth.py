"""Bearer tokens at the gateway: who may do what, in one table, checked before routing.

``RULES`` maps each route (method and path, as ``app.py`` declares them) to the least
role that may use it and to where the request names its app. ``TokenGate`` wraps the
whole gateway: a request without a valid token is answered 401 (``WWW-Authenticate:
Bearer``), one whose token's role or app does not reach the route 403, both with the
gateway's usual error body, and the router never sees either. Roles are ranked
(``protocol.TOKEN_ROLES``): each may do what the ones before it may.

The tokens come from ``TokenBook``, a watched copy of the ``sp_tokens`` bucket, so a
token created or revoked with the CLI counts within milliseconds, without a restart,
and a check is a dictionary lookup and one sha256: no round trip to the lattice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.js.kv import KeyValue
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from superpose import protocol
from superpose.gateway import contract
from superpose.gateway.errors import error
from superpose.lattice import tokens
from superpose.lattice.mirror import follow_bucket

log = logging.getLogger("superpose.gateway")

OPEN = "open"
"""A route anyone may use, with no token."""
SYNC_TIMEOUT_S = 10.0
"""How long the gateway's start waits for its first copy of the tokens bucket."""
CHALLENGE = {"www-authenticate": 'Bearer realm="superpose"'}
_ANY = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_READ = frozenset({"GET", "HEAD"})  # Starlette answers HEAD on every GET route
_CONVERTER = re.compile(r":\w+}")


def _function_app(name: str) -> str:
    """The app part of ``APP.FN[@VERSION]`` (the handler checks the rest)."""
    return name.partition("@")[0].partition(".")[0]


@dataclass(frozen=True)
class Rule:
    """Who may use one route: the least role, and the path parameter naming its app."""

    methods: frozenset[str]
    path: str
    """As the route in ``app.py`` spells it."""
    role: str
    """One of ``protocol.TOKEN_ROLES``, or ``OPEN``."""
    app_param: str | None = None
    """The path parameter that names the app; None: the route is about no one app,
    so a token limited to an app (``--app``) may not use it."""
    app_of: Callable[[str], str] = str
    """The app in that parameter's value."""
    forwarded: bool = False
    """``/{app}/...``: only a first segment that can name an app matches (``AppRoute``)."""
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", compile_path(self.path)[0])

    @property
    def template(self) -> str:
        """The path as OpenAPI and the README write it: ``/v1/call/{name}``."""
        return _CONVERTER.sub("}", self.path)

    def app_in(self, method: str, path: str) -> tuple[bool, str | None]:
        """(whether this rule is the request's, the app the request names)."""
        found = self._regex.match(path) if method in self.methods else None
        if found is None:
            return False, None
        app = found.group(self.app_param) if self.app_param else None
        if self.forwarded and not contract.HTTP_APP.accepts(app or ""):
            return False, None
        return True, self.app_of(app) if app is not None else None


RULES: tuple[Rule, ...] = (
    Rule(_READ, "/v1/health", OPEN),
    Rule(_READ, "/openapi.json", OPEN),
    Rule(frozenset({"POST"}), "/v1/call/{name:str}", "caller", "name", _function_app),
    Rule(frozenset({"POST"}), "/v1/invoke/{name:str}", "caller", "name", _function_app),
    Rule(_READ, "/v1/invocations/{id:str}", "viewer"),
    Rule(frozenset({"DELETE"}), "/v1/invocations/{id:str}", "caller"),
    Rule(_READ, "/v1/status", "viewer"),
    Rule(_READ, "/v1/apps/{app:str}", "viewer", "app"),
    Rule(_READ, "/v1/traces/{id:str}", "viewer"),
    Rule(_ANY, "/{app:str}", OPEN, "app", forwarded=True),
    Rule(_ANY, "/{app:str}/{path:path}", OPEN, "app", forwarded=True),
)
"""Every route of the gateway and who may use it. No route changes apps, versions or
aliases (the CLI does, over NATS), so over HTTP a deployer and an admin may do what a
caller may. A request no rule matches (a path or method the router answers 404 or 405)
needs any valid token.

HTTP apps (``deploy --asgi``) are open: they are documented and shipped as web sites
that a browser opens (``examples/site``), and a browser sends no bearer token. An app
that wants callers to authenticate does it itself, as any web site does."""


class TokenBook:
    """The gateway's copy of the ``sp_tokens`` bucket, kept current by a watch."""

    def __init__(self) -> None:
        self._records: dict[str, protocol.TokenRecord] = {}
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, kv: KeyValue) -> None:
        """Follow the bucket; returns once the tokens stored now are read, so the
        first request is not refused for a token that exists."""
        self._task = asyncio.create_task(follow_bucket(kv, self._apply, self._synced, "tokens"))
        await asyncio.wait_for(self._synced.wait(), SYNC_TIMEOUT_S)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _apply(self, key: str, value: bytes | None, deleted: bool) -> None:
        self._records.pop(key, None)
        if deleted or not value:
            return
        try:
            record = protocol.TokenRecord.from_json(value)
        except protocol.ProtocolError as exc:  # unusable: the token is refused
            log.warning("skipping token %s: %s", key, exc)
            return
        if record.role not in protocol.TOKEN_ROLES:  # written by hand, or by a newer CLI
            log.warning("skipping token %s: unknown role %r", key, record.role)
            return
        self._records[key] = record

    def holder(self, text: str) -> protocol.TokenRecord | None:
        """The record of a valid token, None for any other text."""
        parsed = tokens.parse(text)
        if parsed is None:
            return None
        record = self._records.get(parsed[0])
        return record if record is not None and tokens.matches(record, parsed[1]) else None


class Refusal(Exception):
    """Why a request may not go on: its status (401 or 403) and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bearer(scope: Scope) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None if the header is absent.
    A header of another scheme, or empty, is a 401 naming the form expected."""
    values: list[bytes] = [v for k, v in scope["headers"] if k == b"authorization"]
    if not values:
        return None
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    if len(values) > 1 or scheme.lower() != "bearer" or not token.strip():
        raise Refusal(401, "the Authorization header must be one `Bearer <token>`")
    return token.strip()


def authorize(record: protocol.TokenRecord, rule: Rule, app: str | None, what: str) -> None:
    """Nothing if ``record`` may do ``what`` (``METHOD /path``) under ``rule``; else a 403
    naming its role or app and what the route needs."""
    ranks = protocol.TOKEN_ROLES
    if ranks.index(record.role) < ranks.index(rule.role):
        allowed = ", ".join(ranks[ranks.index(rule.role) :])
        raise Refusal(
            403,
            f"token {record.id} has role {record.role}, which may not {what}: "
            f"that needs one of {allowed}",
        )
    if record.app is None:
        return
    if rule.app_param is None:
        raise Refusal(
            403,
            f"token {record.id} is limited to app {record.app}, and {what} is not about "
            "one app: it needs a token created without --app",
        )
    if app != record.app:
        raise Refusal(
            403, f"token {record.id} is limited to app {record.app}, and {what} is app {app}"
        )


def check(book: TokenBook, scope: Scope) -> None:
    """Nothing if the request may go on; a Refusal (401 or 403) otherwise."""
    method, path = scope["method"], scope["path"]
    rule, app = rule_for(method, path)
    if rule is not None and rule.role == OPEN:
        return
    text = bearer(scope)
    if text is None:
        raise Refusal(
            401,
            f"{method} {path} needs a token: send `Authorization: Bearer <token>` "
            "(`superpose token create` prints one; `superpose up` writes an admin token "
            "to gateway.token in its state folder)",
        )
    record = book.holder(text)
    if record is None:
        raise Refusal(401, "the bearer token is not valid: it was revoked, or never issued")
    if rule is not None:
        authorize(record, rule, app, f"{method} {rule.template}")


def rule_for(method: str, path: str) -> tuple[Rule | None, str | None]:
    """The first rule for this request and the app it names; (None, None) if none is."""
    for rule in RULES:
        hit, app = rule.app_in(method, path)
        if hit:
            return rule, app
    return None, None


class TokenGate:
    """ASGI middleware: every HTTP request passes ``check`` or is answered here.

    A lattice token's header is removed before the request goes on: it is for the
    gateway, and an HTTP app (user code) must never see one. Any other
    ``Authorization`` (an app's own scheme) reaches the app unchanged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        book: TokenBook = scope["app"].state.tokens
        try:
            check(book, scope)
        except Refusal as refusal:
            kind = "Unauthorized" if refusal.status == 401 else "Forbidden"
            headers = CHALLENGE if refusal.status == 401 else None
            answer = error(refusal.status, kind, refusal.message, headers=headers)
            await answer(scope, receive, send)
            return
        kept = [(k, v) for k, v in scope["headers"] if not _lattice_token(k, v)]
        await self.app({**scope, "headers": kept}, receive, send)


def _lattice_token(name: bytes, value: bytes) -> bool:
    if name != b"authorization":
        return False
    scheme, _, token = value.decode("latin-1").strip().partition(" ")
    return scheme.lower() == "bearer" and tokens.parse(token.strip()) is not None
