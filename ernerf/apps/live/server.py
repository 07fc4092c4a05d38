"""`python serve.py`: the live avatar over WebRTC (aiortc + aiohttp), one loaded model shared by every client.

Each client gets a Stream (its own clock and utterance) and two tracks fed from it: video frames and their audio,
produced together, so they stay in step even when rendering falls behind. Frames of all clients render on one thread
(the model's), through one render queue that batches frames of several clients into one call of the model
(render_queue.py); text is synthesised and audio decoded on other threads. A long text is said sentence by sentence: the
first as soon as it is synthesised, the next ones synthesised while the earlier ones are said, a few seconds ahead.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
import uuid
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from collections.abc import Callable, Collection, Iterator
from typing import Any, Protocol

import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from ernerf.apps.live.avatar import (SAMPLES_PER_FRAME, LiveAvatar, LiveInput, Stream, Utterance, part_frames,
                                    speech_frames)
from ernerf.apps.live.page import PAGE
from ernerf.apps.live.presence import watch_reports
from ernerf.apps.live.render_queue import RenderBatching, RenderQueue
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.errors import ErnerfError

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
AUDIO_CHUNK = SAMPLE_RATE // 50  # 20 ms packets, as WebRTC sends audio
# Seconds of a text synthesised ahead of what is being said: enough that the next sentence is ready before it is due,
# few enough that a text of many pages holds a few sentences in memory, not all of them.
SPEECH_AHEAD_SECONDS = 5.0
RENDER_STOP_SECONDS = 30.0  # the longest a shutdown waits for the batch being rendered (a 512 px frame on a CPU)
AHEAD_CHECK_SECONDS = 0.1  # how often a text being said checks whether to synthesise its next sentence
# aiortc's audio receiver hands a packet on only once 4 later ones have come (its JitterBuffer's prefetch): 80 ms on
# every microphone's latency that buy nothing here. A missing packet holds the buffer whatever the prefetch (it never
# skips a gap until the buffer overflows), and late packets are ridden out by the spare the stream keeps
# (LiveInput.spare_frames). aiortc offers no setting, so `receive_promptly` replaces the receiver's buffer.
MICROPHONE_PREFETCH = 1


class FramePump:
    """Renders a stream's frames ahead (at most `ahead`) through the shared render queue; both tracks read from it.

    A frame's 40 ms of audio go out when the frame itself does (`send_audio`), not when it is rendered: frames wait
    up to `ahead` frame times for their turn, and audio sent at once would reach the listener that much before the
    lips."""

    def __init__(self, stream: Stream, render_queue: RenderQueue, ahead: int = 1) -> None:
        self.stream, self.render_queue = stream, render_queue
        self.frames: asyncio.Queue = asyncio.Queue(maxsize=ahead)  # (frame, its audio), or None when rendering failed
        self.audio: deque[np.ndarray] = deque()
        self.audio_ready = asyncio.Condition()
        self.task: asyncio.Task | None = None
        self.inputs: list[asyncio.Future] = []  # tasks receiving the client's microphone
        self.failed = False
        self.joined = False  # counted among the streams the render queue waits for

    def start(self) -> None:
        self.render_queue.join()
        self.joined = True
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                rendered = await self.render_queue.next_frame(self.stream)
            except Exception:  # noqa: BLE001 - the client's stream ends; the server and other clients go on
                log.exception("rendering a live frame failed: this client's stream stops")
                self.failed = True
                self._leave_queue()
                async with self.audio_ready:
                    self.audio_ready.notify_all()
                await self.frames.put(None)
                return
            await self.frames.put(rendered)

    async def next_frame(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next rendered frame and its audio (None: the stream has ended)."""
        return await self.frames.get()

    async def send_audio(self, pcm: np.ndarray) -> None:
        """Hand a frame's audio to the audio track: called as the frame itself is sent."""
        async with self.audio_ready:
            self.audio.extend(np.split(pcm, SAMPLES_PER_FRAME // AUDIO_CHUNK))
            self.audio_ready.notify_all()

    async def next_audio(self) -> np.ndarray:
        async with self.audio_ready:
            await self.audio_ready.wait_for(lambda: bool(self.audio) or self.failed)
            if not self.audio:
                raise MediaStreamError
            return self.audio.popleft()

    def _leave_queue(self) -> None:
        if self.joined:
            self.joined = False
            self.render_queue.leave()

    def stop(self) -> None:
        self._leave_queue()
        for task in [self.task, *self.inputs]:
            if task is not None:
                task.cancel()
        self.stream.close()


class AvatarVideo(MediaStreamTrack):
    """The avatar's frames at 25 frames/s (later when rendering is slower).

    A frame that comes later than `CATCH_UP_FRAMES` frame times past its due time moves the schedule on instead of
    being caught up with a burst of frames: a burst would take live speech faster than it arrives and use up the
    audio its stream keeps in hand (LiveInput.spare_frames), stalling it."""

    kind = "video"
    CATCH_UP_FRAMES = 1

    def __init__(self, pump: FramePump) -> None:
        super().__init__()
        self.pump, self.count, self.start = pump, 0, None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rendered = await self.pump.next_frame()
        if rendered is None:
            self.stop()
            raise MediaStreamError
        rgb, pcm = rendered
        now = time.monotonic()
        self.start = self.start or now
        late = now - (self.start + self.count / FPS)
        if late > self.CATCH_UP_FRAMES / FPS:
            self.start += late - self.CATCH_UP_FRAMES / FPS
        await asyncio.sleep(max(0.0, self.start + self.count / FPS - time.monotonic()))
        await self.pump.send_audio(pcm)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = self.count * VIDEO_CLOCK // FPS, fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return frame


class AvatarAudio(MediaStreamTrack):
    """The audio of the frames, 20 ms at a time, 16 kHz mono (the encoder resamples)."""

    kind = "audio"

    def __init__(self, pump: FramePump) -> None:
        super().__init__()
        self.pump, self.samples = pump, 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pcm = await self.pump.next_audio()
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, self.samples
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.samples += len(pcm)
        return frame


@dataclass
class Session:
    """One client: its peer connection, stream and pump, and the rest of a long text being synthesised for it."""

    pc: RTCPeerConnection
    stream: Stream
    pump: FramePump
    created: float = field(default_factory=time.time)
    rest: asyncio.Task | None = None  # synthesising and queueing the parts after the first
    presence: asyncio.Task | None = None  # ends the session when the client vanishes without closing (presence.py)
    asked: int = 0  # utterances asked for: one whose preparation ends after a newer one's is not said
    closed: bool = False


@dataclass(frozen=True)
class InputLimits:
    """What one request may send (conf/serve.yaml `limits`)."""

    text_chars: int = 100_000
    upload_bytes: int = 64 * 2**20


class LiveServer:
    """The HTTP routes: the page, WebRTC offers, and what the avatar should say.

    `speak(text)` is the text's speech in parts (a sentence each, 16 kHz mono): its length is the number of parts,
    and iterating it makes each part only when asked for. `decode(data)` is an uploaded file's sound, 16 kHz mono.
    Both run on the speech threads and raise ErnerfError on input they cannot use. A client that sends no receiver
    reports for `vanished_client_seconds` while it is sent media has vanished, and its session ends (None: left to
    ICE consent checks)."""

    def __init__(self, avatar: LiveAvatar, speak: Callable[[str], Collection[np.ndarray]],
                 decode: Callable[[bytes], np.ndarray], limits: InputLimits = InputLimits(),
                 batching: RenderBatching = RenderBatching(), vanished_client_seconds: float | None = 5.0,
                 ahead_frames: int = 1) -> None:
        self.avatar, self.speak, self.decode, self.limits = avatar, speak, decode, limits
        self.vanished_client_seconds, self.ahead_frames = vanished_client_seconds, ahead_frames
        self.sessions: dict[str, Session] = {}
        self.live_counts: Counter[str] = Counter()  # Stream.live_figures() of the sessions ended, summed
        self.render_queue = RenderQueue(avatar, batching)
        self.audio_threads = ThreadPoolExecutor(2, thread_name_prefix="ernerf-speech")

    def app(self) -> web.Application:
        # /say's JSON must fit too: a character of text is at most 12 bytes of JSON (a surrogate pair escaped)
        app = web.Application(client_max_size=max(self.limits.upload_bytes, 12 * self.limits.text_chars))
        app.router.add_get("/", self.page)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/say", self.say)
        app.router.add_post("/audio", self.audio)
        app.on_shutdown.append(self.shutdown)
        return app

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def offer(self, request: web.Request) -> web.Response:
        sdp = _offer_sdp(await _json(request, "sdp", "type"))
        session_id, session = uuid.uuid4().hex, self._new_session()
        pc = session.pc

        @pc.on("connectionstatechange")
        async def closed() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session_id)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors on an SDP it cannot answer
            session.pump.stop()
            await pc.close()
            raise web.HTTPBadRequest(text=f"the offer cannot be answered ({str(exc) or type(exc).__name__}): send the "
                                          "browser's own offer") from exc
        self.sessions[session_id] = session
        session.pump.start()
        if self.vanished_client_seconds is not None:
            session.presence = asyncio.get_running_loop().create_task(
                watch_reports(pc, self.vanished_client_seconds, lambda: self.close(session_id)))
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": session_id})

    def _new_session(self) -> Session:
        """A peer connection sending a new stream's video and audio, and listening to a microphone if one comes."""
        pc = RTCPeerConnection()
        stream = Stream(self.avatar, start_tick=len(self.sessions) * 7)  # clients do not move in lockstep
        pump = FramePump(stream, self.render_queue, self.ahead_frames)
        pc.addTrack(AvatarVideo(pump))
        pc.addTrack(AvatarAudio(pump))

        @pc.on("track")
        def listen(track: MediaStreamTrack) -> None:  # the client's microphone: the avatar says it as it comes
            if track.kind == "audio":
                receive_promptly(pc, track)
                live = LiveInput(self.avatar.extractor)
                stream.listen(live)
                pump.inputs.append(asyncio.ensure_future(_receive(track, live)))

        return Session(pc, stream, pump)

    async def say(self, request: web.Request) -> web.Response:
        params = await _json(request, "session", "text")
        session, text = self._session(params["session"]), str(params["text"]).strip()
        if not text:
            raise web.HTTPBadRequest(text="the text is empty: give the words to speak")
        if len(text) > self.limits.text_chars:
            raise web.HTTPRequestEntityTooLarge(
                self.limits.text_chars, len(text),
                text=f"the text has {len(text)} characters, over the limit of {self.limits.text_chars} "
                     "(limits.text_characters in conf/serve.yaml): send it in pieces, each after the last is said")
        return await self._speak(session, self.speak(text))

    async def audio(self, request: web.Request) -> web.Response:
        session = self._session(request.query.get("session", ""))
        data = await self._upload(request)
        if not data:
            raise web.HTTPBadRequest(text="send the audio file as the request body")
        return await self._speak(session, UploadParts(self.avatar, self.decode, data))

    async def _upload(self, request: web.Request) -> bytes:
        """The request's body; over the size limit a 413 that names it (before reading, when the size is declared)."""
        limit = self.limits.upload_bytes
        too_large = web.HTTPRequestEntityTooLarge(
            limit, request.content_length or 0,
            text=f"the file is larger than the upload limit of {limit / 2**20:g} MiB (limits.upload_megabytes in "
                 "conf/serve.yaml): send a shorter or more compressed file")
        if (request.content_length or 0) > limit:
            raise too_large
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge as exc:  # sent without its size, and more came than the limit
            raise too_large from exc

    async def _speak(self, session: Session, speech: Speech) -> web.Response:
        """Say the first part of `speech` as soon as it is made, interrupting what was said; the rest follows as it is
        made. Answered when the first part starts: its length, how long it took to make, and how many parts come
        (`len(speech)`, known once its first part is made)."""
        session.asked += 1
        asked, start, parts = session.asked, time.perf_counter(), iter(speech)
        try:
            first = await self._next_utterance(parts)
        except ErnerfError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        if first is None:
            raise web.HTTPBadRequest(text="there is nothing to say in it: give words to speak, or audio with sound")
        if session.closed:
            raise web.HTTPNotFound(text="the session closed while its speech was made")
        if session.asked != asked:
            raise web.HTTPConflict(text="a newer utterance was asked for while this one was made: that one is said")
        if session.rest is not None:
            session.rest.cancel()  # the rest of what was being said is not made any more
        session.stream.say(first)
        session.rest = asyncio.get_running_loop().create_task(self._say_rest(session.stream, parts))
        return web.json_response({"frames": first.num_frames, "seconds": first.num_frames / FPS,
                                  "prepare_seconds": time.perf_counter() - start, "parts": len(speech)})

    async def _say_rest(self, stream: Stream, parts: Iterator[np.ndarray | Utterance]) -> None:
        """Make the parts after the first while the earlier ones are said, SPEECH_AHEAD_SECONDS ahead, and queue them
        on `stream`; cancelled when something else is said or the client leaves."""
        try:
            while True:
                while stream.frames_ahead() > SPEECH_AHEAD_SECONDS * FPS:
                    await asyncio.sleep(AHEAD_CHECK_SECONDS)
                utterance = await self._next_utterance(parts)
                if utterance is None:
                    return
                stream.queue(utterance)
        except ErnerfError as exc:
            log.warning("a part of a text could not be spoken, its rest is dropped: %s", exc)
        except Exception:  # noqa: BLE001 - this text stops; the client's stream and the server go on
            log.exception("making a part of a text failed, its rest is dropped")

    async def _next_utterance(self, parts: Iterator[np.ndarray | Utterance]) -> Utterance | None:
        """The next part that has sound (audio, or an utterance made as it is asked for), as an utterance made on a
        speech thread; None after the last."""
        def make() -> Utterance | None:
            for part in parts:
                if isinstance(part, Utterance):
                    return part
                if len(part):
                    return self.avatar.utterance(part)
            return None

        return await asyncio.get_running_loop().run_in_executor(self.audio_threads, make)

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(str(session_id))
        if session is None:
            raise web.HTTPNotFound(text="no such session: connect first (POST /offer)")
        return session

    async def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            session.closed = True
            counts = session.stream.live_figures()
            if counts:  # how live speech fared: held frames mean its audio came later than the spare allowed for
                self.live_counts.update(counts)
                log.info("session %s ended: frames of live speech shown %d; %d stalls held %d frames for late audio; "
                         "silent frames dropped %d, skipped after a stall %d", session_id[:8], counts["shown"],
                         counts["stalls"], counts["held"], counts["dropped_silence"], counts["skipped"])
            if session.rest is not None:
                session.rest.cancel()
            if session.presence not in (None, asyncio.current_task()):  # not the watch that is closing it
                session.presence.cancel()
            session.pump.stop()
            await session.pc.close()

    async def shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self.sessions)))
        await asyncio.get_running_loop().run_in_executor(None, self.render_queue.close, RENDER_STOP_SECONDS)
        self.audio_threads.shutdown(wait=False, cancel_futures=True)


class Speech(Protocol):
    """What `/say` and `/audio` say: parts said one after another (audio, or utterances made as they are asked for),
    and how many (known once the first is made)."""

    def __iter__(self) -> Iterator[np.ndarray | Utterance]: ...

    def __len__(self) -> int: ...


class UploadParts:
    """An uploaded file, decoded when its first part is asked for (on a speech thread), then said in parts made one
    at a time (`LiveAvatar.utterances`); `len()` is their number once it is decoded."""

    def __init__(self, avatar: LiveAvatar, decode: Callable[[bytes], np.ndarray], data: bytes) -> None:
        self.avatar, self.decode, self.data, self.count = avatar, decode, data, 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Utterance]:
        wav, self.data = self.decode(self.data), b""  # the file's bytes are not kept while it is said
        if len(wav) == 0:
            return
        self.count = len(part_frames(speech_frames(wav)))
        yield from self.avatar.utterances(wav)


def _offer_sdp(params: dict[str, Any]) -> str:
    """The SDP of a WebRTC offer the avatar can answer; otherwise a 400 that says what is wrong with it."""
    sdp = params["sdp"]
    if params["type"] != "offer" or not isinstance(sdp, str):
        raise web.HTTPBadRequest(text='send a WebRTC offer: {"type": "offer", "sdp": "<its SDP text>"}')
    try:
        media = {m.kind for m in SessionDescription.parse(sdp).media}
    except (AssertionError, ValueError, IndexError, KeyError):  # what aiortc's parser raises on a malformed line
        media = set()
    missing = sorted({"video", "audio"} - media)
    if missing:
        raise web.HTTPBadRequest(text=f"the offer has no {' and no '.join(missing)}: the avatar sends video and "
                                      "audio, so offer to receive both (a microphone may send the audio)")
    return sdp


def receive_promptly(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """Give the receiver of `track` (an audio track just announced, no packet yet received) a jitter buffer that
    hands each packet on as soon as the next one has come (MICROPHONE_PREFETCH); False, and nothing changed, where
    this aiortc keeps its buffer elsewhere (tests/apps/test_live.py pins the name)."""
    for receiver in pc.getReceivers():
        if receiver.track is track and hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(capacity=16, prefetch=MICROPHONE_PREFETCH)
            return True
    log.warning("this aiortc's audio receiver has no jitter buffer where serve.py looks for it: the microphone's "
                "latency keeps aiortc's 80 ms prefetch")
    return False


async def _receive(track: MediaStreamTrack, live: LiveInput) -> None:
    """Append a received audio track to `live` as 16 kHz mono, until the client stops sending."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        for out in resampler.resample(frame):
            live.append(out.to_ndarray().reshape(-1))


async def _json(request: web.Request, *keys: str) -> dict[str, Any]:
    """The request's JSON object with `keys`; a malformed request is a 400 that says what is missing."""
    try:
        params = await request.json()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="send a JSON object") from exc
    except web.HTTPRequestEntityTooLarge as exc:  # aiohttp's message names the limit but not what to do
        raise web.HTTPRequestEntityTooLarge(0, text=f"the request is too large ({exc.text}): send a shorter one") from exc
    if not isinstance(params, dict) or any(k not in params for k in keys):
        raise web.HTTPBadRequest(text=f"send a JSON object with {', '.join(keys)}")
    return params
