"""Script mode as a user runs it: `python main.py` next to its own helper modules and
the data files it names with ``include=``."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import superpose as sp
from conftest import Lattice, lattice_env, read_until_exit
from superpose.code import script
from superpose.code.include import check_patterns, included_files

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
    env.update(lattice_env(lattice.url))
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
    seen = read_until_exit(leader, proc)
    assert proc.returncode == 0, seen
    return seen


def test_a_local_module_imported_after_the_first_call_reaches_the_nodes(
    lattice: Lattice, tmp_path: Path
) -> None:
    (tmp_path / "later.py").write_text("def triple(x: int) -> int:\n    return 3 * x\n")
    (tmp_path / "main.py").write_text(LATE_MAIN)
    proc = _run_script(tmp_path, lattice)
    assert proc.returncode == 0, proc.stderr
    assert "early 1" in proc.stdout and "late 15" in proc.stdout


# --- data files named with include= ----------------------------------------------------

DATA_MAIN = """\
import superpose as sp


@sp.function(include=["data/*.csv", "config"])
def rows(name: str) -> list[int]:
    with open(f"data/{name}") as f:  # the node runs in the bundle: data/ is beside it
        return [int(line) for line in f]


@sp.function
def first(name: str) -> int:
    with open("config/scale.txt") as f:  # a folder named by include= comes whole
        scale = int(f.read())
    return scale * rows.remote(name)[0]  # runs in this bundle: it has rows' files


if __name__ == "__main__":
    with sp.connect():
        print("rows", rows.remote("a.csv"))
        print("first", first.remote("a.csv"))
"""


def _data_project(root: Path, *values: int) -> Path:
    (root / "main.py").write_text(DATA_MAIN)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "a.csv").write_text("".join(f"{v}\n" for v in values))
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "scale.txt").write_text("10")
    return root


def test_included_data_files_open_on_the_node_and_a_changed_one_is_sent_again(
    lattice: Lattice, tmp_path: Path
) -> None:
    proc = _run_script(_data_project(tmp_path, 1, 2), lattice)
    assert proc.returncode == 0, proc.stderr
    assert "rows [1, 2]" in proc.stdout.splitlines()
    assert "first 10" in proc.stdout.splitlines()
    proc = _run_script(_data_project(tmp_path, 7), lattice)
    assert proc.returncode == 0, proc.stderr
    assert "rows [7]" in proc.stdout.splitlines()


def test_a_changed_included_file_changes_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1\n")
    module = _import_module(tmp_path, monkeypatch, "with_data", 'include=["data/*.csv"]')
    bundle, root = script.bundle_for(module)
    assert root == tmp_path.resolve()
    assert set(bundle.files) == {"with_data.py", "data/x.csv"}
    (tmp_path / "data" / "x.csv").write_text("2\n")
    assert script.bundle_for(module)[0].digest != bundle.digest


def test_an_include_pattern_matching_nothing_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = _import_module(tmp_path, monkeypatch, "no_data", 'include=["data/*.csv"]')
    with pytest.raises(sp.UserError, match=r"include pattern 'data/\*\.csv' matches no file"):
        script.bundle_for(module)


@pytest.mark.parametrize(
    ("include", "named"),
    [
        (["../secrets/*.csv"], "'../secrets/*.csv' leaves the script's folder"),
        (["/etc/*.conf"], "'/etc/*.conf' leaves the script's folder"),
        (["data/../../x"], "'data/../../x' leaves the script's folder"),
        ([3], "include= takes glob patterns (strings), got 3"),
        ([""], "include= takes glob patterns (strings), got ''"),
    ],
)
def test_an_include_pattern_outside_the_folder_is_refused_at_decoration(
    include: list[Any], named: str
) -> None:
    with pytest.raises(sp.UserError) as caught:
        sp.function(include=include)(lambda: None)
    assert named in str(caught.value)


def test_an_include_pattern_reaching_out_through_a_link_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("x")
    root = tmp_path / "project"
    root.mkdir()
    (root / "data").symlink_to(outside)
    with pytest.raises(sp.UserError, match="a link to outside"):
        included_files(root, ("data/*.csv",))


def test_an_included_folder_brings_its_files_without_caches(tmp_path: Path) -> None:
    (tmp_path / "assets" / "img" / "__pycache__").mkdir(parents=True)
    (tmp_path / "assets" / "a.txt").write_text("a")
    (tmp_path / "assets" / "img" / "b.png").write_bytes(b"b")
    (tmp_path / "assets" / "img" / "__pycache__" / "c.pyc").write_bytes(b"c")
    found = included_files(tmp_path, check_patterns("assets"))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "assets/a.txt",
        "assets/img/b.png",
    ]


def _import_module(root: Path, monkeypatch: pytest.MonkeyPatch, name: str, options: str) -> str:
    """A module in ``root`` with one function decorated with ``options``, imported for
    the test (and forgotten after it)."""
    (root / f"{name}.py").write_text(
        f"import superpose as sp\n\n@sp.function({options})\ndef f():\n    return 1\n"
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))  # undone: absent again
    del sys.modules[name]
    importlib.import_module(name)
    return name


def test_included_files_over_the_bundle_limit_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from superpose.code import include

    monkeypatch.setattr(include, "MAX_BUNDLE_BYTES", 1024)
    (tmp_path / "big.bin").write_bytes(b"x" * 2048)
    with pytest.raises(sp.UserError, match="more than a bundle takes"):
        included_files(tmp_path, ("big.bin",))
