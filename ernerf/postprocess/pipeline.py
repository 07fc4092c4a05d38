"""Threads around the render loop: work computed ahead on executors, results consumed strictly in order.

Inference renders on the calling thread (the GPU's) while the original frames are decoded ahead on a thread of
their own, paste-back runs on a small pool (cv2 and numpy release the GIL in their pixel loops) and one thread
feeds the encoder in frame order. Every queue is bounded, so memory stays flat however long the output is; the
first error of any thread is raised, as it was, on the calling thread.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # the builtin TimeoutError only from Python 3.11
from contextlib import contextmanager
from typing import Any

from ernerf.errors import ErnerfError

MAX_AUTO_WORKERS = 4  # the render thread, the decoder and the encoder (ffmpeg's own threads) want cores too
POLL_S = 0.1  # how often a blocked put/get looks at the other side's error or stop flag
STOP_WAIT_S = 10.0  # longest wait for the writer thread on an error path (the encoder is killed right after)


def paste_workers(setting: int | str) -> int:
    """Threads that paste frames back: a positive number, or `auto` = min(4, CPU cores)."""
    if setting == "auto":
        return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return setting
    raise ErnerfError(f"postprocess.workers={setting!r}: give a number of threads (1 or more) or auto.")


@contextmanager
def thread_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose queued work is cancelled on exit (running work finishes; nothing runs after)."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Lookahead:
    """`fn(key)` for each key in order, submitted to `executor` up to `depth` keys ahead of the one taken."""

    def __init__(self, executor: Executor, fn: Callable[[Any], Any], keys: Iterable[Any], depth: int) -> None:
        self._executor, self._fn, self._keys = executor, fn, iter(keys)
        self._pending: deque[Future] = deque()
        for _ in range(depth):
            self._submit_next()

    def _submit_next(self) -> None:
        for key in itertools.islice(self._keys, 1):
            self._pending.append(self._executor.submit(self._fn, key))

    def next(self) -> Future:
        """The future of the next key's result; one more key is submitted."""
        future = self._pending.popleft()
        self._submit_next()
        return future


class OrderedSink:
    """One thread passing the results of futures to `consume(*result)` in the order they were put.

    At most `depth` futures wait in the queue (`put` blocks beyond). The first error, of a future or of `consume`,
    stops the thread and is raised, the same exception object, by the next `put` or by `finish`.
    """

    def __init__(self, consume: Callable[..., Any], depth: int, name: str = "ernerf-writer") -> None:
        self._consume = consume
        self._queue: queue.Queue[Future | None] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, future: Future | None) -> None:
        """Queue a future whose result is a tuple of `consume`'s arguments (None: the end)."""
        while True:
            self._raise_error()
            try:
                self._queue.put(future, timeout=POLL_S)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        """Wait until everything put was consumed; raise the first error."""
        self.put(None)
        self._thread.join()
        self._raise_error()

    def stop(self) -> None:
        """Drop what is queued and wait (a bounded time) for the thread to end."""
        self._stop.set()
        self._thread.join(STOP_WAIT_S)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                future = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if future is None:
                return
            try:
                result = self._wait(future)
                if result is None:
                    return
                self._consume(*result)
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
                self._error = exc
                return

    def _wait(self, future: Future) -> tuple | None:
        """The future's result, or None once stopped."""
        while not self._stop.is_set():
            try:
                return future.result(timeout=POLL_S)
            except FutureTimeout:
                continue
        return None

    def __enter__(self) -> "OrderedSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
