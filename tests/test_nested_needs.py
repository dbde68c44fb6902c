"""Nested calls from inside a function, made as the executor's own NATS user (issue 15,
item 2): durable calls with needs (placement records its needs class through a node),
a by-name spawn and a map."""

from __future__ import annotations

import nested_needs_fns as fns
import superpose as sp
from conftest import ROOT, Lattice
from superpose import protocol
from superpose.node.placing import PlaceAnswers
from test_cli import deploy

HELLO = ROOT / "examples" / "hello"


def test_a_nested_call_with_needs_runs(client: sp.Client) -> None:
    assert fns.with_needs.remote(21) == {"spawned": 42, "direct": 42}


def test_a_nested_spawn_by_name_runs(client: sp.Client, lattice: Lattice) -> None:
    deploy(lattice, HELLO)
    assert fns.spawn_by_name.remote("hello.greet", "nested") == "Hello, nested!"


def test_a_nested_map_runs(client: sp.Client) -> None:
    assert fns.mapped.remote(5) == [0, 2, 4, 6, 8]


def test_a_nested_call_with_unmet_needs_names_them(client: sp.Client) -> None:
    answer = fns.with_unmet_needs.remote()
    assert answer.startswith("NoNodesError: cannot place nested_needs_fns.double")
    assert "gpu" in answer


async def test_a_malformed_place_request_is_answered_as_bad() -> None:
    answers = PlaceAnswers(None, None, None, lambda coro: None)  # type: ignore[arg-type]
    placed = await answers.place(b"\x00garbage")
    assert placed.error_kind == "bad_request" and "not a PlaceRequest message" in placed.error
    bad = protocol.PlaceRequest({"a b": "1"}, "x.y").encode()
    placed = await answers.place(bad)
    assert placed.error_kind == "bad_request" and "label name 'a b'" in placed.error
