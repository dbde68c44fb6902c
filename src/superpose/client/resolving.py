"""Declared packages resolved for the lattice they will run on, and recorded there.

Deploy and script mode both come here: the requirements are resolved for the Python
and platform the live nodes report (``NodeInfo.python/platform``), and the resulting
``Environment`` is written to the registry before any version that runs with it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from superpose import protocol
from superpose.code import environments
from superpose.registry.mirror import Registry

Progress = Callable[[str], None]
"""Where a step of the work is told (the CLI prints it; the Python API may ignore it)."""
SHOWN_PACKAGES = 6
"""How many resolved packages a progress line names before it says "…"."""


@dataclass(frozen=True)
class LatticePlatform:
    """The Python and platform environments are resolved for, and why those."""

    python: str
    platform: str
    note: str | None = None
    """Said when the choice was not obvious: no node reports one, or nodes differ."""


def lattice_platform(nodes: Iterable[protocol.NodeInfo]) -> LatticePlatform:
    """What most live nodes run; this machine's when none reports it."""
    reported = Counter((n.python, n.platform) for n in nodes if n.python and n.platform)
    if not reported:
        python, platform = environments.this_python(), environments.this_platform()
        return LatticePlatform(
            python,
            platform,
            f"no live node reports its Python and platform: resolving for this machine's "
            f"(Python {python} on {platform})",
        )
    (python, platform), count = max(reported.items(), key=lambda item: (item[1], item[0]))
    if len(reported) == 1:
        return LatticePlatform(python, platform)
    kinds = ", ".join(f"Python {p} on {t} ×{n}" for (p, t), n in sorted(reported.items()))
    return LatticePlatform(
        python,
        platform,
        f"the nodes run several Pythons or platforms ({kinds}): resolving for Python {python} "
        f"on {platform}, which {count} of {sum(reported.values())} run",
    )


def packages_line(env: protocol.Environment) -> str:
    """``12 packages (numpy 2.1.3, …)``."""
    shown = [f"{name} {version}" for name, version in sorted(env.packages.items())]
    more = ", …" if len(shown) > SHOWN_PACKAGES else ""
    noun = "package" if len(shown) == 1 else "packages"
    return f"{len(shown)} {noun} ({', '.join(shown[:SHOWN_PACKAGES])}{more})"


async def resolve_and_record(
    registry: Registry,
    target: LatticePlatform,
    declared: Sequence[str],
    progress: Progress | None = None,
) -> protocol.Environment:
    """Resolve ``declared`` for ``target`` (uv, in a thread: it takes seconds) and write
    the environment record (create-only: the same digest is the same environment)."""
    say = progress or (lambda _: None)
    if target.note:
        say(target.note)
    count = len(declared)
    say(
        f"resolving {count} requirement{'s' if count != 1 else ''} for Python {target.python} "
        f"on {target.platform} …"
    )
    env = await asyncio.to_thread(
        environments.resolve, list(declared), target.python, target.platform
    )
    say(packages_line(env))
    await registry.register_environment(env)
    return env
