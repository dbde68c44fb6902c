"""Workload 9, environments: a function that imports numpy, on a fresh 2-node lattice.

Measured, each from the caller: resolving ``numpy`` with uv (what deploy does once),
the first call on one node (it builds the environment and uploads it), the first call
on the other node (it pulls and unpacks it), and a warm call. In the same run, Ray's
first task with ``runtime_env={"pip": ["numpy"]}`` on a fresh local Ray (skipped,
saying so, when Ray is not installed: ``pip install -e '.[bench]'``).

Targets (issue 14): the pull on the second node ≤ 3 s; the first call with the
environment already built somewhere ≤ 1/3 of Ray's first runtime_env task.

Needs the package index (numpy comes from PyPI, or ``UV_INDEX_URL``).
``python -m bench.environments`` runs it alone and prints the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.sp_only import _running_lattice

Figures = dict[str, Any]
CALL_TIMEOUT_S = 600.0
REQUIREMENTS = ["numpy"]
RAY_TASK = """
import json, sys, time
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
@ray.remote(runtime_env={"pip": ["numpy"]})
def version():
    import numpy
    return numpy.__version__
started = time.perf_counter()
found = ray.get(version.remote())
first = time.perf_counter() - started
started = time.perf_counter()
ray.get(version.remote())
print(json.dumps({"first_s": first, "warm_s": time.perf_counter() - started, "numpy": found}))
ray.shutdown()
"""


def environments(sizes: Any = None) -> list[Figures]:
    return [{**_superpose(), **_ray()}]


def _superpose() -> Figures:
    from superpose import protocol
    from superpose.code import environments as envs

    with _running_lattice() as (client, _home):
        started = time.perf_counter()
        env = envs.resolve(REQUIREMENTS, envs.this_python(), envs.this_platform())
        resolve_s = time.perf_counter() - started
        client.run(client.assets.registry.put(protocol.env_key(env.digest), env.as_json()))
        first, second = sorted(n.id for n in client.run(client.nodes()).live())
        build_s, found = _timed_call(client, env.digest, first)
        pull_s, _ = _timed_call(client, env.digest, second)
        warm_s, _ = _timed_call(client, env.digest, first)
        size = client.run(_archive_size(client, env.digest))
    return {
        "numpy": found,
        "packages": len(env.packages),
        "resolve_s": resolve_s,
        "build_call_s": build_s,
        "pull_call_s": pull_s,
        "warm_call_ms": warm_s * 1000,
        "archive_mb": size / 2**20,
    }


async def _archive_size(client: Any, digest: str) -> int:
    from superpose import protocol
    from superpose.lattice import objects

    size = await objects.size(client.assets.js, protocol.ENVS_BUCKET, protocol.env_archive(digest))
    return size or 0


def _timed_call(client: Any, env: str, node: str) -> tuple[float, Any]:
    """``numpy_version()`` run with environment ``env`` on ``node``: (seconds, value).
    The invocation is made here with its ``env`` set (what deploy will set)."""
    from bench import env_fns
    from superpose import protocol
    from superpose.lattice import payload

    target = env_fns.numpy_version._target(client)
    inv = protocol.Invocation(
        id=f"benchenv{uuid.uuid4().hex[:12]}",
        app=target.app,
        fn=target.fn,
        digest=target.digest,
        module=target.module,
        qualname=target.qualname,
        args=protocol.Payload(
            protocol.CODEC_PICKLE, payload.encode_args((), {}, protocol.CODEC_PICKLE)
        ),
        deadline=time.time() + CALL_TIMEOUT_S,
        env=env,
    )
    subject = protocol.node_call_subject(node, target.app, target.fn)

    async def call() -> protocol.Result:
        reply = await client.nc.request(subject, inv.encode(), timeout=CALL_TIMEOUT_S)
        return protocol.Result.decode(reply.data)

    started = time.perf_counter()
    result = client.run(call())
    elapsed = time.perf_counter() - started
    if result.error is not None:
        raise RuntimeError(f"{result.error.type}: {result.error.message}\n{result.error.traceback}")
    assert result.value is not None and result.value.data is not None
    return elapsed, payload.decode_value(result.value.data, result.value.codec)


def _ray() -> Figures:
    """Ray's first runtime_env task, in a process of its own (Ray keeps global state)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"ray": "not installed (pip install -e '.[bench]')"}
    done = subprocess.run(
        [sys.executable, "-c", RAY_TASK],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT_S,
    )
    if done.returncode != 0:
        return {"ray": f"failed: {done.stderr.strip()[-500:]}"}
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {"ray_first_s": found["first_s"], "ray_warm_ms": found["warm_s"] * 1000}


def main() -> int:
    (row,) = environments()
    print(json.dumps(row, indent=2))
    if "ray_first_s" in row:
        print(
            f"first call with the environment built elsewhere (pull) {row['pull_call_s']:.2f} s "
            f"= {row['pull_call_s'] / row['ray_first_s']:.2f} of Ray's first runtime_env task "
            f"({row['ray_first_s']:.2f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
