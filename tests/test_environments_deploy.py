"""Declaring packages and resolving them at deploy (or at a script's first call): where they
are declared, what is recorded, versions as code + environment, what users see, and every
bad input. Against the session's lattice, with uv and a local wheelhouse (never the
registry, except the one test that says so and skips without it)."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import superpose as sp
import wheelhouse
from conftest import Lattice, poll, superpose_cli
from superpose import protocol
from superpose.client.deploy import Deployed, deploy
from superpose.client.resolving import lattice_platform
from superpose.code import environments, requirements
from superpose.errors import BadRequestError, DeployError
from superpose.registry.mirror import Registry
from test_cli import unique, write_app

APP = """
import superpose as sp


@sp.function
def answer() -> str:
    return "{tag}"
"""
SHORT = re.compile(r"environment ([0-9a-f]{12})")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wheelhouse.build(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def local_index(wheels: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """uv reads its index from these (this process and the CLI it starts inherit them)."""
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    return wheels


def app_folder(tmp_path: Path, files: dict[str, str], prefix: str = "envapp") -> Path:
    name = unique(prefix)
    return write_app(tmp_path / name, {"main.py": APP.format(tag=name), **files})


def cli_deploy(lattice: Lattice, folder: Path) -> subprocess.CompletedProcess[str]:
    return superpose_cli("deploy", str(folder), url=lattice.url)


def api_deploy(client: sp.Client, folder: Path, lines: list[str] | None = None) -> Deployed:
    told = lines if lines is not None else []
    return client.run(deploy(client, folder, progress=told.append))


def registry_of(client: sp.Client) -> Registry:
    return client.run(client.registry())


def deployed_env(client: sp.Client, app: str) -> protocol.Environment:
    """The environment ``latest`` of ``app`` runs with, as the registry recorded it."""
    registry = registry_of(client)
    version = registry.version(app, None)
    return poll(lambda: registry.environments.get(version.env), f"env record of {app}")


def nothing_registered(client: sp.Client, app: str) -> bool:
    registry = registry_of(client)
    return app not in registry.versions and app not in registry.aliases


# --- where packages are declared -------------------------------------------------------------


def test_requirements_txt_is_resolved_at_deploy_and_the_version_names_the_environment(
    lattice: Lattice, client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    folder = app_folder(tmp_path, {"requirements.txt": "tinytwo>=2  # the newest\n"})
    proc = cli_deploy(lattice, folder)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "packages: from requirements.txt" in out
    python, platform = environments.this_python(), environments.this_platform()
    assert f"resolving 1 requirement for Python {python} on {platform} …" in out
    assert "2 packages (tinyone 2.0, tinytwo 2.0)" in out
    short = SHORT.search(out)
    assert short, out
    env = deployed_env(client, folder.name)
    assert env.digest.startswith(short.group(1))
    assert env.packages == {"tinyone": "2.0", "tinytwo": "2.0"}
    assert env.declared == ["tinytwo>=2"]
    version = registry_of(client).version(folder.name, None)
    assert version.env == env.digest
    assert version.id == protocol.version_id(version.digest, env.digest) != version.digest
    assert out.strip().splitlines()[-1] == version.id  # the full version id, last
    target = client.resolve(folder.name, "answer")
    assert (target.digest, target.env, target.version) == (version.digest, env.digest, version.id)
    assert client.function(f"{folder.name}.answer").remote() == folder.name


def test_requirements_txt_follows_r_includes_inside_the_folder(
    client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    folder = app_folder(
        tmp_path,
        {
            "requirements.txt": "-r reqs/base.txt\ntinytwo==1.0 \\\n    --hash=sha256:abc\n",
            "reqs/base.txt": "--requirement=pins.txt\n",
            "reqs/pins.txt": "tinyone==1.0\n",
        },
    )
    done = api_deploy(client, folder)
    assert done.env is not None and done.env.declared == ["tinyone==1.0", "tinytwo==1.0"]
    assert done.env.packages == {"tinyone": "1.0", "tinytwo": "1.0"}


def test_pyproject_dependencies_are_read_when_there_is_no_requirements_txt(
    client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    pyproject = """
        [project]
        name = "shop"
        version = "1"
        requires-python = ">=3.11"
        dependencies = ["tinyone==1.0"]
    """
    lines: list[str] = []
    folder = app_folder(tmp_path, {"pyproject.toml": pyproject})
    done = api_deploy(client, folder, lines)
    assert "packages: from pyproject.toml" in lines
    assert done.env is not None and done.env.packages == {"tinyone": "1.0"}


def test_a_uv_lock_is_exported_when_it_is_the_only_declaration(
    client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    project = write_app(
        tmp_path / "locked",
        {"pyproject.toml": '[project]\nname = "locked"\nversion = "1"\ndependencies = ["tinytwo"]'},
    )
    subprocess.run(
        [environments.uv_binary(), "lock", "--quiet"], cwd=project, check=True, timeout=60
    )
    folder = app_folder(tmp_path, {})
    shutil.copy(project / "uv.lock", folder / "uv.lock")
    lines: list[str] = []
    done = api_deploy(client, folder, lines)
    assert "packages: from uv.lock" in lines
    assert done.env is not None and done.env.packages == {"tinyone": "2.0", "tinytwo": "2.0"}


def test_the_first_declaration_found_wins_and_deploy_says_which(
    client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    folder = app_folder(
        tmp_path,
        {
            "requirements.txt": "tinyone==1.0\n",
            "pyproject.toml": '[project]\nname = "x"\nversion = "1"\ndependencies = ["tinytwo"]\n',
        },
    )
    lines: list[str] = []
    done = api_deploy(client, folder, lines)
    assert "packages: from requirements.txt (pyproject.toml also there, not read)" in lines
    assert done.env is not None and done.env.packages == {"tinyone": "1.0"}


def test_a_folder_without_packages_deploys_as_before(client: sp.Client, tmp_path: Path) -> None:
    done = api_deploy(client, app_folder(tmp_path, {}))
    assert done.env is None and done.version == done.code
    assert registry_of(client).version(done.app, None).env == ""


def test_pip_of_a_deployed_functions_adds_to_the_folders_declaration(
    client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    source = """
        import superpose as sp

        @sp.function(pip=["tinytwo==1.0"])
        def f() -> int:
            return 1
    """
    folder = app_folder(tmp_path, {"extra.py": source, "requirements.txt": "tinyone==1.0\n"})
    lines: list[str] = []
    done = api_deploy(client, folder, lines)
    assert "packages: from requirements.txt and pip=" in lines
    assert done.env is not None and done.env.declared == ["tinyone==1.0", "tinytwo==1.0"]


# --- versions are code + environment ----------------------------------------------------------


@pytest.fixture
def two_envs(
    lattice: Lattice,
    client: sp.Client,
    tmp_path: Path,
    wheels: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, Deployed, Deployed]]:
    """One folder deployed twice with unchanged code: ``tinyone`` resolved to 1.0 from an
    index that has only 1.0, then to 2.0 once the index has 2.0 (a new upstream release)."""
    old_index = tmp_path / "old-index"
    old_index.mkdir()
    shutil.copy(wheels / "tinyone-1.0-py3-none-any.whl", old_index)
    monkeypatch.setenv("UV_NO_INDEX", "1")
    folder = app_folder(tmp_path, {"requirements.txt": "tinyone\n"}, "pins")
    monkeypatch.setenv("UV_FIND_LINKS", str(old_index))
    first = api_deploy(client, folder)
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    second = api_deploy(client, folder)
    yield folder.name, first, second


def test_one_changed_pin_is_a_second_live_version_routable_by_canary(
    lattice: Lattice, client: sp.Client, two_envs: tuple[str, Deployed, Deployed]
) -> None:
    app, first, second = two_envs
    assert first.code == second.code  # the same code
    assert first.env is not None and second.env is not None
    assert first.env.packages == {"tinyone": "1.0"} and second.env.packages == {"tinyone": "2.0"}
    assert first.version != second.version
    registry = registry_of(client)
    assert set(registry.versions_of(app)) == {first.version, second.version}
    assert registry.aliases[app]["latest"] == second.version
    # both live: by version id, each call carries its own environment
    for done in (first, second):
        target = client.resolve(app, "answer", done.version[:12])
        assert target.env == done.env.digest  # type: ignore[union-attr]
        assert client.function(f"{app}.answer@{done.version[:12]}").remote() == app
    # a canary sends half the sessions to the first, by version id
    superpose_cli("canary", app, first.version[:12], "--percent", "50", url=lattice.url, check=True)
    poll(lambda: registry.canaries.get(app), "the canary reaching the mirror")
    seen = set()
    for n in range(64):
        ctx = protocol.CallContext(session=f"user-{n}")
        seen.add(client.resolve(app, "answer", None, ctx).env)
    assert seen == {first.env.digest, second.env.digest}
    handle = client.function(f"{app}.answer")
    for n in range(8):
        assert handle.with_options(session=f"user-{n}").remote() == app

    def served_both() -> bool:
        shown = json.loads(superpose_cli("canary", app, "--json", url=lattice.url).stdout)
        return set(shown["traffic"]) == {first.version, second.version}

    poll(served_both, "nodes counting calls per version id")


def test_versions_show_code_and_environment_and_the_packages_that_changed(
    lattice: Lattice, two_envs: tuple[str, Deployed, Deployed]
) -> None:
    app, first, second = two_envs
    out = superpose_cli("versions", app, url=lattice.url, check=True).stdout
    assert f"code {first.code[:12]}" in out
    assert f"env {first.env.digest[:12]}" in out  # type: ignore[union-attr]
    assert f"env {second.env.digest[:12]}" in out  # type: ignore[union-attr]
    assert "packages: tinyone 1.0 → 2.0" in out
    rows = json.loads(superpose_cli("versions", app, "--json", url=lattice.url).stdout)
    newest = rows["versions"][0]
    assert (newest["version"], newest["code"]) == (second.version, second.code)
    assert newest["packages"] == ["tinyone 1.0 → 2.0"] and rows["versions"][1]["packages"] is None


def test_lock_show_lists_the_packages_beside_the_app_links(
    lattice: Lattice, two_envs: tuple[str, Deployed, Deployed]
) -> None:
    app, _, second = two_envs
    shown = json.loads(superpose_cli("lock", app, "--show", url=lattice.url, check=True).stdout)
    assert shown["locked"] == {} and shown["default"] == "latest"
    assert shown["env"] == second.env.digest  # type: ignore[union-attr]
    assert shown["packages"] == {"tinyone": "2.0"}


def test_env_ls_lists_each_environment_with_its_packages_and_users(
    lattice: Lattice, two_envs: tuple[str, Deployed, Deployed]
) -> None:
    app, first, second = two_envs
    out = superpose_cli("env", "ls", url=lattice.url, check=True).stdout
    for done in (first, second):
        assert done.env is not None
        assert f"{done.env.digest[:12]}  Python {done.env.python} on {done.env.platform}" in out
        assert f"{app}@{done.version[:12]}" in out
    assert "1 package: tinyone 1.0" in out and "1 package: tinyone 2.0" in out
    listed = json.loads(superpose_cli("env", "ls", "--json", url=lattice.url, check=True).stdout)
    row = next(r for r in listed if r["digest"] == second.env.digest)  # type: ignore[union-attr]
    assert f"{app}@{second.version[:12]}" in row["used_by"]
    assert row["packages"] == {"tinyone": "2.0"} and row["declared"] == ["tinyone"]
    assert isinstance(row["built_on"], list)


# --- script mode -------------------------------------------------------------------------


def script_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> Any:
    name = unique("pipscript")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)
    return module


def test_pip_in_script_mode_resolves_at_the_first_call_and_reaches_the_invocation(
    client: sp.Client, tmp_path: Path, local_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = script_module(
        tmp_path,
        monkeypatch,
        """
        import superpose as sp
        from superpose import runtime

        @sp.function(pip=["tinytwo==1.0"])
        def env_of_call() -> str:
            return runtime.current_invocation.get().env

        @sp.function(pip="tinyone")
        def other() -> int:
            return 2
        """,
    )
    target = module.env_of_call._target(client)
    env = registry_of(client).environments[target.env]
    assert env.declared == ["tinyone", "tinytwo==1.0"]  # the union of the script's pip=
    assert env.packages == {"tinyone": "2.0", "tinytwo": "1.0"}
    assert module.other._target(client).env == target.env  # one environment per script
    assert module.env_of_call.remote() == target.env  # Invocation.env, as the node got it
    assert module.env_of_call.spawn().result() == target.env  # durable calls carry it too


def test_an_unresolvable_pip_fails_the_first_call_naming_the_package(
    client: sp.Client, tmp_path: Path, local_index: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = script_module(
        tmp_path,
        monkeypatch,
        """
        import superpose as sp

        @sp.function(pip=["nosuchpackage_xyz>=1"])
        def f() -> int:
            return 1
        """,
    )
    with pytest.raises(DeployError, match=r"nosuchpackage[-_]xyz"):
        module.f.remote()


@pytest.mark.parametrize(
    ("pip", "named"),
    [
        (["../lib"], "local path or URL"),
        (["git+https://example.com/x.git"], "local path or URL"),
        (["x @ https://example.com/x-1.0-py3-none-any.whl"], "local path or URL"),
        (["-e ."], "editable"),
        ([3], "pip= takes requirements"),
        ([""], "pip= takes requirements"),
        (["numpy>>2"], "not a requirement"),
    ],
)
def test_a_bad_pip_is_refused_at_decoration(pip: list[Any], named: str) -> None:
    with pytest.raises(BadRequestError, match=named):
        sp.function(pip=pip)


# --- bad input at deploy -------------------------------------------------------------------


def refused_deploy(lattice: Lattice, client: sp.Client, folder: Path) -> str:
    proc = cli_deploy(lattice, folder)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert nothing_registered(client, folder.name)
    return proc.stderr


@pytest.mark.parametrize(
    ("declared", "named"),
    [
        ("nosuchpackage_xyz\n", "nosuchpackage"),
        ("tinytwo==2.0\ntinyone==1.0\n", "tinyone"),  # conflicting pins
    ],
)
def test_an_unresolvable_requirement_fails_the_deploy_and_registers_nothing(
    lattice: Lattice,
    client: sp.Client,
    tmp_path: Path,
    local_index: Path,
    declared: str,
    named: str,
) -> None:
    folder = app_folder(tmp_path, {"requirements.txt": declared})
    error = refused_deploy(lattice, client, folder)
    assert "cannot resolve" in error and named in error


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("../lib", "local path or URL"),
        ("/abs/path/pkg", "local path or URL"),
        ("file:///tmp/x.whl", "local path or URL"),
        ("git+https://github.com/x/y.git", "local path or URL"),
        ("https://example.com/x-1.0-py3-none-any.whl", "local path or URL"),
        ("y @ file:///tmp/y", "local path or URL"),
        ("-e ./lib", "editable install"),
        ("--index-url https://mirror.example/simple", "UV_INDEX_URL"),
        ("-i https://mirror.example/simple", "UV_INDEX_URL"),
        ("--extra-index-url=https://mirror.example/simple", "UV_INDEX_URL"),
        ("-c constraints.txt", "constraints files are not supported"),
        ("-r ../outside.txt", "outside the app's folder"),
        ("-r missing.txt", "no such file"),
        ("-r requirements.txt", "includes itself"),
        ("--frobnicate", "not supported"),
    ],
)
def test_a_requirement_that_is_not_from_the_index_is_refused_with_a_reason(
    lattice: Lattice, client: sp.Client, tmp_path: Path, line: str, named: str
) -> None:
    folder = app_folder(tmp_path, {"requirements.txt": f"tinyone\n{line}\n"})
    error = refused_deploy(lattice, client, folder)
    assert "requirements.txt:2" in error and named in error


def test_requires_python_excluding_the_lattices_python_is_refused(
    lattice: Lattice, client: sp.Client, tmp_path: Path, local_index: Path
) -> None:
    pyproject = '[project]\nname = "x"\nversion = "1"\nrequires-python = ">=3.99"\n'
    folder = app_folder(tmp_path, {"pyproject.toml": pyproject})
    error = refused_deploy(lattice, client, folder)
    assert "requires Python >=3.99" in error and "nodes run one Python" in error


@pytest.mark.parametrize(
    ("pyproject", "named"),
    [
        ('[project]\nname = "x"\ndynamic = ["dependencies"]\n', "dynamic"),
        ('[project]\nname = "x"\ndependencies = "tinyone"\n', "must be a list"),
        ('[project]\nname = "x"\nrequires-python = "three"\n', "not a version specifier"),
        ("[project\n", "not valid TOML"),
    ],
)
def test_a_pyproject_that_cannot_be_read_is_refused(
    lattice: Lattice, client: sp.Client, tmp_path: Path, pyproject: str, named: str
) -> None:
    folder = app_folder(tmp_path, {"pyproject.toml": pyproject})
    assert named in refused_deploy(lattice, client, folder)


def test_a_bad_pip_in_a_deployed_file_is_refused_naming_the_file_and_line(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    source = """
        import superpose as sp

        @sp.function(pip=["../lib"])
        def f() -> int:
            return 1
    """
    folder = app_folder(tmp_path, {"extra.py": source})
    error = refused_deploy(lattice, client, folder)
    assert "extra.py:4: pip=" in error and "local path or URL" in error


def test_a_uv_lock_that_uv_cannot_read_is_refused(
    lattice: Lattice, client: sp.Client, tmp_path: Path
) -> None:
    folder = app_folder(tmp_path, {"uv.lock": "this is not a lock\n"})
    assert "cannot read uv.lock" in refused_deploy(lattice, client, folder)


# --- which Python and platform ------------------------------------------------------------


def node(node_id: str, python: str = "", platform: str = "") -> protocol.NodeInfo:
    return protocol.NodeInfo(
        id=node_id, host="h", pid=1, labels={}, slots=1, python=python, platform=platform
    )


def test_environments_are_resolved_for_what_most_nodes_run_and_deploy_says_so() -> None:
    linux = "x86_64-manylinux_2_28"
    nodes = [node("a", "3.12", linux), node("b", "3.11", linux), node("c", "3.12", linux)]
    chosen = lattice_platform(nodes)
    assert (chosen.python, chosen.platform) == ("3.12", linux)
    assert chosen.note is not None and "2 of 3" in chosen.note and "3.11" in chosen.note
    one = lattice_platform([node("a", "3.11", linux), node("b", "3.11", linux)])
    assert (one.python, one.platform, one.note) == ("3.11", linux, None)
    unknown = lattice_platform([node("a")])
    assert unknown.python == environments.this_python()
    assert unknown.note is not None and "no live node reports" in unknown.note


def test_requires_python_is_matched_on_the_minor_version() -> None:
    declared = requirements.Declaration("pyproject.toml", (), ">=3.11.4,<3.13")
    requirements.check_python(declared, "3.11")
    requirements.check_python(declared, "3.12")
    with pytest.raises(DeployError, match=r"nodes run Python 3\.13"):
        requirements.check_python(declared, "3.13")


# --- the real registry ----------------------------------------------------------------------


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/six/", timeout=3):
            return True
    except OSError:
        return False


def test_a_real_package_resolves_from_the_registry(
    client: sp.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _pypi_reachable():
        pytest.skip("pypi.org cannot be reached from here (probed with a 3 s timeout)")
    monkeypatch.delenv("UV_NO_INDEX", raising=False)
    monkeypatch.delenv("UV_FIND_LINKS", raising=False)
    done = api_deploy(client, app_folder(tmp_path, {"requirements.txt": "six\n"}))
    assert done.env is not None and "six" in done.env.packages
    assert "--hash=sha256:" in done.env.requirements


def test_an_environment_record_someone_else_wrote_is_written_again_by_the_next_deploy(
    client: sp.Client,
) -> None:
    """A deployer may write ``env.<digest>`` records (deploys resolve them), so one of
    another app could replace a record with one that does not hash to its digest; nodes
    refuse such a record, and the next deploy that resolves that environment repairs it
    instead of leaving it (records are otherwise create-only)."""
    requirements_text = f"# {unique('env')}\ntinyone==2.0\n"
    python, platform = "3.11", "manylinux_2_17_x86_64"
    digest = protocol.env_digest(requirements_text, python, platform)
    env = protocol.Environment(
        digest=digest,
        python=python,
        platform=platform,
        requirements=requirements_text,
        packages={"tinyone": "2.0"},
        declared=["tinyone"],
        created=1.0,
    )
    forged = msgspec.structs.replace(env, requirements="evil==6.6.6\n").as_json()

    async def run(written: bytes) -> bytes:
        registry = await client.registry()
        await registry.kv.put(protocol.env_key(digest), written)
        await registry.register_environment(env)
        return (await registry.kv.get(protocol.env_key(digest))).value or b""

    for written in (forged, b"not a record"):  # another environment's, and no record at all
        stored = asyncio.run_coroutine_threadsafe(run(written), client.loop).result(timeout=30)
        assert protocol.Environment.from_json(stored).requirements == requirements_text
