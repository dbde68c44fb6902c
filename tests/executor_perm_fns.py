"""Functions that try, from inside an executor, what its NATS user may not do
(tests/test_executor_identity.py, script mode)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import nats
import nats.errors

import superpose as sp
from superpose.client import session
from superpose.security import jwt
from superpose.security.creds import read_creds

WAIT_S = 2.0
"""How long an attempt waits for its answer or for the server's refusal."""


async def _refused(attempt: Any, errors: list[str], subject: str) -> str:
    """'denied' if the server reported a permissions violation naming ``subject``,
    'ALLOWED: ...' if the attempt got an answer, else what happened."""
    try:
        answer = await asyncio.wait_for(attempt, WAIT_S)
    except Exception as exc:  # a refused request goes unanswered: it times out
        answer = exc
    for _ in range(int(WAIT_S / 0.05)):  # the refusal arrives on its own, after the attempt
        # nats-py lowercases the server's message, subject included
        if any("permissions violation" in e.lower() and subject.lower() in e for e in errors):
            return "denied"
        await asyncio.sleep(0.05)
    return f"ALLOWED: {answer!r}"[:300]


@sp.function
async def attacks(other_result: str, node_id: str, app: str, digest: str) -> dict[str, str]:
    """Each attack with a connection made from the creds file this executor was given."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    token, _ = read_creds(Path(os.environ["SUPERPOSE_CREDS"]))
    me = jwt.claims_of(token)["name"]
    nc = await nats.connect(
        _lattice_url(),
        user_credentials=os.environ["SUPERPOSE_CREDS"],
        inbox_prefix=f"_INBOX.{me}",
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:
        js = nc.jetstream()
        out: dict[str, str] = {}
        direct = "$JS.API.DIRECT.GET."
        out["registry read"] = await _refused(
            nc.request(f"{direct}KV_sp_registry.$KV.sp_registry.app.{app}", b""),
            errors,
            "$JS.API.DIRECT.GET.KV_sp_registry",
        )
        out["registry watch"] = await _refused(
            nc.request("$JS.API.CONSUMER.CREATE.KV_sp_registry", b"{}"),
            errors,
            "$JS.API.CONSUMER.CREATE.KV_sp_registry",
        )
        out["another's result"] = await _refused(
            nc.request(f"{direct}KV_sp_results.$KV.sp_results.{other_result}", b""),
            errors,
            f"$KV.sp_results.{other_result}",
        )
        out["results in bulk"] = await _refused(
            nc.request(
                f"{direct}KV_sp_results",
                json.dumps({"multi_last": [f"$KV.sp_results.{other_result}"]}).encode(),
            ),
            errors,
            "$JS.API.DIRECT.GET.KV_sp_results",
        )
        out["bundle object"] = await _refused(
            nc.request(f"{direct}OBJ_sp_bundles.$O.sp_bundles.M.x", b""),
            errors,
            "$JS.API.DIRECT.GET.OBJ_sp_bundles",
        )
        out["bundle chunks"] = await _refused(
            nc.request("$JS.API.CONSUMER.CREATE.OBJ_sp_bundles", b"{}"),
            errors,
            "$JS.API.CONSUMER.CREATE.OBJ_sp_bundles",
        )
        blobs = "OBJ_sp_blobs"
        out["blobs by sequence"] = await _refused(
            nc.request(f"$JS.API.STREAM.MSG.GET.{blobs}", b'{"seq": 1}'),
            errors,
            f"$JS.API.STREAM.MSG.GET.{blobs}",
        )
        out["every blob"] = await _refused(
            nc.request(f"$JS.API.CONSUMER.CREATE.{blobs}", b"{}"),
            errors,
            f'"$JS.API.CONSUMER.CREATE.{blobs}"',
        )
        durables = "OBJ_sp_objects"
        out["durable objects by sequence"] = await _refused(
            nc.request(f"$JS.API.STREAM.MSG.GET.{durables}", b'{"seq": 1}'),
            errors,
            f"$JS.API.STREAM.MSG.GET.{durables}",
        )
        out["every durable object"] = await _refused(
            nc.request(f"$JS.API.CONSUMER.CREATE.{durables}", b"{}"),
            errors,
            f'"$JS.API.CONSUMER.CREATE.{durables}"',
        )
        out["subscribe >"] = await _refused(_subscribe(nc, ">"), errors, ">")
        out["another client's replies"] = await _refused(
            _subscribe(nc, "_SP.0123456789abcdef.r.*"), errors, "_SP.0123456789abcdef.r.*"
        )
        out["node subject"] = await _refused(
            nc.request(f"sp.node.{node_id}.ctl", b""), errors, f"sp.node.{node_id}.ctl"
        )
        out["move an alias"] = await _refused(
            js.publish(f"$KV.sp_registry.alias.{app}.latest", digest.encode()),
            errors,
            f"$KV.sp_registry.alias.{app}.latest",
        )
        out["upload an environment"] = await _refused(
            js.publish("$O.sp_envs.C.evil", b"evil"), errors, "$O.sp_envs.C.evil"
        )
        out["fail an environment"] = await _refused(
            js.publish(f"$KV.sp_registry.envfail.{digest}", b"{}"),
            errors,
            f"$KV.sp_registry.envfail.{digest}",
        )
        out["secrets bucket"] = await _refused(
            nc.request(f"{direct}KV_sp_secrets.$KV.sp_secrets.SP_TEST_KEY", b""),
            errors,
            "$JS.API.DIRECT.GET.KV_sp_secrets",
        )
        out["create a stream"] = await _refused(
            nc.request("$JS.API.STREAM.CREATE.EVIL", b"{}"), errors, "$JS.API.STREAM.CREATE.EVIL"
        )
        return out
    finally:
        await nc.close()


def _lattice_url() -> str:
    """The server this executor is connected to (its own connection's)."""
    client = session.node_client()
    assert client is not None and client.nc.connected_url is not None
    return client.nc.connected_url.geturl()


async def _subscribe(nc: Any, subject: str) -> None:
    await nc.subscribe(subject)
    await nc.flush()


@sp.function
def who_am_i() -> dict[str, Any]:
    """The claims of the user this executor connects as (never the seed)."""
    token, _ = read_creds(Path(os.environ["SUPERPOSE_CREDS"]))
    client = session.node_client()
    assert client is not None
    # nats-py keeps the creds file its connection (re)connects with: the same one
    connected_with = str(getattr(client.nc, "_user_credentials", ""))
    return {
        **jwt.claims_of(token),
        "connected_with_it": connected_with == os.environ["SUPERPOSE_CREDS"],
    }


@sp.function
def leaf(x: int) -> int:
    print("leaf", x)
    return x * 2


@sp.function
def fan_out(n: int) -> dict[str, Any]:
    """Nested work an executor's user must still be able to do."""
    sync = leaf.remote(1)
    durable = leaf.spawn(2).result()
    mapped = list(leaf.map(range(n)))
    return {"sync": sync, "durable": durable, "mapped": mapped}


@sp.function
def by_name(name: str) -> str:
    """A nested call by name from inside an executor: its node resolves the name."""
    client = session.node_client()
    assert client is not None
    try:
        client.function(name).remote()
    except sp.SuperposeError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "called"


@sp.function
def read_registry() -> str:
    client = session.node_client()
    assert client is not None
    try:
        client.run(client.registry())
    except sp.SuperposeError as exc:
        return str(exc)
    return "read it"
