"""A node's first executor is forked from the node before its event loop starts."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import fns
import superpose as sp
from conftest import Lattice, client_on, start_lattice, stop_lattice
from superpose import protocol
from superpose.node.fork import ForkedChild


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lattice]:
    handle = start_lattice(tmp_path_factory.mktemp("forked"), workers=1, gateway=False)
    yield handle
    stop_lattice(handle)


def _parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_the_first_executor_is_forked_and_fails_like_any_other(one_node: Lattice) -> None:
    with client_on(one_node):
        first = int(fns.whoami.remote())
        node = _parent_of(first)
        assert "superpose worker" in _command_line(node)
        # forked, not started as `python -m superpose.cli.executor`
        assert _command_line(first) == _command_line(node)

        with pytest.raises(sp.RemoteError) as info:
            fns.hard_exit.remote(3)
        assert info.value.kind == protocol.ERR_CRASHED
        assert "exited with code 3" in info.value.remote_message
        assert info.value.traceback == "last words before exit 3"  # through its own socket

        second = int(fns.whoami.remote())  # the node keeps serving, on a fresh executor
        assert second != first and _parent_of(second) == node
        assert "superpose.cli.executor" in _command_line(second)


def _forked(exit_code: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(exit_code)
    return pid


def test_a_forked_child_reports_its_exit_code_once_and_for_all() -> None:
    child = ForkedChild(_forked(3), output=None)
    assert asyncio.run(child.wait()) == 3
    assert child.returncode == 3  # kept: the pid is reaped and may be reused


def test_a_forked_child_reaped_elsewhere_counts_as_killed() -> None:
    pid = _forked(0)
    os.waitpid(pid, 0)  # someone else reaped it first
    child = ForkedChild(pid, output=None)
    assert child.returncode == -signal.SIGKILL
    child.kill()  # a no-op: its pid may already belong to another process
