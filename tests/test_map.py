"""``map``, ``gather``, ``wait`` and ``as_completed`` as concurrent.futures users expect."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

import fns
import superpose as sp


def test_return_exceptions_yields_a_failed_items_exception_in_its_place(
    client: sp.Client,
) -> None:
    out = list(fns.fail_if_odd.map(range(6), return_exceptions=True))
    assert [x for x in out if not isinstance(x, Exception)] == [0, 2, 4]
    errors = out[1::2]
    assert all(isinstance(e, ValueError) and isinstance(e, sp.RemoteError) for e in errors)
    assert [str(e) for e in errors] == ["1 is odd", "3 is odd", "5 is odd"]


def test_without_return_exceptions_the_first_failure_stops_the_map(client: sp.Client) -> None:
    seen = []
    with pytest.raises(ValueError, match="1 is odd"):
        for value in fns.fail_if_odd.map(range(6)):
            seen.append(value)
    assert seen == [0]


def test_order_outputs_false_yields_results_as_they_complete(
    client: sp.Client, tmp_path: Path
) -> None:
    release, ready = tmp_path / "release", tmp_path / "ready"
    ready.write_text("here")
    # The first item waits until a later one's result is in: in order, nothing would
    # come. Twenty later items: a node may hold some behind the first, not all.
    paths = [str(release)] + [str(ready)] * 20
    outputs = fns.after_file.map(paths, [1] + [2] * 20, order_outputs=False)
    assert next(outputs) == 2
    release.write_text("go")
    assert sorted(outputs) == [1] + [2] * 19


def test_order_outputs_false_with_return_exceptions(client: sp.Client) -> None:
    out = list(fns.fail_if_odd.map(range(4), order_outputs=False, return_exceptions=True))
    assert sorted(x for x in out if isinstance(x, int)) == [0, 2]
    assert sorted(str(e) for e in out if isinstance(e, ValueError)) == ["1 is odd", "3 is odd"]


def test_as_completed_hands_back_futures_as_they_finish(client: sp.Client, tmp_path: Path) -> None:
    release, ready = tmp_path / "release", tmp_path / "ready"
    ready.write_text("here")
    fast = fns.after_file.spawn(str(ready), 2)
    sp.wait([fast])  # a node holding both might run the slow one first
    slow = fns.after_file.spawn(str(release), 1)
    finished = sp.as_completed([slow, fast], timeout=60)
    assert next(finished) is fast
    release.write_text("go")
    assert list(finished) == [slow]
    never = fns.after_file.spawn(str(tmp_path / "never"), 3)
    with pytest.raises(TimeoutError):
        list(sp.as_completed([never], timeout=0.2))
    assert never.cancel()  # and its node's slot is free again


def test_wait_returns_done_and_not_done_like_concurrent_futures(
    client: sp.Client, tmp_path: Path
) -> None:
    marker = tmp_path / "release"
    fast = fns.square.spawn(3)
    sp.wait([fast])  # a node holding both might run the slow one first
    slow = fns.after_file.spawn(str(marker), 1)
    done, not_done = sp.wait([slow, fast], return_when=sp.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    done, not_done = sp.wait([slow], timeout=0.2)
    assert not done and not_done == {slow}
    marker.write_text("go")
    done, not_done = sp.wait([slow, fast], timeout=60)
    assert done == {slow, fast} and not not_done
    failing = fns.fail_if_odd.spawn(1)
    sp.wait([failing])
    waiting = fns.after_file.spawn(str(tmp_path / "never"), 0)
    done, not_done = sp.wait([failing, waiting], return_when=sp.FIRST_EXCEPTION)
    assert done == {failing} and not_done == {waiting}
    assert waiting.cancel()
    assert sp.FIRST_COMPLETED == concurrent.futures.FIRST_COMPLETED


def test_gather_returns_exceptions_in_place_when_asked(client: sp.Client) -> None:
    futures = [fns.fail_if_odd.spawn(x) for x in range(3)]
    out = sp.gather(*futures, return_exceptions=True)
    assert out[0] == 0 and out[2] == 2 and isinstance(out[1], ValueError)
    with pytest.raises(ValueError, match="1 is odd"):
        sp.gather(*futures)


def test_gather_raises_a_failure_even_while_earlier_futures_still_run(
    client: sp.Client, tmp_path: Path
) -> None:
    failing = fns.fail_if_odd.spawn(1)
    sp.wait([failing])
    waiting = fns.after_file.spawn(str(tmp_path / "never"), 0)
    with pytest.raises(ValueError, match="1 is odd"):
        sp.gather(waiting, failing)
    assert waiting.cancel()


def test_a_bad_window_is_refused_naming_it(client: sp.Client) -> None:
    with pytest.raises(sp.UserError, match="window"):
        list(fns.square.map(range(3), window=0))
