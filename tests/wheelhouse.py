"""A local wheelhouse the tests build themselves: tiny pure-Python packages at versions
1.0 and 2.0, so environment tests never depend on the registry.

``tinyone`` at each version exposes ``VERSION``; ``tinytwo`` depends on ``tinyone``
(2.0 needs ``tinyone>=2``), so resolving pins a transitive dependency too.
``tinysolo`` (1.0 only) is declared by one test only (test_roles.py): an environment's
record is shared by digest, so a test declaring one another test declares would see
that test's record.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

PACKAGES: dict[str, dict[str, list[str]]] = {
    "tinyone": {"1.0": [], "2.0": []},
    "tinytwo": {"1.0": ["tinyone"], "2.0": ["tinyone>=2"]},
    "tinysolo": {"1.0": []},
}


def build(folder: Path) -> Path:
    """Every package and version as a wheel in ``folder`` (a find-links directory)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, versions in PACKAGES.items():
        for version, requires in versions.items():
            _wheel(folder, name, version, requires)
    return folder


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    return wheel(
        folder, name, version, {f"{name}/__init__.py": f'VERSION = "{version}"\n'}, requires
    )


def wheel(
    folder: Path,
    name: str,
    version: str,
    files: dict[str, str],
    requires: Sequence[str] = (),
    tag: str = "py3-none-any",
) -> Path:
    """One wheel of ``files`` (path in the wheel → text), pure Python unless ``tag`` says
    otherwise (a wheel for one platform only, say)."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = "".join(
        [
            "Metadata-Version: 2.1\n",
            f"Name: {name}\n",
            f"Version: {version}\n",
            *(f"Requires-Dist: {r}\n" for r in requires),
        ]
    )
    files = {
        **files,
        f"{dist_info}/METADATA": metadata,
        f"{dist_info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: superpose-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ),
    }
    record = [f"{path},{_hash(text.encode())},{len(text.encode())}" for path, text in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            info = zipfile.ZipInfo(member, date_time=(2026, 1, 1, 0, 0, 0))
            archive.writestr(info, text)
    return path


def _hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


BACKEND = """\
import os


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    name = "{name}-{version}.dist-info"
    os.makedirs(os.path.join(metadata_directory, name))
    with open(os.path.join(metadata_directory, name, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
    return name


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise SystemExit({error!r})
"""


def failing_sdist(folder: Path, name: str, version: str, error: str) -> Path:
    """An sdist that resolves (its metadata builds) but whose wheel build fails saying
    ``error``, as a C extension that does not compile would. Its in-tree build backend
    needs nothing from an index."""
    pyproject = (
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    backend = BACKEND.format(name=name, version=version, error=error)
    path = folder / f"{name}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as sdist:
        for member, text in {"pyproject.toml": pyproject, "backend.py": backend}.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size, info.mtime = len(data), 1767225600
            sdist.addfile(info, io.BytesIO(data))
    return path
