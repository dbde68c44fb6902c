"""Script mode as a user runs it: `python main.py` next to its own helper modules."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from conftest import Lattice

HELPER = "def double(x: int) -> int:\n    return 2 * x\n"

MAIN = """\
import sys
import superpose as sp
from helper import double


@sp.function
def work(x: int) -> int:
    print(f"working on {x}")
    return double(x)


if __name__ == "__main__":
    with sp.connect():
        print("remote", work.remote(21))
        print("mapped", sum(work.map(range(int(sys.argv[1])))))
        print("spawned", work.spawn(50).result())
"""


LATE_MAIN = """\
import importlib
import superpose as sp


@sp.function
def late(x: int) -> int:
    import later  # a local module the script imports only after its first call

    return later.triple(x)


@sp.function
def early(x: int) -> int:
    return x


if __name__ == "__main__":
    with sp.connect():
        print("early", early.remote(1))
        importlib.import_module("later")
        print("late", late.remote(5))
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "helper.py").write_text(HELPER)
    (tmp_path / "main.py").write_text(MAIN)
    return tmp_path


def _run_script(root: Path, lattice: Lattice, *args: str) -> subprocess.CompletedProcess[str]:
    """`python main.py ARGS` in ``root``, as a user runs it, against the test lattice."""
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=root,
        env=_env(lattice),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _env(lattice: Lattice) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env["SUPERPOSE_LATTICE"] = lattice.url
    return env


def test_a_script_runs_with_its_local_modules_and_shows_remote_prints(
    lattice: Lattice, tmp_path: Path
) -> None:
    root = _project(tmp_path)
    proc = _run_script(root, lattice, "3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "remote 42" in lines and "mapped 6" in lines
    printed = [i for i, line in enumerate(lines) if line.startswith("[work@n")]
    assert len(printed) == 5, proc.stdout
    # A call's output reaches the caller before its result, never inside the caller's line:
    # direct calls (one connection carries both) and durable ones (the result comes from
    # the node agent, after the executor has flushed what the call printed).
    assert lines[printed[0]].endswith("] working on 21")
    assert printed[0] < lines.index("remote 42") < printed[1]
    assert printed[3] < lines.index("mapped 6") < printed[4]
    assert lines[printed[4]].endswith("] working on 50")
    assert printed[4] < lines.index("spawned 100")


BAR_MAIN = """\
import sys
import time
import superpose as sp


@sp.function
def slow(x: int) -> int:
    time.sleep(0.05)
    return x


if __name__ == "__main__":
    with sp.connect():
        show = sys.argv[1] == "bar"
        print(sum(slow.map(range(40), progress=show)))
        print(sum(sp.gather(*(slow.spawn(x) for x in range(40)), progress=show)))
"""


def test_map_and_gather_show_a_progress_bar_on_a_terminal_only(
    lattice: Lattice, tmp_path: Path
) -> None:
    (tmp_path / "bar.py").write_text(BAR_MAIN)
    plain = subprocess.run(
        [sys.executable, "bar.py", "bar"],
        cwd=tmp_path,
        env=_env(lattice),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split() == ["780", "780"]
    assert "bar.slow" not in plain.stderr and "gather" not in plain.stderr

    on_terminal = _stderr_on_a_terminal(tmp_path, lattice, "bar.py", "bar")
    assert "bar.slow" in on_terminal and "gather" in on_terminal
    turned_off = _stderr_on_a_terminal(tmp_path, lattice, "bar.py", "off")
    assert "bar.slow" not in turned_off and "gather" not in turned_off


def _stderr_on_a_terminal(root: Path, lattice: Lattice, *args: str) -> str:
    leader, follower = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=root,
        env={**_env(lattice), "COLUMNS": "120"},
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = _read_until_exit(leader, proc)
    assert proc.returncode == 0, seen
    return seen


def _read_until_exit(fd: int, proc: subprocess.Popen[bytes]) -> str:
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_a_local_module_imported_after_the_first_call_reaches_the_nodes(
    lattice: Lattice, tmp_path: Path
) -> None:
    (tmp_path / "later.py").write_text("def triple(x: int) -> int:\n    return 3 * x\n")
    (tmp_path / "main.py").write_text(LATE_MAIN)
    proc = _run_script(tmp_path, lattice)
    assert proc.returncode == 0, proc.stderr
    assert "early 1" in proc.stdout and "late 15" in proc.stdout
