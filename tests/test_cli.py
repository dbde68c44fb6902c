"""The `superpose` command against a real lattice: deploy, call, ls, status, logs, versions."""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import subprocess
import sys
import textwrap
import time
import uuid
from importlib import metadata
from pathlib import Path

import pytest

from conftest import ROOT, Lattice, lattice_env, poll, superpose_cli
from superpose.cli.main import installed_version

DIGEST = re.compile(r"^[0-9a-f]{64}$", re.MULTILINE)


def unique(prefix: str) -> str:
    """App names are global on the session's lattice: each test makes its own."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def write_app(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return folder


def deploy(lattice: Lattice, path: Path | str, *extra: str) -> str:
    """Deploy and return the full version digest the command printed."""
    proc = superpose_cli("deploy", str(path), *extra, url=lattice.url, check=True)
    found = DIGEST.findall(proc.stdout)
    assert found, proc.stdout
    return found[-1]


def app_names(lattice: Lattice) -> set[str]:
    proc = superpose_cli("ls", "--json", url=lattice.url, check=True)
    return {app["app"] for app in json.loads(proc.stdout)}


@pytest.fixture(scope="module")
def hello(lattice: Lattice) -> str:
    return deploy(lattice, ROOT / "examples" / "hello")


# --- the command itself -------------------------------------------------------------------


def test_version_prints_the_installed_version() -> None:
    proc = superpose_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"superpose {metadata.version('superpose')}\n"


def test_version_of_a_source_tree_never_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    assert "not installed" in installed_version()


# --- deploy -------------------------------------------------------------------------------


def test_deploy_folder_prints_the_version_id(lattice: Lattice, hello: str) -> None:
    proc = superpose_cli("deploy", "examples/hello", url=lattice.url, check=True)
    assert DIGEST.findall(proc.stdout) == [hello]  # same code, same id
    assert "hello.greet" in proc.stdout and "hello.shout" in proc.stdout


def test_deploy_app_whose_modules_import_each_other(lattice: Lattice) -> None:
    proc = superpose_cli("deploy", "examples/shop", url=lattice.url, check=True)
    assert DIGEST.search(proc.stdout)
    assert "shop.checkout" in proc.stdout and "shop.quote" in proc.stdout
    order = json.dumps([[{"sku": "apple", "qty": 2}, {"sku": "tea", "qty": 1}]])
    out = superpose_cli("call", "shop.checkout", order, url=lattice.url, check=True)
    assert json.loads(out.stdout)["total"] == 6.0
    # quote imports checkout lazily while checkout imports pricing at the top
    out = superpose_cli("call", "shop.quote", '["coffee", 2]', url=lattice.url, check=True)
    assert json.loads(out.stdout) == 17.4


def test_redeploying_unchanged_code_uploads_nothing(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("same")
    folder = write_app(
        tmp_path / name,
        {"mod.py": "import superpose as sp\n\n\n@sp.function\ndef one() -> int:\n    return 1\n"},
    )
    first = superpose_cli("deploy", str(folder), url=lattice.url, check=True)
    assert "1 uploaded" in first.stdout
    again = superpose_cli("deploy", str(folder), url=lattice.url, check=True)
    assert "0 uploaded" in again.stdout
    assert DIGEST.findall(first.stdout) == DIGEST.findall(again.stdout)


def test_deploy_single_file(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("single")
    path = tmp_path / f"{name}.py"
    path.write_text(
        "import superpose as sp\n\n\n@sp.function\ndef twice(x: int) -> int:\n    return 2 * x\n"
    )
    (tmp_path / "not_deployed.py").write_text("this is not python (\n")
    deploy(lattice, path)
    out = superpose_cli("call", f"{name}.twice", "[21]", url=lattice.url, check=True)
    assert json.loads(out.stdout) == 42


def test_deploy_refuses_syntax_error_naming_file_and_line(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("broken")
    folder = write_app(
        tmp_path / name,
        {
            "good.py": "import superpose as sp\n\n\n@sp.function\ndef ok() -> int:\n    return 1\n",
            "pkg/bad.py": "x = 1\n\ndef broken(:\n    pass\n",
        },
    )
    proc = superpose_cli("deploy", str(folder), url=lattice.url)
    assert proc.returncode == 1
    assert "pkg/bad.py:3" in proc.stderr
    assert "syntax error" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert name not in app_names(lattice)


def test_deploy_refuses_two_functions_with_one_name(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("dup")
    fn = "import superpose as sp\n\n\n@sp.function\ndef work() -> int:\n    return {}\n"
    folder = write_app(tmp_path / name, {"a.py": fn.format(1), "b.py": fn.format(2)})
    proc = superpose_cli("deploy", str(folder), url=lattice.url)
    assert proc.returncode == 1
    assert "'work'" in proc.stderr and "a.py" in proc.stderr and "b.py" in proc.stderr
    assert name not in app_names(lattice)


def test_deploy_refuses_a_folder_without_functions(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("empty")
    folder = write_app(tmp_path / name, {"plain.py": "def helper() -> int:\n    return 1\n"})
    proc = superpose_cli("deploy", str(folder), url=lattice.url)
    assert proc.returncode == 1
    assert "no @superpose.function" in proc.stderr
    assert name not in app_names(lattice)


def test_deploy_of_a_missing_path_is_refused(lattice: Lattice, tmp_path: Path) -> None:
    proc = superpose_cli("deploy", str(tmp_path / "nowhere"), url=lattice.url)
    assert proc.returncode == 1
    assert "nowhere does not exist" in proc.stderr


# --- call ---------------------------------------------------------------------------------


def test_call_prints_the_json_result(lattice: Lattice, hello: str) -> None:
    proc = superpose_cli("call", "hello.greet", '["x"]', url=lattice.url, check=True)
    assert json.loads(proc.stdout) == "Hello, x!"
    kwargs = superpose_cli("call", "hello.shout", "[]", '{"text": "hi"}', url=lattice.url)
    assert json.loads(kwargs.stdout) == "HI!"


def test_call_of_a_function_that_raises(lattice: Lattice) -> None:
    superpose_cli("deploy", "examples/shop", url=lattice.url, check=True)
    proc = superpose_cli("call", "shop.quote", '["durian", 1]', url=lattice.url)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "KeyError" in proc.stderr
    assert "unknown sku 'durian'" in proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "pricing.py" in proc.stderr  # the traceback reaches into the user's code


def test_call_of_a_function_that_crashes_prints_its_last_output(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("dies")
    source = (
        "import os\n\nimport superpose as sp\n\n\n@sp.function\ndef die() -> None:\n"
        "    print('about to exit')\n    os._exit(9)\n"
    )
    deploy(lattice, write_app(tmp_path / name, {"mod.py": source}))
    proc = superpose_cli("call", f"{name}.die", url=lattice.url)
    assert proc.returncode == 1
    assert "last output (node n" in proc.stderr and "about to exit" in proc.stderr
    assert "error: crashed: ExecutorCrashed: executor process exited with code 9" in proc.stderr


def test_call_unknown_app(lattice: Lattice) -> None:
    proc = superpose_cli("call", "no_such_app.greet", '["x"]', url=lattice.url)
    assert proc.returncode == 1
    assert "no_such_app" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_call_unknown_function(lattice: Lattice, hello: str) -> None:
    proc = superpose_cli("call", "hello.no_such_fn", '["x"]', url=lattice.url)
    assert proc.returncode == 1
    assert "no_such_fn" in proc.stderr
    assert "greet" in proc.stderr  # says what the app does have


def test_call_unknown_version(lattice: Lattice, hello: str) -> None:
    proc = superpose_cli("call", "hello.greet@ffffffffffff", '["x"]', url=lattice.url)
    assert proc.returncode == 1
    assert "ffffffffffff" in proc.stderr


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["[bad"], "not valid JSON"),
        (['{"name": "x"}'], "JSON array"),
        (["[]", "[1]"], "JSON object"),
    ],
)
def test_call_with_malformed_arguments(
    lattice: Lattice, hello: str, args: list[str], problem: str
) -> None:
    proc = superpose_cli("call", "hello.greet", *args, url=lattice.url)
    assert proc.returncode == 1
    assert problem in proc.stderr
    assert "Traceback" not in proc.stderr


def test_call_with_a_bad_name(lattice: Lattice) -> None:
    proc = superpose_cli("call", "nodot", url=lattice.url)
    assert proc.returncode == 1
    assert "APP.FN" in proc.stderr


def test_commands_without_a_lattice_say_how_to_start_one(tmp_path: Path) -> None:
    proc = superpose_cli("ls", home=tmp_path)
    assert proc.returncode == 1
    assert "superpose up" in proc.stderr


def _unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_lattice_url_nothing_answers_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{_unused_port()}"
    started = time.monotonic()
    proc = superpose_cli("call", "hello.greet", "[]", url=url, home=tmp_path, timeout=40)
    assert proc.returncode == 1
    assert f"cannot reach the lattice at {url}" in proc.stderr
    assert time.monotonic() - started < 30


def test_a_worker_that_cannot_reach_its_lattice_exits_and_leaves_no_executor(
    tmp_path: Path,
) -> None:
    url = f"nats://127.0.0.1:{_unused_port()}"
    proc = superpose_cli("worker", "--lattice", url, home=tmp_path, timeout=40)
    assert proc.returncode == 1
    assert f"cannot reach the lattice at {url}" in proc.stderr
    # its spare executor (forked from it, so with its command line) must not outlive it
    assert not [cmd for cmd in _command_lines() if url in cmd]


def _command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:  # gone meanwhile
                continue
    return lines


# --- ls, status, logs ------------------------------------------------------------------


def test_ls_lists_apps_and_versions(lattice: Lattice, hello: str) -> None:
    proc = superpose_cli("ls", url=lattice.url, check=True)
    assert "hello" in proc.stdout and hello[:12] in proc.stdout and "greet" in proc.stdout
    apps = {a["app"]: a for a in json.loads(superpose_cli("ls", "--json", url=lattice.url).stdout)}
    assert apps["hello"]["aliases"]["latest"] == hello
    assert any(
        v["version"] == hello and "greet" in v["functions"] for v in apps["hello"]["versions"]
    )


def test_status_json_shows_nodes_and_apps(lattice: Lattice, hello: str) -> None:
    superpose_cli("call", "hello.greet", '["warm"]', url=lattice.url, check=True)
    state = json.loads(superpose_cli("status", "--json", url=lattice.url, check=True).stdout)
    assert state["lattice"] == lattice.url
    assert len(state["nodes"]) >= 2
    for node in state["nodes"]:
        assert {"id", "host", "labels", "slots", "busy", "warm"} <= set(node)
        assert node["slots"] == 1
        assert isinstance(node["labels"], dict) and isinstance(node["warm"], list)
    assert "hello" in {app["app"] for app in state["apps"]}
    text = superpose_cli("status", url=lattice.url, check=True).stdout
    assert "node(s)" in text and "hello" in text


def test_status_eventually_shows_the_warm_bundle(lattice: Lattice, hello: str) -> None:
    superpose_cli("call", "hello.greet", '["warm"]', url=lattice.url, check=True)
    deadline = time.monotonic() + 30  # nodes refresh their entry every heartbeat
    while True:
        state = json.loads(superpose_cli("status", "--json", url=lattice.url).stdout)
        if any(hello in node["warm"] for node in state["nodes"]):
            return
        assert time.monotonic() < deadline, state["nodes"]


def test_logs_show_what_a_function_printed(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("chatty")
    folder = write_app(
        tmp_path / name,
        {
            "talk.py": """
        import sys

        import superpose as sp


        @sp.function
        def say(word: str) -> str:
            print(f"said {word}")
            print(f"complained {word}", file=sys.stderr)
            return word
        """
        },
    )
    deploy(lattice, folder)
    word = uuid.uuid4().hex[:8]
    superpose_cli("call", f"{name}.say", json.dumps([word]), url=lattice.url, check=True)
    deadline = time.monotonic() + 30
    while True:
        proc = superpose_cli("logs", name, url=lattice.url, check=True)
        if f"said {word}" in proc.stdout and f"complained {word}" in proc.stdout:
            break
        assert time.monotonic() < deadline, proc.stdout
    assert "[say@" in proc.stdout
    only_fn = superpose_cli("logs", f"{name}.say", url=lattice.url, check=True)
    assert f"said {word}" in only_fn.stdout
    other = superpose_cli("logs", f"{name}.other", url=lattice.url)
    assert other.returncode == 1 and other.stdout == ""
    assert f"no version of {name} has a function 'other'; it has: say" in other.stderr


def test_logs_show_the_traceback_of_a_function_that_raised(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("raises")
    folder = write_app(
        tmp_path / name,
        {
            "checkout.py": """
        import superpose as sp


        def charge(amount: int) -> None:
            raise ValueError(f"declined: {amount}")


        @sp.function
        def pay(amount: int) -> None:
            print(f"paying {amount}")
            charge(amount)


        @sp.function
        async def refund(amount: int) -> None:
            raise LookupError()
        """
        },
    )
    deploy(lattice, folder)
    assert superpose_cli("call", f"{name}.pay", "[7]", url=lattice.url).returncode == 1
    assert superpose_cli("call", f"{name}.refund", "[7]", url=lattice.url).returncode == 1

    def shown() -> str | None:
        out = superpose_cli("logs", name, url=lattice.url, check=True).stdout
        return out if out.count("✗") == 2 else None

    lines = poll(shown, "both errors in the app's log").splitlines()
    (paid,) = [i for i, line in enumerate(lines) if "paying 7" in line]
    (raised,) = [i for i, line in enumerate(lines) if "✗ ValueError: declined: 7" in line]
    assert paid < raised and "[pay@n" in lines[raised] and "(invocation " in lines[raised]
    trace = list(itertools.takewhile(lambda line: line.startswith("    "), lines[raised + 1 :]))
    assert trace[0] == "    Traceback (most recent call last):"
    assert trace[-1] == "    ValueError: declined: 7"
    assert any('checkout.py", line 5, in charge' in line for line in trace)
    (refused,) = [line for line in lines if "✗ LookupError  (invocation " in line]
    assert "[refund@n" in refused
    only_pay = superpose_cli("logs", f"{name}.pay", url=lattice.url, check=True).stdout
    assert "✗ ValueError" in only_pay and "LookupError" not in only_pay


def test_logs_rejects_a_bad_target(lattice: Lattice) -> None:
    proc = superpose_cli("logs", "bad name!", url=lattice.url)
    assert proc.returncode == 1
    assert "APP or APP.FN" in proc.stderr


@pytest.mark.parametrize(
    "command",
    [
        ("logs", "APP"),
        ("logs", "APP.fn"),
        ("logs", "APP", "--follow"),
        ("failed", "--app", "APP"),
        ("versions", "APP"),
        ("alias", "APP"),
        ("alias", "APP", "stable", "latest"),
        ("promote", "APP", "latest"),
        ("rollback", "APP"),
        ("canary", "APP"),
        ("canary", "APP", "latest", "--percent", "10"),
        ("canary", "APP", "--off"),
        ("lock", "APP", "--show"),
        ("lock", "APP", "hello@latest"),
        ("unlock", "APP", "hello"),
        ("pin", "APP.fn", "n1"),
        ("unpin", "APP.fn"),
    ],
    ids=" ".join,
)
def test_every_command_taking_an_app_says_when_there_is_no_such_app(
    lattice: Lattice, hello: str, command: tuple[str, ...]
) -> None:
    app = unique("nosuchapp")
    proc = superpose_cli(*(word.replace("APP", app) for word in command), url=lattice.url)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr == f"error: no app named {app!r} is deployed (see `superpose ls`)\n"
    assert proc.stdout == ""


# --- versions ---------------------------------------------------------------------------


def test_two_versions_side_by_side_by_digest_prefix(lattice: Lattice, tmp_path: Path) -> None:
    """One app, one module, two deploys: both stay callable, each runs its own code."""
    name = unique("versions")
    source = """
        import os

        import superpose as sp
        from superpose import runtime


        @sp.function
        def which() -> list:
            node = runtime.current()
            return ["{tag}", node.node_id if node else "?", os.getpid()]
        """
    folder = tmp_path / name
    write_app(folder, {"mod.py": source.format(tag="v1")})
    v1 = deploy(lattice, folder)
    write_app(folder, {"mod.py": source.format(tag="v2")})
    v2 = deploy(lattice, folder)
    assert v1 != v2

    latest = superpose_cli("call", f"{name}.which", url=lattice.url, check=True)
    assert json.loads(latest.stdout)[0] == "v2"

    # Pinned to one node (warm affinity would otherwise keep each version where it
    # first ran): that node runs both versions side by side.
    node = json.loads(superpose_cli("status", "--json", url=lattice.url, check=True).stdout)[
        "nodes"
    ][0]["id"]
    superpose_cli("pin", f"{name}.which", node, url=lattice.url, check=True)
    seen: dict[str, tuple[str, int]] = {}  # tag -> (node, executor pid)
    try:
        for tag, digest in (("v1", v1), ("v2", v2)):
            proc = superpose_cli("call", f"{name}.which@{digest[:8]}", url=lattice.url, check=True)
            answered, ran_on, pid = json.loads(proc.stdout)
            assert answered == tag
            seen[tag] = (ran_on, pid)
    finally:
        superpose_cli("unpin", f"{name}.which", url=lattice.url, check=True)
    assert seen["v1"][0] == seen["v2"][0] == node
    assert seen["v1"][1] != seen["v2"][1]  # two executors, one per version

    listed = {
        a["app"]: a for a in json.loads(superpose_cli("ls", "--json", url=lattice.url).stdout)
    }
    assert {v["version"] for v in listed[name]["versions"]} == {v1, v2}
    assert listed[name]["aliases"]["latest"] == v2


def test_a_dependency_missing_on_nodes_is_the_users_error_not_a_missing_function(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("deps")
    write_app(
        tmp_path / name,
        {
            "needs.py": """
                import superpose as sp
                import not_installed_dependency_xyz

                @sp.function
                def run() -> int:
                    return 1
            """
        },
    )
    deploy(lattice, tmp_path / name)
    proc = superpose_cli("call", f"{name}.run", url=lattice.url)
    assert proc.returncode == 1
    assert "raised" in proc.stderr and "not_found" not in proc.stderr
    assert "No module named 'not_installed_dependency_xyz'" in proc.stderr
    assert "needs.py" in proc.stderr
    assert "superpose/node/executor" not in proc.stderr  # the traceback starts at the user's code


def test_a_module_that_calls_the_lattice_on_import_gets_a_clear_error(
    lattice: Lattice, tmp_path: Path
) -> None:
    name = unique("noguard")
    write_app(
        tmp_path / name,
        {
            "script.py": """
                import superpose as sp

                @sp.function
                def square(x: int) -> int:
                    return x * x

                print(square.remote(3))  # driver code without a __main__ guard
            """
        },
    )
    deploy(lattice, tmp_path / name)
    proc = superpose_cli("call", f"{name}.square", "[2]", url=lattice.url)
    assert proc.returncode == 1
    assert "importing script on a node made superpose calls" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr


def test_logs_follow_prints_new_lines_as_they_come(lattice: Lattice, tmp_path: Path) -> None:
    name = unique("follow")
    folder = write_app(
        tmp_path / name,
        {
            "echo.py": """
        import superpose as sp


        @sp.function
        def shout(word: str) -> str:
            print(f"heard {word}")
            return word
        """
        },
    )
    deploy(lattice, folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    follower = subprocess.Popen(
        [sys.executable, "-m", "superpose", "logs", name, "--follow"],
        env={**env, **lattice_env(lattice.url)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        word = uuid.uuid4().hex[:8]
        superpose_cli("call", f"{name}.shout", json.dumps([word]), url=lattice.url, check=True)
        assert follower.stdout is not None
        deadline = time.monotonic() + 30
        seen = ""
        while f"heard {word}" not in seen:
            assert time.monotonic() < deadline, seen
            ready, _, _ = select.select([follower.stdout], [], [], 0.5)
            if ready:
                seen += follower.stdout.readline()
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(timeout=10)


@pytest.mark.parametrize(
    ("command", "variable", "value", "wanted"),
    [
        (("status",), "SUPERPOSE_REPLICAS", "three", "a whole number from 1 to 5"),
        (("worker", "--slots", "1"), "SUPERPOSE_MAX_DELIVER", "0", "a whole number ≥ 1"),
    ],
)
def test_a_bad_setting_is_one_error_line(
    lattice: Lattice, command: tuple[str, ...], variable: str, value: str, wanted: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    proc = subprocess.run(
        [sys.executable, "-m", "superpose", *command],
        env={**env, **lattice_env(lattice.url), variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == f"error: {variable}={value!r}: expected {wanted}\n"
