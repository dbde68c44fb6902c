"""The sync lane of an executor: sync calls run one at a time, back to back.

A worker thread takes the next call from a queue and runs it while holding the
lane. With calls queued, it goes straight on to the next one: no thread is
woken and the event loop is not involved. A call that blocks on its children
(``gather``, ``Future.result``) lets go of the lane, and a fresh worker takes
over the queue, so a recursive fan-out cannot deadlock on one slot. When the
parent resumes it waits for the lane again, behind the call that holds it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class SyncLane:
    def __init__(self, run: Callable[[Any], None]) -> None:
        self._run = run
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lane = threading.Lock()
        self._state = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._add_worker()

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, job: Any) -> None:
        self._jobs.put(job)

    def leave(self) -> None:
        """The calling thread's call blocks on others: free the lane for the next call."""
        self._lane.release()
        with self._state:
            needs_worker = self._idle == 0
        if needs_worker:
            self._add_worker()

    def rejoin(self) -> None:
        """The calling thread's call resumes: wait for the lane again."""
        self._lane.acquire()

    def _add_worker(self) -> None:
        with self._state:
            self._threads += 1
        threading.Thread(target=self._work, name=f"sp-lane-{self._threads}", daemon=True).start()

    def _work(self) -> None:
        while True:
            with self._state:
                self._idle += 1
            job = self._jobs.get()
            with self._state:
                self._idle -= 1
            with self._lane:
                self._run(job)
