"""Functions the tests run on the lattice (shipped to nodes in script mode)."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import subprocess
import time
from pathlib import Path

import superpose as sp


class Boom(Exception):
    pass


@sp.function
def square(x: int) -> int:
    return x * x


@sp.function
def add(a: int, b: int = 0) -> int:
    return a + b


@sp.function
def fail(message: str) -> None:
    raise Boom(message)


@sp.function(timeout=1)
def sleepy(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@sp.function
def hard_exit(code: int) -> None:
    print(f"last words before exit {code}")  # still in nats-py's buffer when it dies
    os._exit(code)


@sp.function
def exit_if(code: int) -> int:
    """Returns 0, or kills its process with ``code``: one function, warm first, then crash."""
    print(f"exit_if({code})")
    if code:
        os._exit(code)
    return 0


@sp.function(timeout=1)
async def stuck_loop(seconds: float) -> str:
    """Blocks its executor's event loop: a bug the node must survive."""
    time.sleep(seconds)
    return "unstuck"


@sp.function
def segfault() -> None:
    print("about to read address 0")
    ctypes.string_at(0)


@sp.function(memory=200)
def hog(mib: int) -> int:
    print(f"allocating {mib} MiB")
    blocks = [bytearray(1024 * 1024) for _ in range(mib)]
    time.sleep(1)
    return len(blocks)


@sp.function
def echo_size(data: bytes) -> int:
    return len(data)


@sp.function
def make_bytes(n: int) -> bytes:
    return b"\x07" * n


@sp.function
def identity(data: bytes) -> bytes:
    return data


@sp.function
async def async_make_bytes(n: int) -> bytes:
    return b"\x09" * n


@sp.function
def relay_size(n: int) -> int:
    """A nested call with a big argument and a big result: the executor offers one and
    pulls the other."""
    back = identity.remote(b"\x05" * n)
    assert back == b"\x05" * n
    return len(back)


@sp.function
def talk(word: str) -> str:
    print(f"hello {word}")
    print("to stderr", file=__import__("sys").stderr)
    logging.getLogger("fns").warning("logged %s", word)
    return word


@sp.function
def chatty(tag: str, lines: int) -> str:
    for i in range(lines):
        print(f"{tag} {i}")
    return tag


@sp.function
async def async_chatty(tag: str, lines: int) -> str:
    for i in range(lines):
        print(f"{tag} {i}")
    return tag


@sp.function
async def async_nap(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@sp.function
async def async_span(seconds: float) -> tuple[float, float]:
    start = time.time()
    await asyncio.sleep(seconds)
    return start, time.time()


@sp.function
def fib(n: int) -> int:
    if n < 2:
        return n
    a, b = fib.spawn(n - 1), fib.spawn(n - 2)
    return int(sum(sp.gather(a, b)))


@sp.function
def mergesort(xs: list[float], depth: int) -> list[float]:
    if depth == 0 or len(xs) <= 1:
        return sorted(xs)
    mid = len(xs) // 2
    left, right = mergesort.spawn(xs[:mid], depth - 1), mergesort.spawn(xs[mid:], depth - 1)
    a, b = sp.gather(left, right)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]


@sp.function
def whoami() -> str:
    return f"{os.getpid()}"


@sp.function
def hold_once(marker: str, seconds: float) -> str:
    """First attempt: note our pid, then hang; a retry finds the note and returns."""
    if os.path.exists(marker):
        return "retried"
    with open(marker + ".tmp", "w") as out:
        out.write(str(os.getpid()))
    os.rename(marker + ".tmp", marker)
    time.sleep(seconds)
    return "first"


@sp.function
def parent_of_crash() -> None:
    hard_exit.remote(4)


@sp.function
def write_to_fd(token: str) -> None:
    """Output at the fd level, as a C extension writes it, and through print."""
    os.write(1, f"raw {token}\n".encode())
    print(f"captured {token}")


@sp.function
def crash_leaving_a_child() -> None:
    """Its child inherits the executor's output pipe and outlives it."""
    child = subprocess.Popen(["sleep", "60"])
    print(f"child {child.pid}")
    os._exit(3)


class PaymentDeclined(Exception):
    """An exception whose ``__init__`` does not take its ``args``: rebuilt without it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"payment declined with code {code}")
        self.code = code


@sp.function
def pay(code: int) -> None:
    raise PaymentDeclined(code)


@sp.function
def raise_builtin(kind: str) -> None:
    if kind == "key":
        raise KeyError("missing")
    if kind == "file":
        Path("/nonexistent/superpose-test").read_text()
    if kind == "json":
        import json

        json.loads("{not json")
    if kind == "local":

        class Unimportable(Exception):
            pass

        raise Unimportable("defined inside the function")
    raise ValueError(f"bad {kind}")


@sp.function
def pay_through(code: int) -> None:
    """Calls ``pay`` and does not catch: the caller's caller sees PaymentDeclined."""
    pay.remote(code)


@sp.function
def fail_if_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"{x} is odd")
    return x


@sp.function
def after_file(path: str, value: int) -> int:
    """Returns ``value`` once ``path`` exists: orders calls without timing."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


@sp.function(schedule=sp.Period(seconds=1))
def scheduled_in_script(x: int = 1) -> int:
    """Script mode has no schedules: this only runs when called."""
    return x + 1


@sp.function
def returns_a_lock() -> object:
    import threading

    return threading.Lock()
