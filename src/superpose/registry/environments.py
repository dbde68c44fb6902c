"""The lattice's environments side by side: what each one holds, who runs with it, and
where it is built.

The registry knows what was resolved (``env.<digest>`` records) and which versions
name each environment; the nodes say which ones they hold built (``NodeInfo.envs``),
and the environments object store how big a built one is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nats.js.client import JetStreamContext

from superpose import protocol
from superpose.lattice import objects
from superpose.registry.mirror import Registry


def built_name(digest: str) -> str:
    """An environment's object in the environments store."""
    return f"{digest}.tar.gz"


async def built_sizes(js: JetStreamContext, digests: Iterable[str]) -> dict[str, int]:
    """Env digest → size of its built archive, for those built and stored so far."""
    sizes = {}
    for digest in digests:
        size = await objects.size_of(js, protocol.ENVS_BUCKET, built_name(digest))
        if size is not None:
            sizes[digest] = size
    return sizes


def listing(
    registry: Registry, nodes: Iterable[protocol.NodeInfo], sizes: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Every recorded environment, newest first, with the versions that run with it."""
    used_by: dict[str, list[str]] = {}
    for app, versions in sorted(registry.versions.items()):
        for version in sorted(versions.values(), key=lambda v: v.created):
            if version.env:
                used_by.setdefault(version.env, []).append(f"{app}@{version.id[:12]}")
    built_on: dict[str, list[str]] = {}
    for node in sorted(nodes, key=lambda n: n.id):
        for digest in node.envs:
            built_on.setdefault(digest, []).append(node.id)
    envs = sorted(registry.environments.values(), key=lambda e: -e.created)
    return [
        {
            "digest": env.digest,
            "python": env.python,
            "platform": env.platform,
            "packages": dict(sorted(env.packages.items())),
            "declared": env.declared,
            "created": env.created,
            "used_by": used_by.get(env.digest, []),
            "built_on": built_on.get(env.digest, []),
            "size": sizes.get(env.digest),
        }
        for env in envs
    ]
