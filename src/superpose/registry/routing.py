"""Routing rules: canaries, pins, runtime locks, and what the traffic did with them.

Each rule is one registry key that every client and node mirrors, so a rule
takes effect on the next call anywhere, with no redeploy: ``canary.<app>``
splits sessions, ``pin.<app>.<fn>`` names the one node a function runs on,
``lock.<app>`` freezes the versions an app's calls to other apps resolve to.
Traces read the spans nodes record for calls made with tracing on.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from superpose import protocol
from superpose.errors import BadRequestError, LatticeError, NotFoundError
from superpose.lattice.batch import js_api
from superpose.protocol import Canary
from superpose.registry.mirror import LATEST, Registry, check_canary_key

TRACE_READ_S = 2.0


# --- canaries -------------------------------------------------------------------


async def set_canary(
    registry: Registry, app: str, ref: str, percent: float, key: str | None
) -> Canary:
    """Send ``percent`` of the app's sessions to the version ``ref`` names."""
    if not (isinstance(percent, int | float) and 0 <= percent <= 100):
        raise BadRequestError(f"canary percent must be between 0 and 100, got {percent!r}")
    check_canary_key(key)
    version = registry.version(app, ref)
    canary = Canary(version=version.id, percent=float(percent), key=key)
    await registry.set_canary(app, canary)
    return canary


async def canary_off(registry: Registry, app: str) -> Canary | None:
    """Send every session to ``latest`` again; returns the canary that was on."""
    registry.versions_of(app)
    old = registry.canaries.get(app)
    if old is not None:
        await registry.set_canary(app, None)
    return old


# --- pins ------------------------------------------------------------------------


async def pin(registry: Registry, live_nodes: Iterable[str], name: str, node: str) -> None:
    """Serve ``app.fn`` only on ``node``, like moving a file into a folder."""
    app, fn = _function_name(registry, name)
    if not protocol.is_valid_name(node):
        raise BadRequestError(f"{node!r} is not a node id")
    live = sorted(live_nodes)
    if node not in live:
        raise NotFoundError(
            f"no live node {node!r} to pin {app}.{fn} to (live nodes: {', '.join(live) or 'none'})"
        )
    await registry.set_pin(app, fn, node)


async def unpin(registry: Registry, name: str) -> str | None:
    """Let ``app.fn`` run anywhere again; returns the node it was pinned to."""
    app, fn = _function_name(registry, name)
    old = registry.pins.get(app, {}).get(fn)
    if old is not None:
        await registry.set_pin(app, fn, None)
    return old


def _function_name(registry: Registry, name: str) -> tuple[str, str]:
    app, dot, fn = name.partition(".")
    if not dot:
        raise BadRequestError(f"{name!r} is not a function name: expected APP.FN")
    registry.resolve(app, fn)  # an unknown app or function is named in the error
    return app, fn


# --- runtime locks ------------------------------------------------------------------


async def lock(registry: Registry, app: str, link: str) -> tuple[str, str]:
    """Freeze ``app``'s calls to another app at one version: ``DEP@VERSION``."""
    registry.versions_of(app)
    dep, at, ref = link.partition("@")
    if not at or not ref:
        raise BadRequestError(f"{link!r} is not DEP@VERSION (e.g. pricing@3f2a91)")
    digest = registry.version(dep, ref).id
    links = {**registry.locks.get(app, {}), dep: digest}
    await registry.set_lock(app, links)
    return dep, digest


async def unlock(registry: Registry, app: str, dep: str) -> str | None:
    """Let ``app``'s calls to ``dep`` follow ``dep``'s aliases again."""
    registry.versions_of(app)
    links = dict(registry.locks.get(app, {}))
    old = links.pop(dep, None)
    if old is None:
        raise NotFoundError(f"{app} has no lock on {dep!r} (see `superpose lock {app} --show`)")
    await registry.set_lock(app, links)
    return old


def lockfile(registry: Registry, app: str) -> dict[str, Any]:
    """What ``app``'s runtime-linked calls resolve to now (locked, or the alias they follow),
    and the packages its ``latest`` runs with: both halves of what a call of it runs."""
    registry.versions_of(app)
    latest = registry.version(app, None)
    env = registry.environments.get(latest.env) if latest.env else None
    return {
        "app": app,
        "locked": dict(sorted(registry.locks.get(app, {}).items())),
        "default": LATEST,
        "env": latest.env or None,
        "packages": dict(sorted(env.packages.items())) if env is not None else {},
    }


# --- what the traffic did -------------------------------------------------------------


def split(registry: Registry, app: str, nodes: Iterable[protocol.NodeInfo]) -> dict[str, Any]:
    """The app's canary rule, its pins, and the calls each version has served.

    Each live node counts the calls it served since it started, and a node's counts
    leave with it: ``traffic_since`` is when the first of them started (None with
    no live node), so a reader knows the figures are not since the canary was set.
    """
    registry.versions_of(app)
    live = list(nodes)
    traffic: Counter[str] = Counter()
    for node in live:
        for key, count in node.traffic.items():
            name, _, digest = key.partition("@")
            if name == app:
                traffic[digest] += count
    canary = registry.canaries.get(app)
    return {
        "latest": registry.aliases.get(app, {}).get(LATEST),
        "canary": canary.rule() if canary else None,
        "pins": dict(sorted(registry.pins.get(app, {}).items())),
        "lock": dict(sorted(registry.locks.get(app, {}).items())),
        "traffic": dict(traffic.most_common()),
        "traffic_since": min((node.started for node in live), default=None),
    }


async def read_trace(nc: NATS, trace_id: str) -> list[protocol.Span]:
    """Every span recorded for a trace, in start order.

    The stream says how many spans the trace's subject holds, then an ordered
    consumer reads exactly those: no guessing from delivery metadata when to stop.
    """
    if not protocol.is_valid_invocation_id(trace_id):
        raise BadRequestError(f"{trace_id!r} is not a trace id")
    subject = protocol.trace_subject(trace_id)
    info = await js_api(
        nc, protocol.stream_info_subject(protocol.TRACES_STREAM), {"subjects_filter": subject}
    )
    count = int(((info.get("state") or {}).get("subjects") or {}).get(subject, 0))
    if count == 0:
        return []
    sub = await nc.jetstream().subscribe(
        subject, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    spans: list[protocol.Span] = []
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=TRACE_READ_S)
            with contextlib.suppress(ValueError, TypeError):
                spans.append(protocol.Span.decode(msg.data))
    except TimeoutError:
        raise LatticeError(f"the lattice stopped sending the spans of trace {trace_id}") from None
    finally:
        await sub.unsubscribe()
    return sorted(spans, key=lambda s: s.started)


def parse_pins(text: str | None) -> dict[str, str]:
    """``X-Superpose-Pin`` / ``--pin``: ``app@version[,app@version...]``."""
    pins: dict[str, str] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        app, at, ref = item.partition("@")
        if not at or not ref or not protocol.is_valid_name(app):
            raise BadRequestError(f"pin {item!r} is not APP@VERSION (e.g. pricing@3f2a91)")
        pins[app] = ref
    return pins
