"""One render queue for every client: the frames streams ask for, rendered in batches on the model's one thread.

A batch is gathered from the requests pending when the thread is free: up to `frames` of them, waiting at most
`wait_seconds` for the streams that have not asked yet (never when `frames` is 1: each frame then renders alone,
as before there was a queue). Each stream's window is taken on the render thread (a live microphone's windows are
computed there, as they were), the heads are rendered in one call of the model, and each frame is pasted into its
source frame and handed back to the stream that asked. A batch is launched and read back only once the next one is
launched (or no stream waits for another): with engine.render_async the device then renders while the thread takes
the next requests and copies the last frames back.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ernerf.apps.inference import LaunchedCrop, RenderedCrops
from ernerf.apps.live.avatar import FrameRequest, LiveAvatar, Stream

log = logging.getLogger(__name__)

Asked = tuple[Stream, Future]  # a stream's request for its next frame, and where its (frame, pcm) goes
Head = tuple[Stream, FrameRequest, Future, np.ndarray]  # a frame to render: who asked, what, where to, its background


@dataclass(frozen=True)
class Launched:
    """A batch's heads launched on the device, not yet read back (`LaunchedCrop`, or `RenderedCrops` for a batch)."""

    heads: list[Head]
    crops: LaunchedCrop | RenderedCrops


@dataclass(frozen=True)
class RenderBatching:
    """How frames of several streams are batched (conf/serve.yaml `render`)."""

    frames: int = 1  # at most this many frames in one call of the model
    wait_seconds: float = 0.005  # the longest a batch waits for streams that have not asked yet


class RenderQueue:
    """Frames asked for by any number of streams, rendered on one thread in batches (`RenderBatching`).

    `join` and `leave` count the streams that ask: a batch stops waiting once each of them has asked (or
    `batching.frames` have). A stream that leaves while its frame renders is not waited for, and its frame is
    dropped; a batch that fails is rendered again frame by frame, so a frame that cannot render ends its own
    stream only."""

    def __init__(self, avatar: LiveAvatar, batching: RenderBatching = RenderBatching()) -> None:
        if batching.frames < 1:
            raise ValueError(f"a batch holds at least one frame, not {batching.frames}")
        self.avatar, self.batching = avatar, batching
        self.batch_sizes: Counter[int] = Counter()  # frames per model call -> how many calls had that many
        # seconds of the render thread per part of its work: `waiting` for frames to be asked for, the streams'
        # `requests` (their audio windows), `backgrounds` not yet made on the pool, the `model`, `handing over` to the
        # pool for pasting. With `waiting` near zero the thread is what bounds the frames of all streams together.
        self.seconds: Counter[str] = Counter()
        self._asked: queue.SimpleQueue[Asked | None] = queue.SimpleQueue()
        self._streams = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="ernerf-render", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """A stream starts asking for frames."""
        with self._lock:
            self._streams += 1

    def leave(self) -> None:
        """A stream stops asking for frames."""
        with self._lock:
            self._streams = max(0, self._streams - 1)

    def submit(self, stream: Stream) -> Future:
        """Ask for `stream`'s next frame: a future of (frame [H, W, 3] uint8, int16 audio [640])."""
        future: Future = Future()
        self._asked.put((stream, future))
        return future

    async def next_frame(self, stream: Stream) -> tuple[np.ndarray, np.ndarray]:
        """`stream`'s next frame and its audio; cancelling the caller drops the frame, if it is not rendering yet."""
        return await asyncio.wrap_future(self.submit(stream))

    def close(self, wait_seconds: float = 0.0) -> None:
        """Stop the render thread once the batch it renders is done, waiting for that up to `wait_seconds`; frames
        asked for later are never rendered. (A daemon thread still inside the model when the interpreter exits
        aborts the process: a server that shuts down waits for it.)"""
        self._asked.put(None)
        if wait_seconds > 0:
            self._thread.join(wait_seconds)

    @contextmanager
    def _timed(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start

    def _serve(self) -> None:
        launched: Launched | None = None  # the batch launched last: handed over once the next one is launched
        while True:
            if launched is not None and self._asked.empty():  # no frame to launch behind it: hand it over now
                self._hand_over(launched)
                launched = None
            with self._timed("waiting"):
                batch = self._gather()
            following = self._launch(batch) if batch else None
            if launched is not None:
                self._hand_over(launched)
            launched = following
            if batch is None:
                return

    def _gather(self) -> list[Asked] | None:
        """The next batch of requests whose streams still wait for them; None once closed."""
        first = self._asked.get()
        if first is None:
            return None
        batch, deadline = [first], time.monotonic() + self.batching.wait_seconds
        while len(batch) < min(self.batching.frames, max(1, self._streams)):
            try:
                asked = self._asked.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if asked is None:  # closed: render what was gathered, then stop
                self._asked.put(None)
                break
            batch.append(asked)
        return [(stream, future) for stream, future in batch if future.set_running_or_notify_cancel()]

    def _launch(self, batch: list[Asked]) -> Launched | None:
        """Take each stream's next frame request and launch their heads together (`launch_heads`); they are read
        back and pasted by `_hand_over`, after the next batch is launched."""
        taken: list[tuple[Stream, FrameRequest, Future]] = []
        with self._timed("requests"):  # the streams' audio windows (a live microphone's features are computed here)
            for stream, future in batch:
                try:
                    taken.append((stream, stream.next_request(), future))
                except Exception as exc:  # noqa: BLE001 - this stream's input failed; the others' frames go on
                    future.set_exception(exc)
        heads: list[Head] = []
        with self._timed("backgrounds"):  # made ahead on the pool: time here is a pool that fell behind
            for stream, request, future in taken:
                try:
                    heads.append((stream, request, future, request.background.result()))
                except Exception as exc:  # noqa: BLE001 - as above: its frame cannot render
                    future.set_exception(exc)
        if not heads:
            return None
        try:
            with self._timed("model"):
                crops = self.avatar.launch_heads([(request.index, request.window, bg) for _, request, _, bg in heads])
        except Exception as exc:  # noqa: BLE001 - decided frame by frame
            self._failed(heads, exc)
            return None
        return Launched(heads, crops)

    def _hand_over(self, launched: Launched) -> None:
        """Wait for a launched batch's heads and have each pasted on the avatar's pool, whose result goes to the
        stream that asked."""
        heads = launched.heads
        try:
            with self._timed("model"):
                crops = launched.crops.result()
        except Exception as exc:  # noqa: BLE001 - decided frame by frame
            self._failed(heads, exc)
            return
        self.batch_sizes[len(heads)] += 1
        with self._timed("handing over"):
            for (stream, request, future, _), raw in zip(heads, crops):
                self._paste(stream, request, raw, future)

    def _failed(self, heads: list[Head], exc: Exception) -> None:
        """A batch that failed to render: a frame alone fails its stream, several are rendered again one by one."""
        if len(heads) == 1:
            heads[0][2].set_exception(exc)
            return
        log.warning("a batch of %d frames failed to render (%s): rendering them one by one", len(heads), exc)
        self._render_each(heads)

    def _render_each(self, heads: list[Head]) -> None:
        for stream, request, future, bg in heads:
            try:
                raw = self.avatar.render_heads([(request.index, request.window, bg)])[0]
            except Exception as exc:  # noqa: BLE001 - this stream ends (FramePump logs it); the others go on
                future.set_exception(exc)
                continue
            self.batch_sizes[1] += 1
            self._paste(stream, request, raw, future)

    def _paste(self, stream: Stream, request: FrameRequest, raw: dict[str, np.ndarray], future: Future) -> None:
        """Paste one rendered head into its stream's source frame on the avatar's pool; `future` gets (frame, pcm)."""
        def handed_over(pasted: Future) -> None:
            if pasted.cancelled():  # the pool was shut down: the server is closing
                future.set_exception(RuntimeError("the live avatar was closed before this frame was pasted"))
            elif pasted.exception() is not None:
                future.set_exception(pasted.exception())
            else:
                future.set_result((pasted.result(), request.pcm))

        try:
            self.avatar.cpu.submit(self.avatar.paste, raw, request.index, stream.sources).add_done_callback(handed_over)
        except RuntimeError as exc:  # the pool was shut down: the server is closing
            future.set_exception(exc)
