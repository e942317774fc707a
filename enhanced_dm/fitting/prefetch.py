"""Read the next batches of a fitting pass in a background thread while this one is computed."""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

__all__ = ["prefetched"]

ItemT = TypeVar("ItemT")
_DONE = object()


class _Failure:
    """An exception raised by the reading thread, re-raised where the batches are consumed."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(items: Iterable[ItemT], depth: int = 2) -> Generator[ItemT, None, None]:
    """The items of ``items`` in order, read up to ``depth`` ahead by a background thread.

    A fitting pass alternates reading a batch (file reads, which release the GIL) and computing
    on it (numpy and torch kernels, which release it too): overlapping them hides most of the
    reading on a machine with a spare core. At most ``depth`` batches wait, so memory stays a
    few batches whatever the number of cells. The iterator is created here, in the caller's
    thread (a DataLoader starts its workers then); an exception of the reader is re-raised to
    the consumer; closing the generator early stops the reader.
    """
    iterator = iter(items)
    waiting: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in iterator:
                if not offer(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            offer(_Failure(error))
            return
        offer(_DONE)

    reader = threading.Thread(target=read, name="enhanced-dm-fitting-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = waiting.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        reader.join()
