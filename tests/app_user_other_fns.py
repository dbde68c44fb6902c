"""A second app in the same folder as tests/app_user_fns.py: script mode ships the folder
as one bundle, so the two apps share it (tests/test_app_user.py)."""

from __future__ import annotations

import superpose as sp
from app_user_fns import hosted as hosted_there


@sp.function
def hosted() -> list[object]:
    """Where this app's call runs: the same as ``app_user_fns.hosted`` reports."""
    return list(hosted_there.local())
