"""Express calls: once its bundle is warm, an executor takes calls straight from clients.

Every executor hosting a bundle subscribes to the bundle's express subject in one
queue group. An idle executor runs such a call at once and tells its agent it
``took`` it (the agent then times, limits and reports it as if it had sent it);
a busy one, or one whose agent has not yet sent it that function, passes the
call on to the node queue group unchanged, so none is lost.

On a lattice with credentials the executor's own user may not subscribe to any
express subject (it was minted while the executor was neutral): the agent hands it
its *app user*'s creds in the ``Load`` frame, tagged with the bundle host and app,
and the express subscription lives on that user's connection (``app_user.py``),
opened in the background so a cold call does not wait for it (until it is up,
clients hear "no responders" and call through the agents, as for a cold bundle).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from superpose import protocol
from superpose.node.channel import Channel
from superpose.node.executor.app_user import AppConnection

Accept = Callable[[protocol.Invocation, str], None]
"""Run an express call that was announced to the agent (its ``took`` is its start)."""

log = logging.getLogger("superpose.executor")


class ExpressCalls:
    def __init__(
        self,
        nc: NATS,
        channel: Channel[protocol.FromAgent],
        idle: Callable[[], bool],
        accept: Accept,
        app: AppConnection | None = None,
    ) -> None:
        self.nc = nc
        """Where calls are passed on from, and subscribed on without an app user."""
        self._app = app
        """The app user's connection, subscribed on when it is opened (not closed here:
        user code's dicts, queues and cache entries use it too)."""
        self._opening: asyncio.Task[None] | None = None
        self.channel = channel
        self._idle = idle
        self._accept = accept
        self.known: set[tuple[str, str]] = set()
        """Functions the agent has sent here: it knows their limits, so it can adopt
        an express call of them after the fact."""
        self._subscription: Subscription | None = None
        self._env = ""
        self._only_app = ""
        """Set with an app user: the app whose calls this executor may run."""

    async def open(self, digest: str, env: str = "", app: str = "") -> None:
        """Take express calls of ``digest`` run with environment ``env`` (others sent to
        the bundle's subject are passed on: this executor runs with one environment).
        On the app user's connection once it is up, if there is one, and then it runs
        only the calls of ``app``, the one app whose state that user may touch (another
        app's calls of the same bundle are passed on, to the agents, which send them to
        executors of that app); else on the executor's own connection, now, every app's."""
        self._env = env
        subject = protocol.express_wildcard(digest)
        if self._app is not None and self._app.opened:
            self._only_app = app
            self._opening = asyncio.create_task(self._open_as(digest, subject, self._app))
        else:
            self._subscription = await self._subscribe(self.nc, subject)

    async def _open_as(self, digest: str, subject: str, app: AppConnection) -> None:
        """Subscribe on the app user's connection; on failure this executor takes no
        express calls (its calls come through its agent) and says why once."""
        try:
            self._subscription = await self._subscribe(await app.get(), subject)
        except Exception as exc:
            log.warning("taking no express calls of %s: %s", digest, exc)

    async def _subscribe(self, nc: NATS, subject: str) -> Subscription:
        return await nc.subscribe(
            subject,
            queue=protocol.EXPRESS_QUEUE_GROUP,
            cb=self._on_call,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )

    async def _on_call(self, msg: Msg) -> None:
        """A client sent this call here directly: run it now if idle, else pass it on."""
        if self._idle() and self._subscription is not None:
            try:
                inv = protocol.Invocation.decode(msg.data)
            except protocol.ProtocolError:  # the agent that gets it answers with the error
                inv = None
            if (
                inv is not None
                and inv.env == self._env
                and (not self._only_app or inv.app == self._only_app)
                and (inv.module, inv.qualname) in self.known
            ):
                # Taken only when idle, so it starts now: "took" is also its "start".
                # Written at once: if the call kills this process, the agent must know
                # of it to tell its caller. Handed to the lane first, so the lane
                # thread's wake-up overlaps this write (a pipe write that wakes the
                # agent, ~25 us here): the call cannot run a line before the write, as
                # this thread holds the GIL until it has written and waits again.
                self._accept(inv, msg.reply)
                self.channel.send(protocol.Took(msg.data, msg.reply), now=True)
                return
        subject = protocol.call_subject_of_express(msg.subject)
        await self.nc.publish(subject, msg.data, reply=msg.reply)

    async def quiet(self) -> None:
        """Take no more express calls (eviction, shutdown); ones already delivered are
        passed to the queue group, so none is lost."""
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()  # the connection is the app user's, closed by it
            with contextlib.suppress(BaseException):
                await opening
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):  # connection gone: nothing more can arrive
                await subscription.drain()  # type: ignore[no-untyped-call]
