"""The smallest app: deploy it with `superpose deploy examples/hello`."""

import superpose as sp


@sp.function
def greet(name: str) -> str:
    print(f"greeting {name}")
    return f"Hello, {name}!"


@sp.function
def shout(text: str) -> str:
    return text.upper() + "!"
