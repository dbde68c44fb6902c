"""Which nodes may run a call, and which of them should.

Nodes advertise labels in the nodes bucket (plus ``node=<id>``, so a pin is a
need like any other). A call with needs goes only to nodes whose labels match
every need; with none satisfying them it fails at once naming the unmet need,
or waits up to ``wait_for_node`` seconds for one to join. Among the nodes that
may run it, the least loaded wins, preferring one that holds the bundle warm.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

from nats.js.kv import KeyValue

from superpose import protocol
from superpose.errors import BadRequestError, NoNodesError
from superpose.lattice.mirror import BucketMirror

ANY_VALUE = "*"
"""A need whose value is ``*`` only asks that the label exist."""
WAIT_POLL_S = 0.1
FRESH_S = 2.5 * protocol.NODE_HEARTBEAT_S


def check_needs(needs: Any, where: str = "needs") -> dict[str, str]:
    """Needs as {label: value} strings, or a clear error naming what is wrong."""
    if needs is None:
        return {}
    if not isinstance(needs, Mapping):
        raise BadRequestError(f"{where} must be a mapping of label to value, got {needs!r}")
    checked: dict[str, str] = {}
    for key, value in needs.items():
        if not isinstance(key, str) or not protocol.is_valid_name(key):
            raise BadRequestError(f"{where}: label name {key!r} must be letters, digits, _ and -")
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise BadRequestError(f"{where}: label {key} must be a string, got {value!r}")
        checked[key] = str(value)
    return checked


def call_needs(
    function_options: Mapping[str, Any],
    needs: Mapping[str, str] | None,
    region: str | None,
    pinned_to: str | None,
) -> dict[str, str]:
    """A call's needs: the function's own, the call's overrides, and its pin."""
    merged = dict(check_needs(function_options.get("needs"), "the function's needs"))
    if function_options.get("region"):
        merged["region"] = str(function_options["region"])
    merged.update(needs or {})
    if region:
        merged["region"] = region
    if pinned_to:
        merged[protocol.NODE_LABEL] = pinned_to
    return merged


PYTHON_LABEL = "python"
PLATFORM_LABEL = "platform"


def labels_of(node: protocol.NodeInfo) -> dict[str, str]:
    """Its own labels, plus ``node=<id>`` and, when it says, the Python and platform
    environments are built for there (so an environment's fit is a need like any other)."""
    implicit = {PYTHON_LABEL: node.python, PLATFORM_LABEL: node.platform}
    return {**{k: v for k, v in implicit.items() if v}, **node.labels, protocol.NODE_LABEL: node.id}


def env_needs(env: protocol.Environment) -> dict[str, str]:
    """What a node must offer to host ``env``: the Python and platform it was resolved for.
    Added to a call's needs, placement fails at once naming them when no node fits."""
    return {PYTHON_LABEL: env.python, PLATFORM_LABEL: env.platform}


def hosts_env(node: protocol.NodeInfo, env: protocol.Environment) -> bool:
    return satisfies(node, env_needs(env))


def satisfies(node: protocol.NodeInfo, needs: Mapping[str, str]) -> bool:
    labels = labels_of(node)
    return all(
        key in labels and (value == ANY_VALUE or labels[key] == value)
        for key, value in needs.items()
    )


def describe_unmet(needs: Mapping[str, str], nodes: Iterable[protocol.NodeInfo]) -> str:
    """Which needs no live node meets, and what the nodes do offer."""
    nodes = list(nodes)
    unmet = [
        f"{k}={v}" for k, v in sorted(needs.items()) if not any(satisfies(n, {k: v}) for n in nodes)
    ]
    if not unmet:  # each need is met somewhere, but never all on one node
        unmet = [",".join(f"{k}={v}" for k, v in sorted(needs.items())) + " (together)"]
    offered = "; ".join(f"{n.id}: " + _offered(n) for n in nodes)
    return f"no live node has {' and '.join(unmet)} (nodes: {offered or 'none'})"


def _offered(node: protocol.NodeInfo) -> str:
    labels = {k: v for k, v in labels_of(node).items() if k != protocol.NODE_LABEL}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "no labels"


def fresh(nodes: Iterable[protocol.NodeInfo]) -> list[protocol.NodeInfo]:
    """Nodes heard from within a couple of heartbeats: the ones to send a call to.
    (A node killed a moment ago stays "live" until its entry expires.)"""
    horizon = time.time() - FRESH_S
    return [n for n in nodes if n.seen >= horizon]


def load(node: protocol.NodeInfo, extra: int = 0) -> float:
    return (node.busy + node.queued + extra) / max(1, node.slots)


def choose(
    candidates: list[protocol.NodeInfo], key: str, sent: Mapping[str, int]
) -> protocol.NodeInfo:
    """The least loaded candidate, preferring those with the bundle warm (``key``:
    ``protocol.host_key``) while they have room (so a hot bundle does not pile onto one
    node). ``sent`` counts calls this client has sent each node since its last
    heartbeat could show them."""
    candidates = fresh(candidates) or candidates
    warm = [n for n in candidates if key in n.warm and load(n, sent.get(n.id, 0)) < 1]
    pool = warm or candidates
    best = min(load(n, sent.get(n.id, 0)) for n in pool)
    return random.choice([n for n in pool if load(n, sent.get(n.id, 0)) == best])


class NodeDirectory(BucketMirror):
    """The live nodes, mirrored from the nodes bucket."""

    what = "nodes"

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv)
        self.nodes: dict[str, protocol.NodeInfo] = {}

    def _apply(self, key: str, value: bytes | None, deleted: bool) -> None:
        if deleted or not value:
            self.nodes.pop(key, None)
            return
        try:
            self.nodes[key] = protocol.NodeInfo.decode(value)
        except protocol.ProtocolError:
            self.nodes.pop(key, None)

    def live(self) -> list[protocol.NodeInfo]:
        """Nodes heard from within the node TTL (a killed node leaves no delete marker)."""
        horizon = time.time() - protocol.NODE_TTL_S
        return [n for n in self.nodes.values() if n.seen >= horizon]

    def matching(self, needs: Mapping[str, str]) -> list[protocol.NodeInfo]:
        return [n for n in self.live() if satisfies(n, needs)]

    async def wait_for(
        self, needs: Mapping[str, str], wait_s: float, what: str
    ) -> list[protocol.NodeInfo]:
        """Nodes meeting ``needs``; waits up to ``wait_s`` for one, then fails naming them."""
        deadline = time.monotonic() + wait_s
        while True:
            found = self.matching(needs)
            if found:
                return found
            if time.monotonic() >= deadline:
                waited = f" after waiting {wait_s:g} s" if wait_s > 0 else ""
                raise NoNodesError(
                    f"cannot place {what}{waited}: {describe_unmet(needs, self.live())}"
                )
            await asyncio.sleep(WAIT_POLL_S)
