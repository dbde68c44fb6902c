"""Functions the environment tests run with an environment (shipped in script mode).
They import packages only nodes' built environments have, never this process."""

from __future__ import annotations

import superpose as sp


@sp.function
def tiny_version() -> str:
    import tinyone

    return str(tinyone.VERSION)


@sp.function
def protocol_modules() -> dict[str, str]:
    """Where the executor's msgspec and cloudpickle come from, with tinyone's version."""
    import cloudpickle
    import msgspec
    import tinyone

    return {
        "tinyone": str(tinyone.VERSION),
        "msgspec": str(msgspec.__file__),
        "cloudpickle": str(cloudpickle.__file__),
    }
