"""The helpers every layer shares: the retry policy and the outbox into an event loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

from superpose.support.outbox import Outbox
from superpose.support.retry import Backoff, retry


def test_a_backoff_grows_by_its_factor_up_to_its_cap() -> None:
    backoff = Backoff(0.5, factor=2, max_s=3.0)
    assert [backoff.pause_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert Backoff(0.25).pause_s(7) == 0.25


def test_a_jittered_pause_stays_in_its_band() -> None:
    backoff = Backoff(1.0, jitter=0.5)
    pauses = [backoff.pause_s(1) for _ in range(200)]
    assert all(0.5 <= p <= 1.0 for p in pauses)
    assert len(set(pauses)) > 1


@pytest.mark.parametrize(
    "policy", [{"first_s": -1}, {"first_s": 1, "factor": 0.5}, {"first_s": 1, "jitter": 2}]
)
def test_a_backoff_that_makes_no_sense_is_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="not a backoff"):
        Backoff(**policy)


def test_retry_tries_again_until_it_works_and_reports_each_failure() -> None:
    tries: list[int] = []
    heard: list[tuple[str, int]] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError(f"try {len(tries)}")
        return "done"

    result = asyncio.run(
        retry(flaky, backoff=Backoff(0), on_failure=lambda e, n: heard.append((str(e), n)))
    )
    assert result == "done"
    assert heard == [("try 1", 1), ("try 2", 2)]


def test_retry_gives_up_after_its_attempts_with_the_last_error() -> None:
    tries: list[int] = []

    async def broken() -> None:
        tries.append(1)
        raise ConnectionError(f"try {len(tries)}")

    with pytest.raises(ConnectionError, match="try 3"):
        asyncio.run(retry(broken, backoff=Backoff(0), attempts=3))
    assert len(tries) == 3


def test_retry_gives_up_when_its_time_is_up() -> None:
    async def broken() -> None:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError, match="still down"):
        asyncio.run(retry(broken, backoff=Backoff(0.01), within_s=0.05))


def test_retry_lets_other_errors_through_at_once() -> None:
    tries: list[int] = []

    async def wrong() -> None:
        tries.append(1)
        raise KeyError("not a retry matter")

    with pytest.raises(KeyError):
        asyncio.run(retry(wrong, backoff=Backoff(0), retry_on=ConnectionError))
    assert tries == [1]


def test_an_outbox_keeps_the_order_of_its_puts_across_threads() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        outbox: Outbox[int] = Outbox(loop)
        writer = threading.Thread(target=lambda: [outbox.put(i) for i in range(10_000)])
        writer.start()
        taken: list[int] = []
        while len(taken) < 10_000:
            taken += await outbox.next_burst()
        writer.join()
        return taken

    assert asyncio.run(main()) == list(range(10_000))


def test_an_outbox_wakes_its_consumer_once_per_burst() -> None:
    async def main() -> tuple[int, list[str]]:
        loop = asyncio.get_running_loop()
        wakes: list[int] = []
        outbox: Outbox[str] = Outbox(loop, wake=lambda: wakes.append(1))
        for item in "abc":
            outbox.put(item)  # on the loop: the first put wakes, the others join it
        burst = outbox.take()
        outbox.put("d")  # taken: the next put wakes again
        return len(wakes), burst + outbox.take()

    assert asyncio.run(main()) == (2, ["a", "b", "c", "d"])
