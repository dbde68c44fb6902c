"""Bundles: canonical digests, discovery from source, deploy-time refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from superpose.code import bundle as bundles
from superpose.code.discover import discover
from superpose.errors import DeployError


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_digest_depends_on_content_and_paths_not_on_order_or_location(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", {"x.py": "X = 1\n", "pkg/y.py": "Y = 2\n"})
    b = _write(tmp_path / "b", {"pkg/y.py": "Y = 2\n", "x.py": "X = 1\n"})
    assert bundles.from_folder(a).digest == bundles.from_folder(b).digest
    (b / "x.py").write_text("X = 3\n")
    assert bundles.from_folder(a).digest != bundles.from_folder(b).digest
    renamed = _write(tmp_path / "c", {"z.py": "X = 1\n", "pkg/y.py": "Y = 2\n"})
    assert bundles.from_folder(a).digest != bundles.from_folder(renamed).digest


def test_digest_is_the_sha256_of_the_canonical_listing(tmp_path: Path) -> None:
    root = _write(tmp_path, {"b.py": "B\n", "a.py": "A\n"})
    bundle = bundles.from_folder(root)
    listing = "".join(f"{bundles.sha256_hex(bundle.files[p])}  {p}\n" for p in sorted(bundle.files))
    assert bundle.digest == bundles.sha256_hex(listing.encode())
    assert bundles.digest_of_listing(bundles.parse_manifest(bundle.manifest())) == bundle.digest


def test_caches_vcs_and_virtualenvs_are_left_out(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "app.py": "",
            "__pycache__/app.cpython-311.pyc": "",
            ".git/HEAD": "",
            ".venv/lib/x.py": "",
            "data/table.csv": "a,b\n",
        },
    )
    assert sorted(bundles.from_folder(root).files) == ["app.py", "data/table.csv"]


def test_module_names_follow_the_folder_layout() -> None:
    assert bundles.module_name("app.py") == "app"
    assert bundles.module_name("pkg/mod.py") == "pkg.mod"
    assert bundles.module_name("pkg/__init__.py") == "pkg"


def test_discover_finds_decorated_top_level_functions_in_every_spelling(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "one.py": (
                "import superpose as sp\n"
                "@sp.function\ndef a(): ...\n"
                "@sp.function(timeout=5, retries=2)\nasync def b(x, /, y, *rest, z): ...\n"
                "def plain(): ...\n"
            ),
            "two.py": (
                "from superpose import function\n"
                "@function\ndef c(): ...\n"
                "import superpose\n@superpose.function(memory=256)\ndef d(): ...\n"
            ),
        },
    )
    found = discover(bundles.from_folder(root))
    assert sorted(found) == ["a", "b", "c", "d"]
    assert found["b"].is_async and found["b"].options == {"timeout": 5, "retries": 2}
    assert found["b"].params == ["x", "y"]  # what a positional argument can fill
    assert found["a"].params == []
    assert found["d"].module == "two" and found["d"].options == {"memory": 256}


def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    root = _write(tmp_path, {"ok.py": "X = 1\n", "pkg/bad.py": "x = 1\n\ndef broken(:\n"})
    with pytest.raises(DeployError, match=r"pkg/bad\.py:3: syntax error"):
        discover(bundles.from_folder(root))


def test_two_functions_with_one_name_are_refused_naming_both_files(tmp_path: Path) -> None:
    source = "import superpose as sp\n@sp.function\ndef dup(): ...\n"
    root = _write(tmp_path, {"a.py": source, "b.py": source})
    with pytest.raises(DeployError, match=r"a\.py:3 and b\.py:3"):
        discover(bundles.from_folder(root))
