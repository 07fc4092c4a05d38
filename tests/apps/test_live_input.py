"""Bad input to the live server: texts of many pages said sentence by sentence, huge uploads, malformed offers and a
client that leaves mid-utterance, while the other clients go on."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib

import numpy as np
import pytest

from ernerf.apps.live.avatar import LiveAvatar, Stream
from ernerf.apps.live.serve import SentenceSpeech, decode_upload, text_to_speech
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.errors import ErnerfError
from tests.apps.test_live import avatar, serving, speech  # noqa: F401 - the avatar fixture
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture the avatar needs

pytest.importorskip("aiortc")

from aiohttp import ClientSession  # noqa: E402 - after the skip: the live extra may be missing
from aiortc import RTCPeerConnection  # noqa: E402

from ernerf.apps.live.client import connect  # noqa: E402
from ernerf.apps.live.server import SPEECH_AHEAD_SECONDS, FramePump, InputLimits, LiveServer, Session  # noqa: E402


class FastSpeech:
    """A fake SpeechEngine that takes `delay` seconds a sentence: noise bursts, 40 ms a word, seeded by the sentence
    (the same sentence sounds the same), and the sentences it was asked for, in order."""

    sample_rate = SAMPLE_RATE
    sentence_pause = 0.08

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.said = delay, []

    def synthesize(self, sentence: str) -> np.ndarray:
        time.sleep(self.delay)
        self.said.append(sentence)
        return speech(0.04 * len(sentence.split()), seed=zlib.crc32(sentence.encode()))


def pages(sentences: int) -> str:
    """A text of `sentences` numbered sentences of 10 words (about 40 to a page)."""
    return " ".join(f"This is sentence number {k} of a long text here." for k in range(sentences))


def expected_pcm(engine, text: str, avatar: LiveAvatar) -> np.ndarray:
    """The audio a stream says for `text`: its parts one after another."""
    return np.concatenate([avatar.utterance(wav).pcm for wav in SentenceSpeech(engine, text)])


def listener(server: LiveServer, avatar: LiveAvatar, name: str = "listener") -> Session:
    """A session whose stream the test advances itself (no WebRTC): what it says is checked frame by frame."""
    stream = Stream(avatar)
    server.sessions[name] = Session(RTCPeerConnection(), stream, FramePump(stream, server.render_queue))
    return server.sessions[name]


async def hear(session: Session, frames: int | None = None, wait: float = 10.0) -> np.ndarray:
    """The audio of the stream's next `frames` frames (None: until what it was asked to say is said), taking each
    frame as soon as it is queued; a frame not queued within `wait` seconds fails the test."""
    heard = []
    while frames is None or len(heard) < frames:
        deadline = time.monotonic() + wait
        while session.stream.frames_ahead() == 0 and not (frames is None and session.rest.done()):
            assert time.monotonic() < deadline, f"no speech queued after {len(heard)} frames"
            await asyncio.sleep(0.01)
        if session.stream.frames_ahead() == 0:
            break
        heard.append(session.stream.next_window()[1])
        await asyncio.sleep(0)  # let the text's synthesis go on meanwhile
    return np.concatenate(heard)


async def say(http: ClientSession, url: str, session: str, text: str) -> tuple[int, dict | str]:
    async with http.post(f"{url}/say", json={"session": session, "text": text}) as r:
        return r.status, (await r.json() if r.status == 200 else await r.text())


# ---------------------------------------------------------------- long texts


def test_a_text_of_pages_is_said_sentence_by_sentence_a_few_seconds_ahead(avatar: LiveAvatar) -> None:
    engine, text = FastSpeech(delay=0.005), pages(200)  # 5 pages
    server = LiveServer(avatar, text_to_speech(engine), decode=lambda data: speech(1.0))
    session = listener(server, avatar)

    async def exchange() -> dict:
        async with serving(server) as url, ClientSession() as http:
            status, said = await say(http, url, "listener", text)
            made_when_answered = len(engine.said)
            await asyncio.sleep(0.5)  # the look-ahead fills up
            ahead, made = session.stream.frames_ahead(), len(engine.said)
            heard = await hear(session, 300)
            return {"status": status, "said": said, "answered": made_when_answered, "ahead": ahead, "made": made,
                    "heard": heard, "made_after": len(engine.said)}

    got = asyncio.run(exchange())
    assert got["status"] == 200 and got["said"]["parts"] == 200
    part = 0.08 + 0.04 * 10  # seconds of one sentence and its pause
    assert got["said"]["seconds"] == pytest.approx(0.04 * 10, abs=0.04)  # the first part, which has no pause
    assert got["answered"] < 10  # answered once the first sentence was made, not the whole text
    assert SPEECH_AHEAD_SECONDS * FPS <= got["ahead"] <= (SPEECH_AHEAD_SECONDS + part) * FPS + 1
    assert got["made"] < 20 < got["made_after"] < 60  # a few seconds ahead of what is said, not the whole text
    whole = expected_pcm(FastSpeech(), text, avatar)
    assert np.array_equal(got["heard"], whole[:len(got["heard"])])  # each part in order, no gap or silence between


def test_a_new_utterance_drops_the_rest_of_a_long_text_and_its_synthesis_stops(avatar: LiveAvatar) -> None:
    engine = FastSpeech(delay=0.005)
    server = LiveServer(avatar, text_to_speech(engine), decode=lambda data: speech(1.0))
    session = listener(server, avatar)

    async def exchange() -> dict:
        async with serving(server) as url, ClientSession() as http:
            await say(http, url, "listener", pages(200))
            await hear(session, 50)  # the text is being made a few seconds ahead of this
            status, said = await say(http, url, "listener", "Now something else entirely.")
            old_made = sum(s.startswith("This is") for s in engine.said)
            heard = await hear(session)  # the new text to its end, and nothing of the old one after it
            await asyncio.sleep(0.3)
            return {"status": status, "said": said, "heard": heard, "old_made": old_made,
                    "old_made_after": sum(s.startswith("This is") for s in engine.said)}

    got = asyncio.run(exchange())
    assert got["status"] == 200 and got["said"]["parts"] == 1
    assert np.array_equal(got["heard"], expected_pcm(FastSpeech(), "Now something else entirely.", avatar))
    assert got["old_made_after"] <= got["old_made"] + 1  # at most the one being made when it was interrupted
    assert session.rest.done()


class Recorded:
    """A text's speech parts as `speak` gives them, and each part as it was made (espeak-ng's output varies by a few
    samples from one run to the next, so what was said is compared with what was made)."""

    def __init__(self, parts) -> None:
        self.parts, self.made = parts, []

    def __len__(self) -> int:
        return len(self.parts)

    def __iter__(self):
        for wav in self.parts:
            self.made.append(wav)
            yield wav


def test_espeak_says_a_few_sentences_one_after_another(avatar: LiveAvatar) -> None:
    pytest.importorskip("espeakng_loader")
    from ernerf.apps.tts import EspeakSpeech

    speak, spoken = text_to_speech(EspeakSpeech()), []

    def speak_recorded(text: str) -> Recorded:
        spoken.append(Recorded(speak(text)))
        return spoken[-1]

    server = LiveServer(avatar, speak_recorded, decode=lambda data: speech(1.0))
    session = listener(server, avatar)

    async def exchange() -> tuple[dict, np.ndarray]:
        async with serving(server) as url, ClientSession() as http:
            status, said = await say(http, url, "listener", "Hello there. How are you today? I am fine, thank you.")
            assert status == 200, said
            return said, await hear(session)

    said, heard = asyncio.run(exchange())
    parts = [avatar.utterance(wav) for wav in spoken[0].made]
    assert said["parts"] == len(parts) == 3 and said["frames"] == parts[0].num_frames
    assert all(np.abs(p.pcm).max() > 1000 for p in parts)  # each sentence is speech
    assert np.array_equal(heard, np.concatenate([p.pcm for p in parts]))


def test_a_text_over_the_limit_or_with_nothing_to_say_is_refused_with_the_reason(avatar: LiveAvatar) -> None:
    server = LiveServer(avatar, text_to_speech(FastSpeech()), decode=lambda data: speech(1.0),
                        limits=InputLimits(text_chars=1000))
    listener(server, avatar)

    async def exchange() -> list:
        async with serving(server) as url, ClientSession() as http:
            return [await say(http, url, "listener", text) for text in ("a" * 1001, "  ", "... !? --", "Fine.")]

    (over, over_text), (empty, _), (nothing, nothing_text), (fine, _) = asyncio.run(exchange())
    assert over == 413 and "1001 characters" in over_text and "limit of 1000" in over_text
    assert "limits.text_characters" in over_text
    assert empty == 400 and nothing == 400 and "nothing to say" in nothing_text
    assert fine == 200


# ---------------------------------------------------------------- uploads


def test_long_speech_in_parts_has_the_whole_files_windows_and_audio(avatar: LiveAvatar) -> None:
    wav = speech(25.3, seed=3)
    whole = avatar.utterance(wav)
    parts = list(avatar.utterances(wav, part_seconds=10.0))
    assert [p.num_frames for p in parts] == [250, 250, 132]
    np.testing.assert_allclose(np.concatenate([p.windows for p in parts]), whole.windows, rtol=0, atol=1e-5)
    assert np.array_equal(np.concatenate([p.pcm for p in parts]), whole.pcm)
    alone = avatar.utterance(wav[250 * 640: 500 * 640])  # the middle part made without the audio around it
    assert not np.allclose(alone.windows[:4], parts[1].windows[:4], atol=1e-3)  # its seam would differ


def test_an_upload_is_said_in_parts_made_as_it_goes_and_heard_whole(avatar: LiveAvatar) -> None:
    from ernerf.apps.live.server import UploadParts

    wav = speech(23.0, seed=4)
    made = []

    class CountingParts(UploadParts):  # how many parts were made when the upload was answered
        def __iter__(self):
            for part in super().__iter__():
                made.append(part.num_frames)
                yield part

    server = LiveServer(avatar, text_to_speech(FastSpeech()), decode=lambda data: wav)
    session = listener(server, avatar)

    async def exchange() -> dict:
        import ernerf.apps.live.server as server_module

        original, server_module.UploadParts = server_module.UploadParts, CountingParts
        try:
            async with serving(server) as url, ClientSession() as http:
                async with http.post(f"{url}/audio?session=listener", data=b"any file") as r:
                    status, said = r.status, await r.json()
                made_when_answered = len(made)
                heard = await hear(session)
        finally:
            server_module.UploadParts = original
        return {"status": status, "said": said, "answered": made_when_answered, "heard": heard}

    got = asyncio.run(exchange())
    assert got["status"] == 200 and got["said"]["parts"] == 3 and got["said"]["frames"] == 250
    assert got["answered"] == 1  # it starts once its first 10 s are made, not the whole file
    assert np.array_equal(got["heard"], avatar.utterance(wav).pcm)  # every part, in order, no gap between


def test_a_huge_upload_is_refused_with_a_message_that_names_the_limit(avatar: LiveAvatar) -> None:
    decoded = []
    server = LiveServer(avatar, text_to_speech(FastSpeech()), decode=decoded.append,
                        limits=InputLimits(upload_bytes=2**20))
    listener(server, avatar)
    huge = bytes(2 * 2**20)

    async def chunks():  # sent without a Content-Length: the limit is found while reading
        for k in range(0, len(huge), 2**16):
            yield huge[k:k + 2**16]

    async def exchange() -> list:
        async with serving(server) as url, ClientSession() as http:
            answers = []
            for body in (huge, chunks()):
                async with http.post(f"{url}/audio?session=listener", data=body) as r:
                    answers.append((r.status, await r.text()))
            return answers

    for status, text in asyncio.run(exchange()):
        assert status == 413 and "upload limit of 1 MiB" in text and "limits.upload_megabytes" in text
    assert not decoded


def test_audio_longer_than_the_limit_is_refused_after_decoding_only_the_limit(avatar: LiveAvatar, tmp_path) -> None:
    import functools

    from ernerf.io.audio import write_wav

    data = write_wav(tmp_path / "long.wav", speech(3.0), SAMPLE_RATE).read_bytes()
    assert len(decode_upload(data, max_seconds=3.0)) == 3 * SAMPLE_RATE
    with pytest.raises(ErnerfError, match=r"longer than 2 s.*limits\.audio_seconds"):
        decode_upload(data, max_seconds=2.0)
    server = LiveServer(avatar, text_to_speech(FastSpeech()), functools.partial(decode_upload, max_seconds=2.0))
    session = listener(server, avatar)

    async def upload() -> tuple[int, str]:
        async with serving(server) as url, ClientSession() as http:
            async with http.post(f"{url}/audio?session=listener", data=data) as r:
                return r.status, await r.text()

    status, text = asyncio.run(upload())
    assert status == 400 and "longer than 2 s" in text and not session.stream.speaking


# ---------------------------------------------------------------- offers and clients


async def receiving_client(http: ClientSession, url: str, frames: list) -> tuple[RTCPeerConnection, str]:
    """A WebRTC client receiving the avatar: -> (its connection, its session); the arrival time of each video frame
    is appended to `frames`."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")

    @pc.on("track")
    def on_track(track) -> None:
        async def read() -> None:
            with contextlib.suppress(Exception):  # the track ends when the connection closes
                while True:
                    await track.recv()
                    frames.append(time.monotonic())

        if track.kind == "video":
            asyncio.ensure_future(read())

    return pc, await connect(pc, http, url)


def test_a_malformed_offer_is_refused_with_the_reason_and_leaves_no_session(avatar: LiveAvatar) -> None:
    server = LiveServer(avatar, text_to_speech(FastSpeech()), decode=lambda data: speech(1.0))

    async def exchange() -> tuple[list, int]:
        audio_only = RTCPeerConnection()
        audio_only.addTransceiver("audio", direction="recvonly")
        await audio_only.setLocalDescription(await audio_only.createOffer())
        offers = [{"sdp": "not an SDP at all", "type": "offer"}, {"sdp": 42, "type": "offer"},
                  {"sdp": audio_only.localDescription.sdp, "type": "answer"},
                  {"sdp": audio_only.localDescription.sdp, "type": "offer"}, {"type": "offer"}]
        answers = []
        async with serving(server) as url, ClientSession() as http:
            for offer in offers:
                async with http.post(f"{url}/offer", json=offer) as r:
                    answers.append((r.status, await r.text()))
            sessions_after_bad = len(server.sessions)
            pc, session = await receiving_client(http, url, [])  # a good offer is still answered
            await pc.close()
        await audio_only.close()
        return answers, sessions_after_bad

    answers, sessions_after_bad = asyncio.run(exchange())
    assert [status for status, _ in answers] == [400] * 5 and sessions_after_bad == 0
    garbage, number, answer, audio_only, missing = (text for _, text in answers)
    assert "no audio and no video" in garbage and "no video" in audio_only and "receive both" in audio_only
    assert '"type": "offer"' in number and '"type": "offer"' in answer and "sdp, type" in missing


def test_a_client_that_leaves_mid_utterance_stops_its_stream_and_synthesis_only(avatar: LiveAvatar) -> None:
    engine = FastSpeech(delay=0.2)  # slower than speech ahead: still making the text when its client leaves
    server = LiveServer(avatar, text_to_speech(engine), decode=lambda data: speech(1.0))

    async def exchange() -> dict:
        async with serving(server) as url, ClientSession() as http:
            leaving_frames, staying_frames = [], []
            leaving, leaving_id = await receiving_client(http, url, leaving_frames)
            staying, staying_id = await receiving_client(http, url, staying_frames)
            start = time.monotonic()
            while not (leaving_frames and staying_frames) and time.monotonic() < start + 10:
                await asyncio.sleep(0.05)  # both connected and receiving
            status, _ = await say(http, url, leaving_id, pages(200))
            await asyncio.sleep(1.0)
            session = server.sessions[leaving_id]
            await leaving.close()
            left = time.monotonic()
            while leaving_id in server.sessions and time.monotonic() < left + 5:
                await asyncio.sleep(0.05)
            made = len(engine.said)
            await asyncio.sleep(1.5)
            got = {"status": status, "gone": leaving_id not in server.sessions, "sessions": list(server.sessions),
                   "rest_done": session.rest.done(), "pump_done": session.pump.task.done(),
                   "made": made, "made_after": len(engine.said), "left": left,
                   "leaving_frames": len(leaving_frames), "staying_after": [t for t in staying_frames if t > left]}
            await staying.close()
            return got | {"staying_id": staying_id}

    got = asyncio.run(exchange())
    assert got["status"] == 200 and got["leaving_frames"] > 0
    assert got["gone"] and got["sessions"] == [got["staying_id"]]
    assert got["rest_done"] and got["pump_done"] and got["made_after"] <= got["made"] + 1
    assert len(got["staying_after"]) >= 5, "the other client stopped receiving frames"
