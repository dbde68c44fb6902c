"""Resolving requirements into an environment: its lock, packages and digest (uv, a local
wheelhouse: never the registry)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import wheelhouse
from superpose import protocol
from superpose.code import environments
from superpose.errors import DeployError


@pytest.fixture(scope="module")
def local_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = wheelhouse.build(tmp_path_factory.mktemp("wheels"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("UV_FIND_LINKS", str(folder))
        patch.setenv("UV_NO_INDEX", "1")
        yield folder


def test_requirements_resolve_into_exact_hashed_pins_and_a_digest(local_index: Path) -> None:
    python, platform = environments.this_python(), environments.this_platform()
    env = environments.resolve(["tinytwo>=2"], python, platform)
    assert env.packages == {"tinyone": "2.0", "tinytwo": "2.0"}
    assert "tinyone==2.0" in env.requirements and "--hash=sha256:" in env.requirements
    assert env.digest == protocol.env_digest(env.requirements, python, platform)
    assert env.declared == ["tinytwo>=2"]
    again = environments.resolve(["tinytwo>=2"], python, platform)
    assert again.digest == env.digest  # the same requirements: the same environment
    older = environments.resolve(["tinytwo==1.0", "tinyone==1.0"], python, platform)
    assert older.digest != env.digest and older.packages["tinyone"] == "1.0"


@pytest.mark.parametrize(
    ("declared", "named"),
    [
        (["nosuchpackage"], "nosuchpackage"),
        (["tinytwo==2.0", "tinyone==1.0"], "tinyone"),  # conflicting pins
    ],
)
def test_an_unresolvable_requirement_names_the_package(
    local_index: Path, declared: list[str], named: str
) -> None:
    with pytest.raises(DeployError, match="cannot resolve") as caught:
        environments.resolve(declared, environments.this_python(), environments.this_platform())
    assert named in str(caught.value)


def test_this_platform_is_one_uv_accepts() -> None:
    platform = environments.this_platform()
    assert platform.startswith(("x86_64-", "aarch64-"))


def test_a_package_with_no_wheel_for_the_platform_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheelhouse.wheel(
        folder, "maconly", "1.0", {"maconly/__init__.py": ""}, tag="py3-none-macosx_11_0_arm64"
    )
    monkeypatch.setenv("UV_FIND_LINKS", str(folder))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    with pytest.raises(DeployError, match="cannot resolve maconly") as caught:
        environments.resolve(["maconly"], environments.this_python(), "x86_64-manylinux_2_28")
    assert "maconly" in str(caught.value).split(":", 1)[1]
