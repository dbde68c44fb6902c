"""Functions with no file (a notebook's cells, ``python -c``, ``python -``) travel by value.

The notebook test runs a real notebook in a real IPython kernel (nbclient), started
from this venv's Python through a kernelspec written for the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import superpose as sp
from conftest import Lattice, lattice_env
from superpose.code import by_value

# --- a real notebook in a real kernel --------------------------------------------------

CELLS = [
    """
    import threading
    import superpose as sp

    client = sp.connect({url!r}, show_logs=False, creds={creds!r})
    """,
    """
    SCALE = 10

    def helper(x):
        return x * SCALE

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    @sp.function
    def scale(x):
        return helper(x)

    @sp.function
    def total(n):
        return sum(scale.map(range(n)))  # another notebook function, from a node

    @sp.function
    def apply(fn, x):
        return fn(x)

    @sp.function
    def mirror(p):
        return Point(-p.x, -p.y)
    """,
    """
    print("remote", scale.remote(4))
    print("spawn", scale.spawn(5).result())
    print("map", list(scale.map(range(4))))
    print("nested", total.remote(4))
    k = 3
    print("closure", apply.remote(lambda v: v * k, 7))
    p = mirror.remote(Point(1, 2))
    print("class", isinstance(p, Point), p.x, p.y)
    """,
    """
    @sp.function
    def scale(x):  # redefined: the next calls run this one
        return -x

    print("redefined", scale.remote(4), total.remote(3))
    """,
    """
    lock = threading.Lock()

    @sp.function
    def guarded(x):
        with lock:
            return x

    try:
        guarded.remote(1)
    except sp.UserError as e:
        print("refused", e)
    """,
    """
    import time

    @sp.function
    def slow(x):
        time.sleep(0.05)
        return x

    print("bar", sum(slow.map(range(40))), sum(sp.gather(*(slow.spawn(x) for x in range(40)))))
    print("quiet", sum(slow.map(range(40), progress=False)))
    """,
]


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec for this venv's Python, found first on a JUPYTER_PATH of its own."""
    spec = tmp_path / "jupyter" / "kernels" / "superpose-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "superpose test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for name in [n for n in os.environ if n.startswith("SUPERPOSE_")]:
        monkeypatch.delenv(name)
    return "superpose-test"


def _run_notebook(cells: list[str], kernel_name: str, cwd: Path) -> list[str]:
    """Each cell's printed output, after running them all in a fresh kernel."""
    return [_printed(outputs) for outputs in _execute(cells, kernel_name, cwd)]


def _execute(cells: list[str], kernel_name: str, cwd: Path) -> list[list[Any]]:
    """Each cell's outputs (streams, displays), after running them all in a fresh kernel."""
    import nbclient
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(cell).strip()) for cell in cells]
    nbclient.NotebookClient(
        nb, kernel_name=kernel_name, timeout=60, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return [list(cell.outputs) for cell in nb.cells]


def _printed(outputs: list[Any]) -> str:
    return "".join(out.get("text", "") for out in outputs if out.output_type == "stream")


def _progress_bars(outputs: list[Any]) -> list[str]:
    """The HTML of the progress displays a cell left (updated in place, so one each)."""
    return [
        out["data"]["text/html"]
        for out in outputs
        if out.output_type == "display_data"
        and "<progress" in out.get("data", {}).get("text/html", "")
    ]


def test_a_notebook_runs_its_cells_functions_on_the_lattice(
    lattice: Lattice, kernel_name: str, tmp_path: Path
) -> None:
    creds = lattice_env(lattice.url)["SUPERPOSE_CREDS"]
    cells = [CELLS[0].format(url=lattice.url, creds=creds), *CELLS[1:]]
    outputs = _execute(cells, kernel_name, tmp_path)
    printed = [_printed(cell) for cell in outputs]
    assert printed[2].splitlines() == [
        "remote 40",
        "spawn 50",
        "map [0, 10, 20, 30]",
        "nested 60",
        "closure 21",
        "class True -1 -2",
    ]
    # The redefined scale runs, also where total calls it: total reads the new global.
    assert printed[3].strip() == "redefined -4 -3"
    refused = printed[4]
    assert refused.startswith("refused cannot send guarded by value"), refused
    assert "the global 'lock', a _thread.lock" in refused
    # map and gather show a progress bar under the cell, left at its final count;
    # progress=False shows none.
    assert printed[5].splitlines() == ["bar 780 780", "quiet 780"]
    bars = _progress_bars(outputs[5])
    assert len(bars) == 2, outputs[5]
    assert 'value="40" max="40"' in bars[0] and "main.slow: 40/40" in bars[0]
    assert "gather: 40/40" in bars[1]


# --- python -c and python - -----------------------------------------------------------

PROGRAM = """\
import superpose as sp

def double(x):
    return 2 * x

@sp.function(include=["data/*.csv"])
def rows(name):
    with open(f"data/{name}") as f:  # the node runs in the bundle, data/ beside it
        return [double(int(line)) for line in f]

@sp.function
def first(name):
    return rows.remote(name)[0]

with sp.connect(show_logs=False):
    print("remote", rows.remote("a.csv"))
    print("spawn", rows.spawn("a.csv").result())
    print("map", list(first.map(["a.csv", "a.csv"])))
"""


def _python(args: list[str], lattice: Lattice, cwd: Path, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    env.update(lattice_env(lattice.url))
    proc = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _data(tmp_path: Path, *values: int) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "a.csv").write_text("".join(f"{v}\n" for v in values))
    return tmp_path


def test_python_dash_c_functions_run_remotely_with_their_included_files(
    lattice: Lattice, tmp_path: Path
) -> None:
    out = _python(["-c", PROGRAM], lattice, _data(tmp_path, 1, 2))
    assert out.splitlines() == ["remote [2, 4]", "spawn [2, 4]", "map [2, 2]"]
    # A changed data file is another bundle: the node reads the new one.
    out = _python(["-c", PROGRAM], lattice, _data(tmp_path, 5))
    assert out.splitlines()[0] == "remote [10]"


def test_a_program_piped_into_python_runs_remotely(lattice: Lattice, tmp_path: Path) -> None:
    out = _python(["-"], lattice, _data(tmp_path, 3), stdin=PROGRAM)
    assert out.splitlines() == ["remote [6]", "spawn [6]", "map [6, 6]"]


# --- in this process: code exec'd into a module with no file --------------------------


@pytest.fixture
def notebook() -> Iterator[types.ModuleType]:
    """A module with no file, as a notebook's namespace is; run code in it with exec."""
    module = types.ModuleType("notebook_under_test")
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def _cell(module: types.ModuleType, source: str) -> None:
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), module.__dict__)


def _digest(fn: Any, client: sp.Client) -> str:
    return str(fn._target(client).digest)


def test_a_function_with_no_file_runs_by_value(
    client: sp.Client, notebook: types.ModuleType
) -> None:
    _cell(
        notebook,
        """
        import superpose as sp

        def helper(x):
            return x + 1

        @sp.function
        def inc(x):
            return helper(x)
        """,
    )
    inc = notebook.inc
    assert inc.by_value
    assert inc.remote(1) == 2
    assert inc._target(client).module == by_value.LOADER_MODULE


def test_a_warm_function_is_not_packed_again_until_what_it_reads_is_redefined(
    client: sp.Client, notebook: types.ModuleType
) -> None:
    _cell(
        notebook,
        """
        import superpose as sp

        def helper(x):
            return x + 1

        @sp.function
        def inc(x):
            return helper(x)
        """,
    )
    first = _digest(notebook.inc, client)
    assert _digest(notebook.inc, client) == first
    _cell(notebook, "def helper(x):\n    return x + 2\n")
    assert _digest(notebook.inc, client) != first
    assert notebook.inc.remote(1) == 3
    _cell(notebook, "@sp.function\ndef inc(x):\n    return x * 100\n")
    assert notebook.inc.remote(1) == 100


def test_a_function_that_cannot_be_pickled_is_refused_naming_it_and_the_value(
    client: sp.Client, notebook: types.ModuleType
) -> None:
    _cell(
        notebook,
        """
        import threading
        import superpose as sp

        lock = threading.Lock()

        @sp.function
        def guarded(x):
            with lock:
                return x

        @sp.function
        def outer(x):
            return guarded.remote(x)

        def make(items):
            @sp.function
            def pulls():
                return next(items)
            return pulls
        """,
    )
    with pytest.raises(sp.SerializationError) as caught:
        notebook.guarded.remote(1)
    message = str(caught.value)
    assert message.startswith("cannot send guarded by value")
    assert "guarded uses the global 'lock', a _thread.lock (TypeError: cannot pickle" in message

    with pytest.raises(sp.UserError, match="outer uses the global 'guarded', and guarded uses"):
        notebook.outer.remote(1)

    with pytest.raises(sp.SerializationError) as caught:
        notebook.make(i for i in range(3)).remote()
    assert "pulls uses the variable 'items' it closes over, a generator" in str(caught.value)


def test_a_refused_function_is_packed_again_once_fixed(
    client: sp.Client, notebook: types.ModuleType
) -> None:
    _cell(
        notebook,
        """
        import threading
        import superpose as sp

        lock = threading.Lock()

        @sp.function
        def guarded(x):
            with lock:
                return x
        """,
    )
    with pytest.raises(sp.UserError):
        notebook.guarded.remote(1)
    _cell(notebook, "import contextlib\nlock = contextlib.nullcontext()\n")
    assert notebook.guarded.remote(7) == 7
