"""Functions the durability tests run: they count their own executions in files,
so a test can tell how many times each invocation really ran."""

from __future__ import annotations

import os
import time

import superpose as sp


class Flaky(Exception):
    pass


class NotRetried(Exception):
    pass


def _note(directory: str, key: str) -> None:
    """One line per execution; O_APPEND writes of one short line do not interleave."""
    fd = os.open(os.path.join(directory, f"{key}.runs"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def runs(directory: str, key: str) -> int:
    path = os.path.join(directory, f"{key}.runs")
    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        return len(handle.read().splitlines())


@sp.function
def counted(directory: str, key: str, seconds: float = 0.0) -> str:
    _note(directory, key)
    if seconds:
        time.sleep(seconds)
    return key


@sp.function
def flaky(directory: str, key: str, failures: int) -> int:
    """Raises Flaky on its first ``failures`` runs, then returns the run count."""
    _note(directory, key)
    count = runs(directory, key)
    if count <= failures:
        raise Flaky(f"run {count} of {key} failed on purpose")
    return count


@sp.function
def raises_unlisted(directory: str, key: str) -> None:
    _note(directory, key)
    raise NotRetried("not in retry_on: no second run")


@sp.function
def poison_raise(directory: str, key: str) -> None:
    _note(directory, key)
    raise ValueError(f"poison {key}")


@sp.function
def poison_crash(directory: str, key: str) -> None:
    _note(directory, key)
    os._exit(7)


@sp.function
def hang_first(directory: str, index: int, slow: int, seconds: float) -> int:
    """Item ``slow`` hangs on its first run only (the straggler); every other is quick."""
    if index == slow:
        _note(directory, f"slow{index}")
        if runs(directory, f"slow{index}") == 1:
            time.sleep(seconds)
    return index


@sp.function
def noop(x: int) -> int:
    return x


@sp.function
def sleep_noted(directory: str, key: str, seconds: float) -> str:
    """Notes that it started (with its pid), then sleeps: a running invocation to cancel."""
    _note(directory, key)
    time.sleep(seconds)
    _note(directory, f"{key}.finished")
    return key


@sp.function
def counted_done(directory: str, key: str, seconds: float) -> str:
    """Notes its start and, separately, its completion: a kill between the two is visible."""
    _note(directory, key)
    time.sleep(seconds)
    _note(directory, f"{key}.done")
    return key
