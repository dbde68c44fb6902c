"""`make demo`: a local lattice, three apps, calls from the CLI, HTTP and a script.

Everything runs in a private state folder (.superpose/demo under the repository),
so the demo never touches a lattice you started yourself, and the lattice is
always stopped at the end, whatever happens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / ".superpose" / "demo"
STEP_TIMEOUT_S = 60.0


class StepFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def superpose(*args: str) -> str:
    """Run the real CLI, as a user would; its output is the step's output."""
    proc = subprocess.run(
        [sys.executable, "-m", "superpose", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise StepFailed(f"`superpose {' '.join(args)}` exited {proc.returncode}:\n{output}")
    return output


def script(path: str) -> str:
    proc = subprocess.run(
        [sys.executable, path], cwd=ROOT, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise StepFailed(f"`python {path}` exited {proc.returncode}:\n{output}")
    return output


def http_call(gateway: str, name: str, body: dict[str, object]) -> str:
    request = urllib.request.Request(
        f"{gateway}/v1/call/{name}",
        data=json.dumps(body).encode(),
        headers={
            "content-type": "application/json",
            # the admin token `superpose up` wrote to its state folder
            "authorization": f"Bearer {(HOME / 'gateway.token').read_text().strip()}",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=STEP_TIMEOUT_S) as response:
            answer = response.read().decode()
            return f"POST {gateway}/v1/call/{name} {json.dumps(body)}\n→ {response.status} {answer}"
    except urllib.error.HTTPError as exc:
        raise StepFailed(f"gateway answered {exc.code}: {exc.read().decode()}") from exc


class Demo:
    def __init__(self) -> None:
        self.timings: list[tuple[str, float, bool]] = []

    def step(self, title: str, action: Callable[[], str]) -> str:
        print(f"\n▸ {title}", flush=True)
        started = time.perf_counter()
        ok, output = False, ""
        try:
            output = action()
            ok = True
            return output
        except (StepFailed, subprocess.TimeoutExpired, OSError) as exc:
            output = str(exc)
            raise StepFailed(f"{title}: {exc}") from exc
        finally:
            elapsed = time.perf_counter() - started
            self.timings.append((title, elapsed, ok))
            if output:
                print(textwrap.indent(output, "  │ "))
            print(f"  {'✓' if ok else '✗'} {elapsed:6.2f} s", flush=True)

    def summary(self) -> None:
        width = max(len(title) for title, _, _ in self.timings) + 2
        print("\n" + "─" * (width + 18))
        print(f"{'step':<{width}}{'time':>8}  result")
        for title, elapsed, ok in self.timings:
            print(f"{title:<{width}}{elapsed:>6.2f} s  {'ok' if ok else 'FAILED'}")
        total = sum(elapsed for _, elapsed, _ in self.timings)
        print(f"{'total':<{width}}{total:>6.2f} s")


def main() -> int:
    os.environ["SUPERPOSE_HOME"] = str(HOME)
    os.environ.pop("SUPERPOSE_LATTICE", None)  # the demo's lattice, not another one
    HOME.mkdir(parents=True, exist_ok=True)
    demo = Demo()
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    failed = False
    print(f"superpose demo (state in {HOME.relative_to(ROOT)})")
    try:
        superpose("down")  # a lattice left over by an interrupted demo
        demo.step(
            "start a lattice: 2 nodes + HTTP gateway",
            lambda: superpose("up", "--workers", "2", "--detach", "--gateway-port", str(port)),
        )
        for app in ("hello", "fanout", "shop"):
            demo.step(
                f"deploy examples/{app}", lambda app=app: superpose("deploy", f"examples/{app}")
            )
        demo.step("call hello.greet", lambda: superpose("call", "hello.greet", '["world"]'))
        demo.step(
            "fan-out: fanout.total spawns 100 squares",
            lambda: superpose("call", "fanout.total", "[100]"),
        )
        demo.step(
            "recursion: fanout.mergesort",
            lambda: superpose("call", "fanout.mergesort", "[[9, 3, 7, 1, 8, 2, 6, 4, 5], 2]"),
        )
        demo.step(
            "two modules importing each other: shop.checkout",
            lambda: superpose(
                "call", "shop.checkout", '[[{"sku": "apple", "qty": 12}, {"sku": "tea", "qty": 1}]]'
            ),
        )
        invocation = demo.step(
            "durable: call --async (persisted, id back)",
            lambda: superpose("call", "hello.greet", '["later"]', "--async").strip(),
        )
        demo.step(
            "durable: superpose result ID --wait",
            lambda: superpose("result", invocation, "--wait", "--timeout", "30"),
        )
        demo.step(
            "call through the HTTP gateway",
            lambda: http_call(gateway, "hello.greet", {"args": ["HTTP"]}),
        )
        demo.step("script mode: examples/script_mode.py", lambda: script("examples/script_mode.py"))
        demo.step("superpose ls", lambda: superpose("ls"))
        demo.step("superpose status", lambda: superpose("status"))
        demo.step("superpose logs hello", lambda: superpose("logs", "hello"))
    except StepFailed as exc:
        failed = True
        print(f"\nFAILED: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        failed = True
    finally:
        try:
            demo.step("stop the lattice", lambda: superpose("down"))
        except StepFailed as exc:
            failed = True
            print(f"\nFAILED: {exc}", file=sys.stderr)
        demo.summary()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
