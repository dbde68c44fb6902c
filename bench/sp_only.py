"""Workload 8, superpose only: ``up`` to ready, a never-seen bundle, a code update,
and an alias move.

Everything runs against a real ``superpose up --detach`` lattice in a private
``SUPERPOSE_HOME``, through the CLI a user would type, and is always brought
down again with ``superpose down``.

``python -m bench.sp_only alias [MOVES]`` runs the alias workload alone and prints it.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.workloads import Sizes

Figures = dict[str, Any]
CLI_TIMEOUT_S = 90.0
UPDATE_POLL_LIMIT_S = 30.0
HELPER_MODULES = 9
WARM_CALLS = 20
SETTLE_S = 2.0
"""Idle time before each settled cold call (node spare executors restart meanwhile)."""
ALIAS_MOVES = 20
ALIAS_VISIBLE_LIMIT_S = 5.0
MIRROR_POLL_S = 0.0005
"""How often the mirror process asks its registry what ``latest`` resolves to."""


def up(sizes: Sizes) -> list[Figures]:
    """Wall clock of ``superpose up --detach`` until it returns ready, and of ``down``."""
    out = []
    for _ in range(sizes.sp_up_repeats):
        home = Path(tempfile.mkdtemp(prefix="bench-sp-home-"))
        try:
            up_s, proc = _timed_cli(home, "up", *_up_args())
            reported = re.search(r"ready in ([0-9.]+) s", proc.stdout)
            down_s, _ = _timed_cli(home, "down")
        finally:
            _cli(home, "down", check=False)
            shutil.rmtree(home, ignore_errors=True)
        out.append(
            {
                "ready_s": up_s,
                "reported_s": float(reported.group(1)) if reported else None,
                "down_s": down_s,
            }
        )
    return out


def bundle(sizes: Sizes) -> list[Figures]:
    """Deploy a generated 10-module app never seen before, then time its first call.

    The first app is called the moment ``up`` returns (what a script doing
    ``superpose up --detach && superpose call`` meets); the others on a lattice
    left idle for ``SETTLE_S`` first, as a running lattice usually is.
    """
    out = []
    with _running_lattice() as (client, _home):
        figures = _cold_bundle_call(client)
        out.append({"right_after_up_ms": figures["first_call_ms"]})
        for _ in range(sizes.sp_bundle_repeats):
            time.sleep(SETTLE_S)
            out.append(_cold_bundle_call(client))
    return out


def _cold_bundle_call(client: Any) -> Figures:
    from superpose.client.deploy import deploy

    token = uuid.uuid4().hex[:12]
    app = f"cold{token}"
    folder = _write_app(Path(tempfile.mkdtemp(prefix="bench-app-")) / app, token)
    try:
        started = time.perf_counter()
        client.run(deploy(client, folder))
        deployed = time.perf_counter()
        handle = client.function(f"{app}.answer")
        got = handle.remote()
        first = time.perf_counter()
        _check(got.startswith(token), f"first call answered {got!r}")
        warm = [_timed_call(handle) for _ in range(WARM_CALLS)]
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return {
        "deploy_s": deployed - started,
        "first_call_ms": (first - deployed) * 1000,
        "warm_call_ms": sorted(warm)[len(warm) // 2] * 1000,
    }


def update(sizes: Sizes) -> list[Figures]:
    """``superpose deploy`` of a new version until a running client's call answers with it."""
    from superpose.client.deploy import deploy

    out = []
    folder = Path(tempfile.mkdtemp(prefix="bench-app-")) / "upd"
    try:
        with _running_lattice() as (client, home):
            _write_app(folder, "v0")
            client.run(deploy(client, folder))
            handle = client.function("upd.answer")
            _check(handle.remote().startswith("v0"), "first version did not answer")
            for i in range(1, sizes.sp_update_repeats + 1):
                token = f"v{i}-{uuid.uuid4().hex[:8]}"
                _write_app(folder, token)
                out.append(_time_update(handle, home, folder, token))
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return out


def _time_update(handle: Any, home: Path, folder: Path, token: str) -> Figures:
    started = time.perf_counter()
    _cli(home, "deploy", str(folder), "--name", "upd")
    deployed = time.perf_counter()
    calls = 0
    while True:
        calls += 1
        if handle.remote().startswith(token):
            break
        if time.perf_counter() - deployed > UPDATE_POLL_LIMIT_S:
            raise AssertionError(f"the new version was not served within {UPDATE_POLL_LIMIT_S} s")
    answered = time.perf_counter()
    return {
        "cli_deploy_s": deployed - started,
        "visible_s": answered - started,
        "after_deploy_ms": (answered - deployed) * 1000,
        "calls_until_new": calls,
    }


def alias(sizes: Sizes, moves: int | None = None) -> list[Figures]:
    """``promote``/``rollback`` until another process's registry mirror resolves the new version.

    Moves alternate: promote the other version, then roll back. Each is timed
    from just before the move (its KV read and put) to the moment a separate
    process, polling its own mirror, resolves ``latest`` to the new digest;
    both processes stamp with the same wall clock.
    """
    from superpose.client.deploy import deploy
    from superpose.registry import versions

    moves = moves or getattr(sizes, "sp_alias_moves", ALIAS_MOVES)
    folder = Path(tempfile.mkdtemp(prefix="bench-app-")) / "flip"
    out = []
    try:
        with _running_lattice() as (client, _home):
            digests = []
            for token in ("a", "b"):
                _write_app(folder, token)
                digests.append(client.run(deploy(client, folder)).version)
            with _mirror(client.url, "flip") as mirror:
                for i in range(moves):
                    registry = client.run(client.registry())
                    if i % 2 == 0:
                        op, move = "promote", versions.promote(registry, "flip", digests[0])
                    else:
                        op, move = "rollback", versions.rollback(registry, "flip")
                    out.append(_time_move(client, move, mirror, op))
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return out


def _time_move(client: Any, move: Any, mirror: queue.Queue[str], op: str) -> Figures:
    started = time.time()
    moved = client.run(move)
    put_done = time.time()
    _check(moved.changed, f"{op} moved nothing")
    seen = _seen_at(mirror, moved.new)
    return {
        "op": op,
        "visible_ms": (seen - started) * 1000,
        "move_ms": (put_done - started) * 1000,
    }


@contextmanager
def _mirror(url: str, app: str) -> Iterator[queue.Queue[str]]:
    """A separate process that reports ``<digest> <time>`` whenever ``app@latest`` changes.

    Its lines are read by a thread into a queue: ``select`` on a buffered pipe
    misses lines that arrived together with the previous one.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.sp_only", "mirror", url, app],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        _check(_next_line(lines, CLI_TIMEOUT_S) == "ready", "mirror did not start")
        yield lines
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line.strip())


def _seen_at(mirror: queue.Queue[str], digest: str) -> float:
    deadline = time.monotonic() + ALIAS_VISIBLE_LIMIT_S
    while True:
        seen, _, stamp = _next_line(mirror, deadline - time.monotonic()).partition(" ")
        if seen == digest:
            return float(stamp)


def _next_line(lines: queue.Queue[str], timeout_s: float) -> str:
    try:
        return lines.get(timeout=max(0.0, timeout_s))
    except queue.Empty:
        raise AssertionError(f"no word from the mirror process within {timeout_s:.1f} s") from None


async def _follow_latest(url: str, app: str) -> None:
    """The mirror process: resolve ``app@latest`` as a caller would, report each change."""
    from superpose.client.client import Client

    client = await Client.open(url)
    registry = await client.registry()
    print("ready", flush=True)
    last = None
    while True:
        digest = registry.version(app, None).digest
        if digest != last:
            print(f"{digest} {time.time():.6f}", flush=True)
            last = digest
        await asyncio.sleep(MIRROR_POLL_S)


def _print_alias(figures: list[Figures]) -> None:
    visible = sorted(f["visible_ms"] for f in figures)
    moves = sorted(f["move_ms"] for f in figures)
    print(
        f"alias move → visible in another process: p50 {visible[len(visible) // 2]:.1f} ms, "
        f"max {visible[-1]:.1f} ms over {len(visible)} moves "
        f"(the move itself: p50 {moves[len(moves) // 2]:.1f} ms); target ≤ 100 ms"
    )


# --- helpers ----------------------------------------------------------------------


@contextmanager
def _running_lattice(env: dict[str, str] | None = None) -> Iterator[tuple[Any, Path]]:
    """A ``superpose up --detach`` lattice (2 nodes × 1 slot) and a client on it;
    ``env`` is added to the lattice processes' environment."""
    import superpose as sp
    from superpose.local.state import find_running_lattice

    home = Path(tempfile.mkdtemp(prefix="bench-sp-home-"))
    client = None
    try:
        _cli(home, "up", *_up_args(), env=env)
        url = find_running_lattice(home)
        _check(url is not None, "up returned but lattice.json has no URL")
        # its credentials and trusted deployer key are in ``home``: be its user meanwhile
        before, os.environ["SUPERPOSE_HOME"] = os.environ.get("SUPERPOSE_HOME"), str(home)
        try:
            client = sp.connect(url, show_logs=False)
            yield client, home
        finally:
            if before is None:
                del os.environ["SUPERPOSE_HOME"]
            else:
                os.environ["SUPERPOSE_HOME"] = before
    finally:
        if client is not None:
            client.close()
        _cli(home, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def _up_args() -> list[str]:
    """Arguments of ``superpose up``: 2 nodes × 1 slot, detached, gateway on a free port."""
    return ["--workers", "2", "--slots", "1", "--detach", "--gateway-port", str(_free_port())]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _superpose_argv() -> list[str]:
    script = Path(sys.executable).with_name("superpose")
    return [str(script)] if script.exists() else [sys.executable, "-m", "superpose"]


def _cli(
    home: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    full_env.update(env or {})
    full_env["SUPERPOSE_HOME"] = str(home)
    proc = subprocess.run(
        [*_superpose_argv(), *args],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=full_env,
        cwd=home,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"superpose {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _timed_cli(home: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = _cli(home, *args)
    return time.perf_counter() - started, proc


def _timed_call(handle: Any) -> float:
    started = time.perf_counter()
    handle.remote()
    return time.perf_counter() - started


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _write_app(folder: Path, token: str) -> Path:
    """A 10-module app: ``main.py`` with the function, importing nine helper modules."""
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"helper_{k}" for k in range(1, HELPER_MODULES + 1)]
    for k, name in enumerate(names, 1):
        (folder / f"{name}.py").write_text(_helper_source(k, token))
    imports = "\n".join(f"import {name}" for name in names)
    parts = ", ".join(f"{name}.part()" for name in names)
    (folder / "main.py").write_text(
        f'"""Generated by bench/sp_only.py."""\n\nimport superpose as sp\n\n{imports}\n\n'
        f'TOKEN = "{token}"\n\n\n@sp.function\ndef answer() -> str:\n'
        f'    return TOKEN + ":" + ",".join([{parts}])\n'
    )
    return folder


def _helper_source(k: int, token: str) -> str:
    body = "\n\n".join(
        f"def f{j}(x: int) -> int:\n    return (x * {j + k} + {j}) % 1000003" for j in range(30)
    )
    return (
        f'"""Helper {k} (generated)."""\n\nVALUE = "{token}-{k}"\n\n\n'
        f"def part() -> str:\n    return VALUE\n\n\n{body}\n"
    )


def affinity(sizes: Sizes) -> list[Figures]:
    from bench.affinity import affinity as run

    return run(sizes)


def environments(sizes: Sizes) -> list[Figures]:
    from bench.environments import environments as run

    return run(sizes)


def memo(sizes: Sizes) -> list[Figures]:
    from bench.memo import memo as run

    return run(sizes)


DRIVERS = {
    "up": up,
    "bundle": bundle,
    "update": update,
    "alias": alias,
    "affinity": affinity,
    "environments": environments,
    "memo": memo,
}


def main(argv: list[str]) -> int:
    if argv[:1] == ["mirror"]:
        asyncio.run(_follow_latest(argv[1], argv[2]))
        return 0
    if argv[:1] == ["alias"]:
        from bench.workloads import QUICK

        _print_alias(alias(QUICK, int(argv[1]) if len(argv) > 1 else None))
        return 0
    print("usage: python -m bench.sp_only alias [MOVES]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
