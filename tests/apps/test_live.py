"""The live avatar: a clock of frames, speech that interrupts, idle between, streamed over WebRTC on the loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter

import numpy as np
import pytest
import torch

from ernerf.apps.inference import OutputOptions, load_subject
from ernerf.apps.live.avatar import (LOOKAHEAD_SECONDS, MAX_SPARE_FRAMES, SAMPLES_PER_FRAME, START_SPARE_FRAMES, LiveAvatar,
                                    LiveInput, Stream)
from ernerf.audio.features import LogMelExtractor
from ernerf.constants import SAMPLE_RATE
from ernerf.postprocess.pasteback import PasteBack
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture
from tests.postprocess.mini_subject import FEATURE_DIM

PATCH = (slice(200, 260), slice(220, 290))  # a square of the pasted frame inside the head (mouth region)


class MouthRenderer:
    """Fake renderer: a grey head whose brightness follows the audio window's middle rows (what a mouth follows)."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.hparams = {"audio_kind": "mel", "feature_dim": FEATURE_DIM}
        self.windows: list[np.ndarray] = []

    def render_image(self, c2w, intrinsics, H, W, audio_window, eye, frame_index, bg, torso_frame=None):
        window = audio_window.numpy()
        self.windows.append(window)
        level = float(np.clip((window[3:5].mean() + 20.0) / 20.0, 0.0, 1.0))  # log-mel: -20 black .. 0 white
        return {"rgb": torch.full((H, W, 3), level), "opacity": torch.ones(H, W), "depth": torch.ones(H, W)}


def live_avatar(subject_root, renderer) -> LiveAvatar:
    """A LiveAvatar of the mini subject at 128 px (downscale 4), idling on quiet log-mel rows, driven by `renderer`."""
    subject = load_subject(subject_root, "aud_mel.npy", downscale=4)
    idle = np.full((16, FEATURE_DIM), -15.0, np.float32)
    return LiveAvatar(renderer, subject, OutputOptions(PasteBack("box")), LogMelExtractor(), idle)


@pytest.fixture
def avatar(mini_subject):  # noqa: F811 - the fixture imported above
    live = live_avatar(mini_subject.root, MouthRenderer())
    yield live
    live.close()


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise bursts at 3 Hz: loud and quiet halves, like syllables."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(len(t)) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


def test_idle_then_speech_then_idle_again(avatar: LiveAvatar) -> None:
    stream = Stream(avatar)
    idle = [stream.next_window() for _ in range(5)]
    assert all((w == avatar.idle_window).all() and not pcm.any() for w, pcm in idle)
    utterance = avatar.utterance(speech(1.0))
    assert utterance.num_frames == 25 and utterance.windows.shape == (25, 16, FEATURE_DIM)
    stream.say(utterance)
    spoken = [stream.next_window() for _ in range(25 + 4)]
    assert not (spoken[0][0][4] == avatar.idle_window).all()  # frame 0 of the speech is the window's middle
    assert (spoken[0][0][:4] == avatar.idle_window).all()  # before the speech: silence
    audio = np.concatenate([pcm for _, pcm in spoken[:25]])
    assert np.array_equal(audio, utterance.pcm)  # the speech's samples, in order, 640 per frame
    assert not stream.speaking and (stream.next_window()[0] == avatar.idle_window).all()


def test_a_new_utterance_interrupts_at_the_next_frame(avatar: LiveAvatar) -> None:
    stream = Stream(avatar)
    first, second = avatar.utterance(speech(2.0, seed=1)), avatar.utterance(speech(1.0, seed=2))
    stream.say(first)
    for _ in range(10):
        stream.next_window()
    stream.say(second)
    window, pcm = stream.next_window()
    assert np.array_equal(pcm, second.pcm[:SAMPLES_PER_FRAME])
    assert np.array_equal(window[4], second.windows[0])


def test_queued_utterances_follow_each_other_without_a_gap_and_say_drops_the_queue(avatar: LiveAvatar) -> None:
    stream = Stream(avatar)
    parts = [avatar.utterance(speech(seconds, seed=10 + k)) for k, seconds in enumerate((0.6, 0.1, 0.8))]
    stream.say(parts[0])
    for part in parts[1:]:
        stream.queue(part)
    assert stream.frames_ahead() == 15 + 2 + 20
    heard = [stream.next_window() for _ in range(37)]
    assert np.array_equal(np.concatenate([pcm for _, pcm in heard]), np.concatenate([p.pcm for p in parts]))
    rows = np.concatenate([p.windows for p in parts])  # the parts' windows as one utterance
    for t in (13, 14, 15, 16, 17, 20):  # across both seams, the 2-frame part wholly inside the attention window
        np.testing.assert_array_equal(heard[t][0], rows[t - 4:t + 4])
    assert (heard[-1][0][5:] == avatar.idle_window).all() and stream.frames_ahead() == 0  # nothing after the last
    stream.say(parts[0])
    stream.queue(parts[2])
    stream.say(parts[1])  # an interruption drops what was queued too
    assert [np.array_equal(stream.next_window()[1], pcm) for pcm in np.split(parts[1].pcm, 2)] == [True, True]
    assert not stream.next_window()[1].any() and not stream.speaking


def test_frames_keep_the_head_moving_whether_or_not_it_speaks(avatar: LiveAvatar) -> None:
    stream = Stream(avatar)
    frames = [stream.next()[0] for _ in range(3)]
    stream.say(avatar.utterance(speech(0.5)))
    frames += [stream.next()[0] for _ in range(3)]
    assert stream.tick == 6 and frames[0].shape == (512, 512, 3)  # pasted into the original 512 px frame
    levels = [f[PATCH].mean() for f in frames]
    assert len(set(np.round(levels[:3], 3))) == 1 and np.ptp(levels[3:]) > 0  # idle is steady; speech moves it


def test_lookahead_is_stated_and_short() -> None:
    assert 0.25 < LOOKAHEAD_SECONDS < 0.35



def test_live_input_windows_are_the_whole_utterance_windows_once_the_lookahead_is_in(avatar: LiveAvatar) -> None:
    wav = speech(3.0, seed=3)
    whole = avatar.utterance(wav)
    live = LiveInput(avatar.extractor)
    t = 40  # a frame well inside the speech
    live.append(wav[: t * SAMPLES_PER_FRAME + live.lookahead - 1])
    assert not live.ready(t)
    live.append(wav[t * SAMPLES_PER_FRAME + live.lookahead - 1:])
    assert live.ready(t) and live.ready(t + 10)
    expected = whole.windows[t - 4: t + 4]  # frames t-4 .. t+3, as the attention window takes them
    np.testing.assert_allclose(live.window(t), expected, rtol=1e-5, atol=1e-4)
    assert np.array_equal(live.pcm(t), whole.pcm[t * SAMPLES_PER_FRAME:(t + 1) * SAMPLES_PER_FRAME])


def test_a_stream_follows_live_speech_as_it_arrives_and_keeps_its_memory_bounded(avatar: LiveAvatar) -> None:
    spare = 2  # frames of audio a stream keeps in hand (fixed here: the appends below come all at once)
    stream, live = Stream(avatar), LiveInput(avatar.extractor, keep_seconds=2.0, spare_frames=spare)
    stream.listen(live)
    assert (stream.next_window()[0] == avatar.idle_window).all()  # nothing heard yet: silent
    wav = speech(4.0, seed=4)
    start = live.lookahead + spare * SAMPLES_PER_FRAME  # what a stream waits for before it speaks
    live.append(wav[:start])
    heard = [stream.next_window()]
    for k in range(30):  # then a frame of speech arrives for each frame shown: every sample is said, in order
        live.append(wav[start + k * SAMPLES_PER_FRAME: start + (k + 1) * SAMPLES_PER_FRAME])
        heard.append(stream.next_window())
    assert np.array_equal(np.concatenate([pcm for _, pcm in heard]), live_pcm(wav, len(heard)))
    said = start + 30 * SAMPLES_PER_FRAME
    live.append(wav[said:said + 12 * SAMPLES_PER_FRAME])  # half a second at once (the renderer stalled): it skips
    last = (live.received - live.lookahead) // SAMPLES_PER_FRAME  # to the newest frames, the jitter spare kept:
    heard = [stream.next_window() for _ in range(12)]  # frames last - spare .. last, then held, silent
    shown = spare + 1
    assert np.array_equal(np.concatenate([pcm for _, pcm in heard[:shown]]),
                          live_pcm(wav, last + 1)[-shown * SAMPLES_PER_FRAME:])
    assert all((w == heard[shown - 1][0]).all() and not pcm.any() for w, pcm in heard[shown:])
    live.append(wav[said + 12 * SAMPLES_PER_FRAME:])
    assert live.received == len(wav) and len(live._audio) == 2 * SAMPLE_RATE  # only the last 2 s are kept


def test_a_stream_drops_frames_of_silence_to_get_back_to_its_jitter_spare_but_never_frames_of_speech(avatar) -> None:
    rng = np.random.default_rng(7)
    quiet = (0.002 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)  # a quiet room, under QUIET_RMS
    loud = 0.3 * rng.standard_normal(3 * SAMPLE_RATE).astype(np.float32)
    for wav, kept in ((quiet, [1, 3, 4, 5]), (loud, [0, 1, 2, 3, 4, 5])):
        stream, live = Stream(avatar), LiveInput(avatar.extractor, spare_frames=2)
        stream.listen(live)
        behind = 2 + 3  # frames 0 .. 5 can render at once: 3 more than the spare, not more (the stall's skip)
        live.append(wav[: live.lookahead + behind * SAMPLES_PER_FRAME])
        said = [stream.next_window()[1] for _ in range(8)]
        frames = [pcm for pcm in said if pcm.any()]  # then held, silent, until more comes
        all_pcm = live_pcm(wav, behind + 1).reshape(behind + 1, SAMPLES_PER_FRAME)
        shown = [next(t for t in range(behind + 1) if np.array_equal(pcm, all_pcm[t])) for pcm in frames]
        # quiet: frame 0 dropped (5 wait beyond it), 1 shown, 2 dropped (3 beyond), then 2 beyond: the spare, kept
        assert shown == kept, (shown, kept)
        assert stream.live_figures() == Counter(shown=len(kept), dropped_silence=6 - len(kept))  # held till the end:
        live.append(wav[live.received: live.received + 3 * SAMPLES_PER_FRAME])  # not a stall, unless audio comes
        stream.next_window()  # again: then the frames held while waiting for it were one
        assert stream.live_figures() == Counter(shown=len(kept) + 1, dropped_silence=6 - len(kept), held=8 - len(kept),
                                             stalls=1)


def test_a_stall_makes_a_stream_keep_a_frame_more_in_hand_until_it_has_been_calm(avatar, monkeypatch) -> None:
    import ernerf.apps.live.avatar as live_module

    wav = 0.3 * np.random.default_rng(2).standard_normal(10 * SAMPLE_RATE).astype(np.float32)
    stream, live = Stream(avatar), LiveInput(avatar.extractor, spare_frames=1)
    stream.listen(live)
    live.append(wav[: live.lookahead + SAMPLES_PER_FRAME])
    assert stream.next_window()[1].any()  # speaking

    def frames_until_it_speaks_again() -> int:
        """Run dry, then count the frames of audio that must come, one by one, before a frame is shown again."""
        while stream.next_window()[1].any():
            pass
        for count in range(1, 10):
            live.append(wav[live.received: live.received + SAMPLES_PER_FRAME])
            if stream.next_window()[1].any():
                return count
        raise AssertionError("the stream never spoke again")

    first = frames_until_it_speaks_again()  # the frame itself and the input's spare of 1
    assert first == 2
    assert frames_until_it_speaks_again() == first + 1  # that wait was a stall: one frame more kept in hand
    monkeypatch.setattr(live_module, "JITTER_HISTORY_SECONDS", 0.0)  # calm for long enough: back to the input's
    assert frames_until_it_speaks_again() == first
    assert stream.live_figures()["stalls"] == 3


def test_the_spare_a_stream_keeps_follows_how_late_the_packets_come(avatar) -> None:
    packet = 320  # 20 ms, as WebRTC sends audio

    def spare_after(lateness: list[float], start: float = 0.0, live: LiveInput | None = None) -> int:
        live = live or LiveInput(avatar.extractor)
        for k, late in enumerate(lateness):  # packet k is due when its last sample has been spoken
            live.append(np.zeros(packet, np.float32), arrived=start + (k + 1) * 0.02 + late)
        return live.spare_frames()

    assert LiveInput(avatar.extractor).spare_frames() == START_SPARE_FRAMES  # nothing heard yet
    assert spare_after([0.0] * 200) == 1  # on time: the packets' phase against the frame clock only
    assert spare_after([0.003 * (k % 3) for k in range(200)]) == 1  # a few ms of jitter
    assert spare_after([0.1 if k % 10 == 0 else 0.0 for k in range(200)]) == 4  # 10% come 100 ms late: 20 + 100 ms
    assert spare_after([1.0 if k % 2 else 0.0 for k in range(200)]) == MAX_SPARE_FRAMES
    assert LiveInput(avatar.extractor, spare_frames=3).spare_frames() == 3  # fixed
    live = LiveInput(avatar.extractor)
    spare_after([0.1 if k % 10 == 0 else 0.0 for k in range(200)], live=live)  # 4 s of a bad network, then 12 s of a
    assert spare_after([0.0] * 600, start=4.0, live=live) == 1  # good one: the last 10 s count


def live_pcm(wav: np.ndarray, frames: int) -> np.ndarray:
    return (np.clip(wav[: frames * SAMPLES_PER_FRAME], -1, 1) * 32767).astype(np.int16)

# ---------------------------------------------------------------- over WebRTC, on the loopback

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def served_on_loopback(avatar: LiveAvatar, decode=lambda data: speech(1.0)):
    """Serve `avatar` on 127.0.0.1 (typed text says 1.5 s of `speech`, an uploaded file what `decode` makes of it,
    by default 1 s of `speech`); -> its URL."""
    from ernerf.apps.live.server import LiveServer

    async with serving(LiveServer(avatar, speak=lambda text: [speech(1.5)], decode=decode)) as url:
        yield url


@contextlib.asynccontextmanager
async def serving(server):
    """`server` (a LiveServer) on a loopback port: -> its URL."""
    from aiohttp import web

    runner = web.AppRunner(server.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _client_of(avatar: LiveAvatar, exchange, microphone=None) -> dict:
    """Serve `avatar` on the loopback, connect a WebRTC client (sending `microphone`, an aiortc audio track, if given)
    and run `exchange(http, url, session, got)`; -> what the client received: (time, mouth patch level) per video
    frame and (time, mean |sample|) per audio frame, and what `exchange` put in."""
    async with served_on_loopback(avatar) as url:
        return await _connect_client(url, exchange, microphone)


async def _connect_client(url: str, exchange, microphone) -> dict:
    from aiohttp import ClientSession
    from aiortc import RTCPeerConnection

    from ernerf.apps.live.client import connect

    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    if microphone is None:
        pc.addTransceiver("audio", direction="recvonly")
    else:
        pc.addTrack(microphone)
    got: dict = {"video": [], "audio": []}
    tasks = []

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                frame = await track.recv()
                now = asyncio.get_running_loop().time()
                if track.kind == "video":
                    got["video"].append((now, frame.to_ndarray(format="rgb24")[PATCH].mean()))
                else:
                    got["audio"].append((now, np.abs(frame.to_ndarray()).mean()))
        tasks.append(asyncio.ensure_future(read()))

    try:
        async with ClientSession() as http:
            await exchange(http, url, await connect(pc, http, url), got)
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
    return got


async def _idle_then_say(http, url: str, session: str, got: dict) -> None:
    await asyncio.sleep(2.0)
    async with http.post(f"{url}/say", json={"session": "nope", "text": "hi"}) as r:
        got["unknown_session"] = r.status
    async with http.post(f"{url}/say", data=b"not json") as r:
        got["malformed"] = r.status
    got["speech_from"] = asyncio.get_running_loop().time()
    async with http.post(f"{url}/say", json={"session": session, "text": "hello there"}) as r:
        got["said"] = await r.json()
    await asyncio.sleep(2.5)


def test_a_webrtc_client_receives_the_avatar_idle_then_speaking(avatar: LiveAvatar) -> None:
    got = asyncio.run(_client_of(avatar, _idle_then_say))
    assert got["unknown_session"] == 404 and got["malformed"] == 400
    assert got["said"]["frames"] == 38  # 1.5 s of speech
    video, start = got["video"], got["speech_from"]
    idle = [level for t, level in video if t < start]
    talking = [level for t, level in video if t > start + 0.5]
    assert len(video) >= 2.5 * 10, f"{len(video)} frames in 4.5 s"  # well under 25/s only on a starved CPU
    assert np.ptp(idle[5:]) < 3 and np.ptp(talking) > 3  # steady while silent, moving with speech (0-255 levels)
    speaking_audio = [level for t, level in got["audio"] if t > start + 0.5]
    assert max(speaking_audio) > 100 and max(level for t, level in got["audio"] if t < start) == 0


# ---------------------------------------------------------------- serve.py as a user runs it

def test_serve_py_refuses_an_untrained_subject_and_a_busy_port_in_one_line(tmp_path) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.reliability import assert_user_error

    def serve(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "serve.py", *args, f"paths.runs_root={tmp_path}"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)

    assert_user_error(serve("subject=nobody", f"port={free_port()}"), "nobody", "python train.py")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert_user_error(serve("subject=nobody", f"port={taken.getsockname()[1]}"), "in use", "port=")
    assert_user_error(serve(), "subject= is missing")


def test_a_webrtc_microphone_drives_the_avatar_as_it_speaks(avatar: LiveAvatar, tmp_path) -> None:
    pytest.importorskip("aiortc")
    from ernerf.apps.tts import write_wav

    wav = np.concatenate([np.zeros(int(1.5 * SAMPLE_RATE), np.float32), speech(3.0, seed=5)])
    write_wav(tmp_path / "mic.wav", wav, SAMPLE_RATE)
    from aiortc.contrib.media import MediaPlayer

    async def listen(http, url, session, got) -> None:
        await asyncio.sleep(5.0)

    got = asyncio.run(_client_of(avatar, listen, MediaPlayer(str(tmp_path / "mic.wav")).audio))
    video = got["video"]
    assert len(video) > 40, f"{len(video)} frames in 5 s"
    levels = np.array([level for _, level in video])
    times = np.array([t for t, _ in video]) - video[0][0]
    assert np.ptp(levels[(times > 0.6) & (times < 1.2)]) < 3  # the microphone's first 1.5 s are silent: so is the avatar
    assert np.ptp(levels[times > 2.5]) > 3  # then it speaks what it hears
    assert max(level for _, level in got["audio"]) > 100  # and its voice comes back with the picture


def test_the_page_script_parses(tmp_path) -> None:
    import shutil
    import subprocess

    from ernerf.apps.live.page import PAGE

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node.js to check the page's script with")
    script = tmp_path / "page.js"
    script.write_text(PAGE[PAGE.index("<script>") + len("<script>"): PAGE.index("</script>")])
    done = subprocess.run([node, "--check", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(f'id="{name}"' in PAGE for name in ("avatar", "text", "say", "file", "send", "mic"))


def test_a_python_client_of_the_server_imports_neither_torch_nor_the_model() -> None:
    """`ernerf.apps.live.client` (the stream benchmark's client processes, users' scripts) loads without the avatar:
    the live package imports its names only when they are asked for (here, in this process: they resolve)."""
    import subprocess
    import sys

    import ernerf.apps.live as live
    from tests.conftest import REPO

    heavy = ("torch", "lightning", "ernerf.apps.live.avatar")
    code = f"import sys, ernerf.apps.live.client\nprint(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:] + done.stdout
    assert live.LOOKAHEAD_SECONDS == LOOKAHEAD_SECONDS and live.LiveAvatar is LiveAvatar
    assert live.serve_command.__module__ == "ernerf.apps.live.serve" and sorted(live.__all__) == sorted(
        ["LOOKAHEAD_SECONDS", "LiveAvatar", "Stream", "Utterance", "serve_command"])


def test_the_stream_benchmark_times_clients_in_processes_of_their_own_from_the_speech_they_send(avatar, tmp_path):
    pytest.importorskip("aiortc")
    from ernerf.apps.tts import write_wav
    from tests.bench.scripts import bench_module

    stream_bench = bench_module("stream")
    write_wav(tmp_path / "mic.wav", np.concatenate([np.zeros(SAMPLE_RATE, np.float32), speech(2.0, seed=3)]),
              SAMPLE_RATE)
    clients = stream_bench.ClientProcesses(1)
    try:
        results, per_call, live = asyncio.run(stream_bench.run(avatar, 2, 1.0, 3.0, tmp_path / "mic.wav",
                                                               clients=clients))
    finally:
        clients.close()
    assert len(results) == 2 and per_call == 1.0
    # the server counted the live frames it showed: most frames the clients received (the first wait for the spare),
    # and not many more: those in flight when a client stopped reading, and those shown until the server saw its
    # connection close (up to a second's frames on a loaded machine); counting each frame twice would still fail it
    received, second = sum(r["frames"] for r in results), sum(r["fps"] for r in results)
    assert received / 2 <= live["shown"] <= received + 4 + second
    for result in results:
        assert result["fps"] > 5, result
        # heard back no sooner than the features' look-ahead after it was sent (and not seconds later)
        assert LOOKAHEAD_SECONDS < result["latency_s"] < 3.0, result


# ---------------------------------------------------------------- what the server sends, and when

class _InstantQueue:
    """A render queue that renders every frame at once: frame k is all k's, its audio all k's."""

    def __init__(self) -> None:
        self.rendered = 0

    def join(self) -> None:
        pass

    def leave(self) -> None:
        pass

    async def next_frame(self, stream):
        self.rendered += 1
        k = self.rendered - 1
        return np.full((4, 4, 3), k, np.uint8), np.full(SAMPLES_PER_FRAME, k, np.int16)


def test_a_frames_audio_is_sent_with_the_frame_not_when_it_is_rendered_ahead() -> None:
    pytest.importorskip("aiortc")
    from ernerf.apps.live.server import AvatarAudio, AvatarVideo, FramePump

    async def exchange() -> tuple[int, list[int], list[int]]:
        render_queue = _InstantQueue()
        pump = FramePump(stream=None, render_queue=render_queue, ahead=2)
        video, audio = AvatarVideo(pump), AvatarAudio(pump)
        pump.start()
        await asyncio.sleep(0.05)  # the pump renders its 2 frames ahead (and a third waits to be queued)
        sent_before = len(pump.audio)
        shown = [int((await video.recv()).to_ndarray(format="rgb24")[0, 0, 0]) for _ in range(2)]
        heard = [int((await audio.recv()).to_ndarray()[0, 0]) for _ in range(4)]  # 20 ms each
        pump.task.cancel()
        return sent_before, shown, heard

    sent_before, shown, heard = asyncio.run(exchange())
    assert sent_before == 0  # frames rendered ahead hold their audio back
    assert shown == [0, 1] and heard == [0, 0, 1, 1]  # each frame's 40 ms go out with it, in order


def test_a_microphone_is_received_without_aiortcs_80_ms_prefetch() -> None:
    pytest.importorskip("aiortc")
    from aiortc import RTCPeerConnection
    from aiortc.rtp import RtpPacket

    from ernerf.apps.live.server import MICROPHONE_PREFETCH, receive_promptly

    async def receiver_buffer():
        pc = RTCPeerConnection()
        receiver = pc.addTransceiver("audio", direction="recvonly").receiver
        try:
            # the name this aiortc keeps its buffer under (a renamed one would leave the 80 ms in, with a warning)
            assert receive_promptly(pc, receiver.track)
            return receiver._RTCRtpReceiver__jitter_buffer
        finally:
            await pc.close()

    buffer = asyncio.run(receiver_buffer())
    assert MICROPHONE_PREFETCH == 1

    def packet(n: int) -> RtpPacket:
        sent = RtpPacket(payload_type=111, sequence_number=n, timestamp=960 * n)
        sent._data = b"opus"  # the decoder's payload, as aiortc's receiver sets it before buffering
        return sent

    released = [buffer.add(packet(n))[1] for n in range(3)]
    assert released[0] is None and released[1] is not None  # a 20 ms packet goes on as soon as the next one comes
    assert released[1].timestamp == 0


def test_serve_config_renders_one_frame_ahead_by_default_and_refuses_none() -> None:
    from ernerf.apps.live.serve import ahead_frames
    from ernerf.errors import ErnerfError
    from tests.conftest import compose

    assert ahead_frames(compose("serve", ["subject=x"]).render) == 1
    assert ahead_frames(compose("serve", ["subject=x", "render.ahead_frames=2"]).render) == 2
    with pytest.raises(ErnerfError, match="render.ahead_frames=0"):
        ahead_frames(compose("serve", ["subject=x", "render.ahead_frames=0"]).render)


def test_after_a_late_frame_the_video_moves_its_schedule_on_instead_of_bursting_to_catch_up() -> None:
    pytest.importorskip("aiortc")
    from ernerf.apps.live.server import AvatarVideo, FramePump

    class StallingQueue(_InstantQueue):
        async def next_frame(self, stream):
            if self.rendered == 5:
                await asyncio.sleep(0.4)  # the renderer stalls for 10 frame times
            return await super().next_frame(stream)

    async def sent_at() -> list[float]:
        pump = FramePump(stream=None, render_queue=StallingQueue(), ahead=1)
        video = AvatarVideo(pump)
        pump.start()
        times = []
        for _ in range(12):
            await video.recv()
            times.append(time.monotonic())
        pump.task.cancel()
        return times

    gaps = np.diff(asyncio.run(sent_at()))
    assert gaps[4] > 0.3  # the stall itself
    # then one frame of catching up at most, and the frame rate again: not ten frames at once
    assert (gaps[5:] > 0.03).sum() >= len(gaps[5:]) - 1, gaps
