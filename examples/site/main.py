"""A small website on the lattice: any node can serve it, one request at a time.

    superpose deploy examples/site --asgi main:app
    open http://127.0.0.1:8700/site/

The app is plain FastAPI: it does not know it runs on superpose. Its
``@sp.function`` is deployed with it and stays callable on its own
(``superpose call site.shout '["hi"]'``); the ``/shout`` route calls it on
whichever node is free.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, StreamingResponse

import superpose as sp

app = FastAPI(title="site")

PAGE = """<!doctype html>
<title>superpose site</title>
<h1>Hello from the lattice</h1>
<form method="post" action="{action}">
  <label>Your name <input name="name" required></label>
  <button>Greet me</button>
</form>
"""


@sp.function
def shout(text: str) -> str:
    return text.upper() + "!"


@app.get("/", response_class=HTMLResponse)
def index(request: Request) -> str:
    """The form posts to ``greet`` under whatever prefix the gateway serves us at."""
    return PAGE.format(action=request.url_for("greet"))


@app.post("/greet", response_class=HTMLResponse)
def greet(name: Annotated[str, Form()]) -> str:
    return f"<p>Hello, {html.escape(name)}!</p>"


@app.get("/shout")
async def shout_route(text: str = "hello") -> dict[str, str]:
    """A route that calls a function of the same app on the lattice."""
    return {"text": text, "shouted": await shout.remote.aio(text)}


@app.get("/count")
def count(to: int = 5) -> StreamingResponse:
    """A streamed body: each line leaves the node as soon as it is written."""

    async def lines() -> AsyncIterator[str]:
        for n in range(1, to + 1):
            yield f"{n}\n"
            await asyncio.sleep(0.05)

    return StreamingResponse(lines(), media_type="text/plain")
