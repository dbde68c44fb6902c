"""``superpose tenant create|ls`` beside a running ``superpose up``: applied without a
restart, and kept by the next ``up``."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import superpose_cli
from superpose.local.embedded import free_port


def test_tenant_create_applies_to_the_running_lattice_and_up_keeps_it(tmp_path: Path) -> None:
    home, empty = tmp_path / "home", tmp_path / "empty"
    home.mkdir()
    empty.mkdir()
    none_yet = superpose_cli("tenant", "create", "t1", home=empty)
    assert none_yet.returncode == 1
    assert "holds no lattice" in none_yet.stderr and "Traceback" not in none_yet.stderr

    def up() -> None:
        started = superpose_cli(
            *("up", "--detach", "--workers", "0", "--gateway-port", str(free_port())), home=home
        )
        assert started.returncode == 0, started.stderr

    up()
    try:
        status = superpose_cli("status", "--json", home=home, check=True)  # before tenants
        assert json.loads(status.stdout)["apps"] == []
        created = superpose_cli("tenant", "create", "t1", home=home)
        assert created.returncode == 0, created.stderr
        assert "tenant t1 created (account A" in created.stdout
        assert "accepts it now" in created.stdout
        assert superpose_cli("status", "--tenant", "t1", home=home).returncode == 0
        again = superpose_cli("tenant", "create", "t1", home=home)
        assert again.returncode == 1
        assert f"error: a tenant named 't1' already exists in {home}" in again.stderr
        bad = superpose_cli("tenant", "create", "Bad.Name", home=home)
        assert bad.returncode == 1 and "is not a tenant name" in bad.stderr
        listed = superpose_cli("tenant", "ls", home=home, check=True)
        assert listed.stdout.startswith("t1 ")
        assert str(home / "creds" / "t1") in listed.stdout
        # The lattice's own account is untouched: the CLI beside it needs no flag.
        assert superpose_cli("status", home=home).returncode == 0
    finally:
        superpose_cli("down", home=home, check=True)
    up()  # a restarted lattice accepts every tenant of its state folder
    try:
        after = superpose_cli("status", "--tenant", "t1", home=home)
        assert after.returncode == 0, after.stderr
    finally:
        superpose_cli("down", home=home, check=True)
