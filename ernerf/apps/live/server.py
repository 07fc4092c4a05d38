"""`python serve.py`: the live avatar over WebRTC (aiortc + aiohttp), one loaded model shared by every client.

Each client gets a Stream (its own clock and utterance) and two tracks fed from it: video frames and their audio,
produced together, so they stay in step even when rendering falls behind. Frames of all clients render on one thread
(the model's); text is synthesised and audio decoded on other threads.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from ernerf.apps.live.avatar import SAMPLES_PER_FRAME, LiveAvatar, LiveInput, Stream
from ernerf.apps.live.page import PAGE
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.errors import ErnerfError

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
AUDIO_CHUNK = SAMPLE_RATE // 50  # 20 ms packets, as WebRTC sends audio
MAX_TEXT = 2000  # characters of one typed utterance


class FramePump:
    """Renders a stream's frames ahead (at most `ahead`) on the shared render thread; both tracks read from it."""

    def __init__(self, stream: Stream, renderer: ThreadPoolExecutor, ahead: int = 2) -> None:
        self.stream, self.renderer = stream, renderer
        self.frames: asyncio.Queue = asyncio.Queue(maxsize=ahead)
        self.audio: deque[np.ndarray] = deque()
        self.audio_ready = asyncio.Condition()
        self.task: asyncio.Task | None = None
        self.inputs: list[asyncio.Future] = []  # tasks receiving the client's microphone
        self.failed = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame, pcm = await loop.run_in_executor(self.renderer, self.stream.next)
            except Exception:  # noqa: BLE001 - the client's stream ends; the server and other clients go on
                log.exception("rendering a live frame failed: this client's stream stops")
                self.failed = True
                async with self.audio_ready:
                    self.audio_ready.notify_all()
                await self.frames.put(None)
                return
            await self.frames.put(frame)
            async with self.audio_ready:
                self.audio.extend(np.split(pcm, SAMPLES_PER_FRAME // AUDIO_CHUNK))
                self.audio_ready.notify_all()

    async def next_audio(self) -> np.ndarray:
        async with self.audio_ready:
            await self.audio_ready.wait_for(lambda: bool(self.audio) or self.failed)
            if not self.audio:
                raise MediaStreamError
            return self.audio.popleft()

    def stop(self) -> None:
        for task in [self.task, *self.inputs]:
            if task is not None:
                task.cancel()


class AvatarVideo(MediaStreamTrack):
    """The avatar's frames at 25 frames/s (later when rendering is slower)."""

    kind = "video"

    def __init__(self, pump: FramePump) -> None:
        super().__init__()
        self.pump, self.count, self.start = pump, 0, None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        rgb = await self.pump.frames.get()
        if rgb is None:
            self.stop()
            raise MediaStreamError
        self.start = self.start or time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.count / FPS - time.monotonic()))
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
    """One client: its peer connection, stream and pump."""

    pc: RTCPeerConnection
    stream: Stream
    pump: FramePump
    created: float = field(default_factory=time.time)


class LiveServer:
    """The HTTP routes: the page, WebRTC offers, and what the avatar should say."""

    def __init__(self, avatar: LiveAvatar, synthesize: Any, decode: Any) -> None:
        self.avatar, self.synthesize, self.decode = avatar, synthesize, decode
        self.sessions: dict[str, Session] = {}
        self.render_thread = ThreadPoolExecutor(1, thread_name_prefix="ernerf-render")
        self.audio_threads = ThreadPoolExecutor(2, thread_name_prefix="ernerf-speech")

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/", self.page)
        app.router.add_post("/offer", self.offer)
        app.router.add_post("/say", self.say)
        app.router.add_post("/audio", self.audio)
        app.on_shutdown.append(self.shutdown)
        return app

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def offer(self, request: web.Request) -> web.Response:
        params = await _json(request, "sdp", "type")
        pc = RTCPeerConnection()
        stream = Stream(self.avatar, start_tick=len(self.sessions) * 7)  # clients do not move in lockstep
        pump = FramePump(stream, self.render_thread)
        session_id = uuid.uuid4().hex
        self.sessions[session_id] = Session(pc, stream, pump)
        pc.addTrack(AvatarVideo(pump))
        pc.addTrack(AvatarAudio(pump))

        @pc.on("track")
        def listen(track: MediaStreamTrack) -> None:  # the client's microphone: the avatar says it as it comes
            if track.kind == "audio":
                live = LiveInput(self.avatar.extractor)
                stream.listen(live)
                pump.inputs.append(asyncio.ensure_future(_receive(track, live)))

        @pc.on("connectionstatechange")
        async def closed() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close(session_id)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type=params["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        pump.start()
        return web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type,
                                  "session": session_id})

    async def say(self, request: web.Request) -> web.Response:
        params = await _json(request, "session", "text")
        session, text = self._session(params["session"]), str(params["text"]).strip()
        if not text or len(text) > MAX_TEXT:
            raise web.HTTPBadRequest(text=f"give a text of 1 to {MAX_TEXT} characters")
        return await self._speak(session, self.synthesize, text)

    async def audio(self, request: web.Request) -> web.Response:
        session = self._session(request.query.get("session", ""))
        data = await request.read()
        if not data:
            raise web.HTTPBadRequest(text="send the audio file as the request body")
        return await self._speak(session, self.decode, data)

    async def _speak(self, session: Session, to_wav: Any, what: Any) -> web.Response:
        loop, start = asyncio.get_running_loop(), time.perf_counter()
        try:
            utterance = await loop.run_in_executor(self.audio_threads, lambda: self.avatar.utterance(to_wav(what)))
        except ErnerfError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        session.stream.say(utterance)
        return web.json_response({"frames": utterance.num_frames, "seconds": utterance.num_frames / FPS,
                                  "prepare_seconds": time.perf_counter() - start})

    def _session(self, session_id: str) -> Session:
        session = self.sessions.get(str(session_id))
        if session is None:
            raise web.HTTPNotFound(text="no such session: connect first (POST /offer)")
        return session

    async def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            session.pump.stop()
            await session.pc.close()

    async def shutdown(self, app: web.Application) -> None:
        await asyncio.gather(*(self.close(s) for s in list(self.sessions)))
        self.render_thread.shutdown(wait=False, cancel_futures=True)
        self.audio_threads.shutdown(wait=False, cancel_futures=True)


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
    if not isinstance(params, dict) or any(k not in params for k in keys):
        raise web.HTTPBadRequest(text=f"send a JSON object with {', '.join(keys)}")
    return params
