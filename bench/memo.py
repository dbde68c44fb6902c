"""Memoization (issue 16, item 5): a 1,000-task dataflow of ``cache=True`` functions,
run once (every call runs and stores its result) and again (every call is a cache
hit), on a fresh ``superpose up`` lattice (2 nodes × 1 slot).

The dataflow (``work``): 500 leaves of ``digest`` (about 5 ms of CPU each) reduced
pairwise by ``combine`` through futures as arguments, 999 tasks in all; a cached call's
future stands for its result by its key, so the rerun is keyed and answered without
waiting for any input. Also a 1,000-item ``map`` of ``digest`` (``map``) and of
``noop`` (``noop``: nothing to save, the cache's own floor). Target: the memoized
rerun of the dataflow ≥ 50× faster than its first run.

``python -m bench.memo [TASKS]`` runs it alone and prints the figures.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.sp_only import _check, _cli, _up_args

Figures = dict[str, Any]
TASKS = 1000
ROUNDS = 20_000


def memo(sizes: Any = None, tasks: int = TASKS) -> list[Figures]:
    from bench import memo_fns

    with _lattice():
        row: Figures = {"tasks": tasks}
        salt = uuid.uuid4().hex
        row |= _twice("work", lambda: _dataflow(salt, tasks))
        row |= _twice(
            "map",
            lambda: list(memo_fns.digest.map([salt] * tasks, range(tasks), [ROUNDS] * tasks)),
        )
        row |= _twice("noop", lambda: list(memo_fns.noop.map([salt] * tasks, range(tasks))))
    return [row]


def _dataflow(salt: str, tasks: int) -> str:
    """``tasks // 2`` leaves reduced pairwise: ``tasks - 1`` calls, every one submitted
    before any is waited on; the root's result."""
    from bench import memo_fns

    level = [memo_fns.digest.spawn(salt, i, ROUNDS) for i in range(max(tasks // 2, 1))]
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=False)
        joined = [memo_fns.combine.spawn(a, b) for a, b in pairs]
        level = joined + ([level[-1]] if len(level) % 2 else [])
    root: str = level[0].result(timeout=600)
    return root


@contextmanager
def _lattice() -> Iterator[Any]:
    """``superpose up`` in a private home (2 nodes × 1 slot), a client with its admin
    creds, both gone at the end."""
    import superpose as sp
    from superpose.local.state import find_running_lattice

    home = Path(tempfile.mkdtemp(prefix="bench-memo-home-"))
    os.environ["SUPERPOSE_HOME"] = str(home)  # its deployer key is the one `up` trusts
    client = None
    try:
        _cli(home, "up", *_up_args())
        url = find_running_lattice(home)
        _check(url is not None, "up returned but lattice.json has no URL")
        client = sp.connect(url, show_logs=False, creds=home / "creds" / "admin.creds")
        yield client
    finally:
        if client is not None:
            client.close()
        _cli(home, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


def _twice(name: str, run: Any) -> Figures:
    started = time.perf_counter()
    first = run()
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    again = run()
    rerun_s = time.perf_counter() - started
    if again != first:
        raise RuntimeError(f"{name}: the memoized rerun answered differently")
    return {
        f"{name}_first_s": first_s,
        f"{name}_rerun_s": rerun_s,
        f"{name}_ratio": first_s / rerun_s,
    }


def main(argv: list[str]) -> int:
    tasks = int(argv[0]) if argv else TASKS
    (row,) = memo(tasks=tasks)
    print(json.dumps(row, indent=2))
    for name in ("work", "map", "noop"):
        print(
            f"{name}: first run {row[f'{name}_first_s']:.2f} s, memoized rerun "
            f"{row[f'{name}_rerun_s'] * 1000:.0f} ms, {row[f'{name}_ratio']:.0f}× faster"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
