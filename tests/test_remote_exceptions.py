"""The exception a function raised is the exception its caller catches."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

import fns
import superpose as sp
from conftest import Lattice, lattice_env
from superpose import protocol
from superpose.client.futures import remote_error
from superpose.lattice.payload import MAX_EXCEPTION_BYTES, decode_exception, encode_exception


def test_a_user_exception_is_caught_by_its_own_class_with_its_attributes(
    client: sp.Client,
) -> None:
    with pytest.raises(fns.PaymentDeclined) as info:
        fns.pay.remote(402)
    error = info.value
    assert error.code == 402
    assert str(error) == "payment declined with code 402"
    assert isinstance(error, sp.RemoteError)  # `except sp.RemoteError` keeps working
    assert error.kind == protocol.ERR_RAISED and error.type == "fns.PaymentDeclined"
    assert "raise PaymentDeclined(code)" in error.traceback
    printed = "".join(traceback.format_exception(error))
    assert "--- remote traceback (node " in printed
    assert "raise PaymentDeclined(code)" in printed
    assert type(error).__name__ == "PaymentDeclined"


def test_durable_invocations_raise_the_same_class(client: sp.Client) -> None:
    future = fns.pay.spawn(409)
    with pytest.raises(fns.PaymentDeclined) as info:
        future.result(timeout=30)
    assert info.value.code == 409


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("key", KeyError),
        ("file", FileNotFoundError),
        ("json", json.JSONDecodeError),
        ("value", ValueError),
    ],
)
def test_built_in_exceptions_keep_their_class(
    client: sp.Client, kind: str, cls: type[Exception]
) -> None:
    with pytest.raises(cls) as info:
        fns.raise_builtin.remote(kind)
    assert isinstance(info.value, sp.RemoteError)
    if kind == "file":
        assert info.value.errno == 2 and "superpose-test" in str(info.value)
    if kind == "json":
        assert info.value.pos == 1


def test_a_class_that_cannot_be_rebuilt_here_is_a_remote_error(client: sp.Client) -> None:
    with pytest.raises(sp.RemoteError) as info:
        fns.raise_builtin.remote("local")
    assert type(info.value) is sp.RemoteError
    assert info.value.type.endswith("Unimportable")
    assert info.value.remote_message == "defined inside the function"


def test_an_exception_passes_up_a_chain_of_calls_with_both_tracebacks(
    client: sp.Client,
) -> None:
    with pytest.raises(fns.PaymentDeclined) as info:
        fns.pay_through.remote(451)
    error = info.value
    assert error.code == 451
    printed = "".join(traceback.format_exception(error))
    assert "pay.remote(code)" in printed  # the middle function's frame
    assert "raise PaymentDeclined(code)" in printed  # and the innermost one's


def test_a_rebuilt_exception_pickles_as_the_original_class(client: sp.Client) -> None:
    with pytest.raises(fns.PaymentDeclined) as info:
        fns.pay.remote(402)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is fns.PaymentDeclined and again.code == 402


SCRIPT = """\
import superpose as sp


class Declined(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"declined {code}")
        self.code = code


@sp.function
def pay(code: int) -> None:
    raise Declined(code)


if __name__ == "__main__":
    with sp.connect():
        try:
            pay.remote(402)
        except Declined as e:
            print("caught", e.code, isinstance(e, sp.RemoteError))
        try:
            pay.spawn(403).result()
        except Declined as e:
            print("caught", e.code)
"""


def test_a_script_catches_the_exception_class_it_defines(lattice: Lattice, tmp_path: Path) -> None:
    """A script's classes live in ``__main__`` here and under the file's name on nodes."""
    (tmp_path / "shop.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERPOSE_")}
    proc = subprocess.run(
        [sys.executable, "shop.py"],
        cwd=tmp_path,
        env={**env, **lattice_env(lattice.url)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["caught 402 True", "caught 403"]


class _HoldsALock(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def _as_caller_sees(exc: BaseException) -> sp.RemoteError:
    """What a caller raises for ``exc`` raised on a node, without the round trip."""
    info = protocol.ErrorInfo(
        protocol.ERR_RAISED, type(exc).__name__, str(exc), "tb", exception=encode_exception(exc)
    )
    return remote_error(info, "n1")


@pytest.mark.parametrize(
    "exc",
    [
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte"),
        OSError(13, "denied", "/etc/shadow"),
        SyntaxError("bad", ("f.py", 1, 2, "x y")),
        ExceptionGroup("two", [ValueError(1), KeyError(2)]),
    ],
)
def test_built_in_exceptions_with_fields_of_their_own_keep_them(exc: Exception) -> None:
    rebuilt = _as_caller_sees(exc)
    assert isinstance(rebuilt, type(exc)) and isinstance(rebuilt, sp.RemoteError)
    assert str(rebuilt) == str(exc)


class _ReduceRaises(Exception):
    def __reduce__(self) -> Any:
        raise RuntimeError("a broken __reduce__")


def test_what_cannot_travel_arrives_as_a_plain_remote_error() -> None:
    assert encode_exception(_HoldsALock()) == b""  # an attribute that cannot be pickled
    assert encode_exception(_ReduceRaises("x")) == b""  # the report still goes
    assert encode_exception(SystemExit(3)) == b""  # not an Exception: not the caller's
    assert encode_exception(ValueError("x" * (MAX_EXCEPTION_BYTES + 1))) == b""
    plain = _as_caller_sees(_HoldsALock())
    assert type(plain) is sp.RemoteError and plain.remote_message == "holds a lock"


def test_a_class_from_a_module_not_loaded_here_is_not_imported_to_rebuild_it() -> None:
    data = cloudpickle.dumps(("never_imported_module_x", "Boom", ("x",), {}))
    assert decode_exception(data) is None
    assert "never_imported_module_x" not in sys.modules
    assert decode_exception(b"not a pickle") is None
