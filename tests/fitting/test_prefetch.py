"""The fitting pass's read-ahead thread keeps the order, raises the reader's errors and stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from enhanced_dm.fitting.prefetch import prefetched


def test_items_arrive_in_order_each_once() -> None:
    assert list(prefetched(range(100), depth=2)) == list(range(100))
    assert list(prefetched([], depth=1)) == []


def test_an_error_of_the_reader_is_raised_to_the_consumer() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    seen = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(failing()):
            seen.append(item)
    assert seen == [1]


def test_closing_early_stops_the_reader() -> None:
    read = []

    def endless() -> Iterator[int]:
        count = 0
        while True:
            read.append(count)
            yield count
            count += 1

    ahead = prefetched(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()
    assert not any(t.name == "enhanced-dm-fitting-reader" for t in threading.enumerate())
    assert len(read) <= 4  # one consumed, at most depth waiting, one being offered
