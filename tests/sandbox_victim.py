"""Another app, whose cached code tests/sandbox_fns.py tries to rewrite on a node."""

from __future__ import annotations

import superpose as sp


@sp.function
def answer() -> int:
    return 42
