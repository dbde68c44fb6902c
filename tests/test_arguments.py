"""A call whose arguments do not fit, or cannot be sent, fails where it is made."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import fns
import superpose as sp
from conftest import Lattice, superpose_cli
from superpose.client.arguments import check_fits
from superpose.code import signatures
from superpose.errors import ArgumentError

# --- the signature check, against Python's own messages ------------------------------


def _plain(a, b=2, *, c, d=4): ...  # type: ignore[no-untyped-def]
def _posonly(a, b, /, c): ...  # type: ignore[no-untyped-def]
def _star(a, *args, **kwargs): ...  # type: ignore[no-untyped-def]
def _none(): ...  # type: ignore[no-untyped-def]
def _three(a, b, c): ...  # type: ignore[no-untyped-def]


CALLS: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = [
    (_plain, (), {"c": 1}),
    (_plain, (1, 2, 3), {"c": 1}),
    (_plain, (1,), {}),
    (_plain, (1,), {"c": 1, "e": 5}),
    (_plain, (1,), {"a": 1, "c": 1}),
    (_posonly, (1, 2), {}),
    (_posonly, (1,), {"b": 2, "c": 3}),
    (_star, (), {"x": 1}),
    (_none, (1,), {}),
    (_three, (), {}),
    (_three, (1,), {}),
]


@pytest.mark.parametrize(("fn", "args", "kwargs"), CALLS)
def test_a_call_that_does_not_fit_fails_as_python_says(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(TypeError) as python:
        fn(*args, **kwargs)
    signature = signatures.from_function(fn)
    assert signature is not None
    with pytest.raises(ArgumentError) as ours:
        check_fits(f"app.{fn.__name__}", signature, len(args), kwargs)
    assert str(ours.value) == "app." + str(python.value)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs"),
    [(_plain, (1,), {"c": 3}), (_posonly, (1, 2, 3), {}), (_star, (1, 2, 3), {"z": 1})],
)
def test_a_call_that_fits_passes(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    signature = signatures.from_function(fn)
    assert signature is not None
    check_fits("app.fn", signature, len(args), kwargs)


# --- script mode: the function is here ----------------------------------------------


def test_remote_spawn_and_map_refuse_arguments_that_do_not_fit(client: sp.Client) -> None:
    with pytest.raises(
        TypeError, match=r"^fns\.add\(\) missing 1 required positional argument: 'a'$"
    ):
        fns.add.remote()
    with pytest.raises(sp.UserError, match=r"unexpected keyword argument 'c'"):
        fns.add.spawn(1, c=2)  # raised by spawn itself: nothing was sent
    with pytest.raises(ArgumentError, match=r"takes from 1 to 2 positional arguments but 3"):
        list(fns.add.map([1], [2], [3]))


def test_map_with_return_exceptions_puts_an_item_that_cannot_be_sent_in_its_place(
    client: sp.Client,
) -> None:
    out = list(fns.square.map([1, threading.Lock(), 3], return_exceptions=True))
    assert out[0] == 1 and out[2] == 9
    assert isinstance(out[1], sp.SerializationError)
    assert all(
        isinstance(x, ArgumentError) for x in fns.add.map([1], [2], [3], return_exceptions=True)
    )


def test_an_argument_that_cannot_be_sent_is_named_with_its_type(client: sp.Client) -> None:
    lock = threading.Lock()
    with pytest.raises(sp.SerializationError) as caught:
        fns.identity.remote(lock)
    assert str(caught.value).startswith(
        "argument 'data' of fns.identity: cannot send a _thread.lock ("
    )
    with pytest.raises(
        sp.SerializationError, match=r"argument 'b' of fns\.add: .*_thread\.lock in it"
    ):
        fns.add.spawn(1, b=[1, {"k": lock}])


def test_an_open_file_is_refused_instead_of_arriving_as_its_contents(
    client: sp.Client, tmp_path: Path
) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with path.open() as handle, pytest.raises(sp.SerializationError) as caught:
        fns.identity.remote(handle)
    assert "argument 'data' of fns.identity" in str(caught.value)
    assert "open file cannot be sent; send its contents or its path" in str(caught.value)


def test_a_result_that_cannot_be_sent_back_names_the_function(client: sp.Client) -> None:
    with pytest.raises(sp.SerializationError) as caught:
        fns.returns_a_lock.remote()
    assert isinstance(caught.value, sp.RemoteError)
    assert caught.value.remote_message.startswith(
        "the result of fns.returns_a_lock: cannot send a _thread.lock ("
    )


# --- deployed functions: the signature recorded at deploy ---------------------------

SHOP = """
import superpose as sp


@sp.function
def pay(order_id: int, amount: float, *, currency: str = "EUR") -> str:
    return f"{order_id}: {amount} {currency}"
"""


@pytest.fixture(scope="module")
def shop(lattice: Lattice, tmp_path_factory: pytest.TempPathFactory) -> str:
    name = f"shop_{uuid.uuid4().hex[:8]}"
    folder = tmp_path_factory.mktemp("shop") / name
    folder.mkdir()
    (folder / "pay.py").write_text(SHOP)
    superpose_cli("deploy", str(folder), url=lattice.url, check=True)
    return name


@pytest.fixture(scope="module")
def http(lattice: Lattice) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=lattice.gateway, headers=lattice.auth, timeout=60) as c:
        yield c


def test_a_deployed_function_is_checked_by_its_recorded_signature(
    client: sp.Client, shop: str
) -> None:
    pay = client.function(f"{shop}.pay")
    assert pay.remote(7, 9.5) == "7: 9.5 EUR"
    with pytest.raises(
        ArgumentError, match=rf"^{shop}\.pay\(\) missing 1 required positional argument: 'amount'$"
    ):
        pay.remote(7)
    with pytest.raises(ArgumentError, match="unexpected keyword argument 'curency'"):
        pay.spawn(7, 1.0, curency="USD")


def test_over_http_an_argument_that_does_not_fit_is_a_400_naming_it(
    http: httpx.Client, shop: str
) -> None:
    response = http.post(f"/v1/call/{shop}.pay", json={"args": [7]})
    assert response.status_code == 400
    assert "'amount'" in response.json()["error"]["message"]
    response = http.post(f"/v1/invoke/{shop}.pay", json={"args": [7, 1, 2]})
    assert response.status_code == 400
    assert "takes 2 positional arguments but 3 were given" in response.json()["error"]["message"]
    assert http.post(f"/v1/call/{shop}.pay", json={"args": [7, 1.5]}).json() == {
        "result": "7: 1.5 EUR"
    }


def test_in_the_cli_an_argument_that_does_not_fit_exits_1_with_the_message(
    lattice: Lattice, shop: str
) -> None:
    proc = superpose_cli("call", f"{shop}.pay", "[7]", url=lattice.url)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"error: {shop}.pay() missing 1 required positional argument: 'amount'"
    )
