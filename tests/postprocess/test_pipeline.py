"""Threads around the render loop: results in put order whatever finishes first, bounded queues, errors as raised."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future

import pytest

from ernerf.errors import ErnerfError
from ernerf.postprocess.pipeline import Lookahead, OrderedSink, paste_workers, thread_pool


def slow_square(x: int) -> tuple[int]:
    time.sleep(random.Random(x).uniform(0, 0.01))  # later items often finish first
    return (x * x,)


def test_sink_consumes_in_put_order_whatever_finishes_first():
    got = []
    with thread_pool(4, "test-pool") as pool, OrderedSink(got.append, depth=3) as sink:
        for x in range(40):
            sink.put(pool.submit(slow_square, x))
        sink.finish()
    assert got == [x * x for x in range(40)]


def test_sink_put_blocks_beyond_its_depth():
    gate, got = threading.Event(), []
    with OrderedSink(got.append, depth=2) as sink:
        held = Future()
        sink.put(held)  # the thread takes it and waits on it
        time.sleep(0.05)
        for x in range(2):
            done = Future()
            done.set_result((x,))
            sink.put(done)
        blocked = threading.Thread(target=lambda: (sink.put(done), gate.set()))
        blocked.start()
        assert not gate.wait(0.3)  # queue full: the third put waits
        held.set_result((-1,))
        assert gate.wait(2)
        blocked.join()
        sink.finish()
    assert got == [-1, 0, 1, 1]


def failing(x: int) -> tuple[int]:
    if x == 5:
        raise ErnerfError("frame 5: the parsing map is missing")
    return (x,)


def test_first_error_of_a_worker_is_raised_by_put_or_finish_as_it_was():
    got = []
    with pytest.raises(ErnerfError, match="frame 5: the parsing map is missing") as info:
        with thread_pool(2, "test-pool") as pool, OrderedSink(got.append, depth=2) as sink:
            for x in range(100):
                sink.put(pool.submit(failing, x))
            sink.finish()
    assert got == [0, 1, 2, 3, 4]  # nothing after the failed frame
    assert any(entry.name == "failing" for entry in info.traceback)  # the worker's own frame is in the traceback


def test_error_of_the_consumer_is_raised():
    def consume(x: int) -> None:
        raise BrokenPipeError("the encoder exited")

    done = Future()
    done.set_result((1,))
    with pytest.raises(BrokenPipeError, match="the encoder exited"):
        with OrderedSink(consume, depth=2) as sink:
            sink.put(done)
            sink.finish()


def test_stop_ends_the_thread_with_work_still_queued():
    with OrderedSink(lambda x: None, depth=2, name="test-sink") as sink:
        sink.put(Future())  # never completes
    assert not any(t.name == "test-sink" and t.is_alive() for t in threading.enumerate())


def test_lookahead_submits_depth_ahead_in_order():
    calls = []
    with thread_pool(1, "test-decode") as pool:
        ahead = Lookahead(pool, lambda k: calls.append(k) or k * 10, range(10), depth=3)
        assert ahead.next().result() == 0
        time.sleep(0.05)
        assert calls == [0, 1, 2, 3]  # three keys ahead of the one taken
        assert [ahead.next().result() for _ in range(9)] == [10 * k for k in range(1, 10)]
        with pytest.raises(IndexError):
            ahead.next()


def test_paste_workers_setting():
    assert 1 <= paste_workers("auto") <= 4
    assert paste_workers(3) == 3
    for bad in (0, -1, "many", 2.5, True):
        with pytest.raises(ErnerfError, match="postprocess.workers"):
            paste_workers(bad)
