"""Frames of several live streams rendered together: equal to one at a time, each to its own stream, none stalled."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from ernerf.apps.inference import CropRequest, load_subject, render_crop, render_crops
from ernerf.apps.live.avatar import LiveAvatar, Stream
from ernerf.apps.live.render_queue import RenderBatching, RenderQueue
from ernerf.systems.talking_head import TalkingHeadSystem
from tests.apps.test_live import MouthRenderer, live_avatar, speech
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture
from tests.postprocess.mini_subject import FEATURE_DIM
from tests.systems.test_talking_head import build

# float32 rounding of one model run, in relative terms. A batch multiplies each point's attention by its own frame's
# audio code before the first layer where a frame alone folds the code into that layer's weights, and marches its
# rays in other chunks: the same products, rounded in another order. Over the ~100-term sums of the field's layers
# and the 8 samples of a ray that differs by at most some hundred float32 epsilons (1.2e-7), far below what one
# frame's audio changes.
BATCH_RTOL = 1e-5
BATCH_ATOL = 1e-5


class BatchMouthRenderer(MouthRenderer):
    """The fake mouth renderer, also rendering several frames in one call; records how many frames each call had."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.gate = threading.Event()  # cleared: a call waits for it (a stream leaves while a batch renders)
        self.gate.set()
        self.rendering = threading.Event()

    def render_image(self, c2w, intrinsics, H, W, audio_window, eye, frame_index, bg, torso_frame=None):
        self.calls.append(1)
        return self._render(c2w, intrinsics, H, W, audio_window, eye, frame_index, bg)

    def render_images(self, c2w, intrinsics, H, W, audio_windows, eyes, bg, torso_frames=None):
        self.calls.append(len(c2w))
        self.rendering.set()
        self.gate.wait(10.0)
        frames = [self._render(c2w[b], intrinsics, H, W, audio_windows[b], None, None, bg[b]) for b in range(len(c2w))]
        return {name: torch.stack([f[name] for f in frames]) for name in frames[0]}

    def _render(self, *args):
        return super().render_image(*args)


@pytest.fixture
def batch_avatar(mini_subject):  # noqa: F811 - the fixture imported above
    live = live_avatar(mini_subject.root, BatchMouthRenderer())
    yield live
    live.close()


@pytest.mark.parametrize("stage", ["head", "torso"])
def test_frames_rendered_together_equal_frames_rendered_one_at_a_time(mini_subject, stage) -> None:  # noqa: F811
    torch.manual_seed(0)
    system = audible(build(*(["stage=torso"] if stage == "torso" else []), num_frames=12).eval())
    assert (system.torso is not None) == (stage == "torso")  # the torso is drawn behind the head, frame by frame
    subject = load_subject(mini_subject.root, "aud_mel.npy", downscale=8)
    rng = np.random.default_rng(0)
    if system.torso is not None:
        with torch.no_grad():
            system.torso.individual_codes.normal_(0.0, 3.0)  # frames' torsos that differ, as trained ones do
    requests = [CropRequest(subject.poses[i], float(subject.eye[i]), rng.normal(-8, 6, (8, 16, FEATURE_DIM)),
                            rng.random((subject.height, subject.width, 3)).astype(np.float32), frame=i)
                for i in (0, 5, 9)]
    together = render_crops(system, subject, requests)
    alone = [render_crop(system, subject, r.pose, r.eye, r.window, r.bg, frame=r.frame) for r in requests]
    for batched, single in zip(together, alone):
        for name in ("rgb", "depth", "opacity"):
            np.testing.assert_allclose(batched[name], single[name], rtol=BATCH_RTOL, atol=BATCH_ATOL)
    if system.torso is not None:  # each frame drew its own torso, not the mean one
        r = requests[1]
        mean = render_crop(system, subject, r.pose, r.eye, r.window, r.bg)
        assert np.abs(mean["rgb"].astype(int) - together[1]["rgb"]).max() >= 3  # float noise moves a pixel by 1
    assert alone[0]["opacity"].std() > 0.01  # the field has shape: what is compared is rendered, not background
    other_audio = render_crop(system, subject, requests[0].pose, requests[0].eye, requests[1].window, requests[0].bg)
    assert np.abs(other_audio["rgb"] - alone[0]["rgb"]).max() > 100 * BATCH_ATOL  # a mix-up would show


def audible(system: TalkingHeadSystem) -> TalkingHeadSystem:
    """A fresh system whose frames follow their audio as a trained one's do. At initialisation they hardly do: the
    hash grid's features are ~1e-4 and the field's MLPs have no bias, so the audio attention is ~0; and the audio
    net's codes are mostly its bias. Features of a trained grid's size and a louder code make the audio count."""
    with torch.no_grad():
        for grid in system.field.encoder.parameters():
            grid.uniform_(-1.0, 1.0)
        system.audio_encoder.net.mlp[-1].weight.mul_(100.0)
        system.field.audio_att_net[-1].weight.mul_(10.0)
    return system


def test_several_streams_each_receive_their_own_frames_in_order(batch_avatar: LiveAvatar) -> None:
    queue = RenderQueue(batch_avatar, RenderBatching(frames=4, wait_seconds=1.0))
    loudness = (0.05, 0.3, 1.0)  # each stream says its own utterance, on its own clock
    streams = [Stream(batch_avatar, start_tick=7 * k) for k in range(3)]
    alone = [Stream(batch_avatar, start_tick=7 * k) for k in range(3)]  # twins, rendered frame by frame
    for k, level in enumerate(loudness):
        for stream in (streams[k], alone[k]):
            stream.say(batch_avatar.utterance(level * speech(1.0, seed=k)))
            queue.join()
    queue.leave(), queue.leave(), queue.leave()  # the twins do not ask the queue
    try:
        for step in range(6):
            got = [f.result(10.0) for f in [queue.submit(s) for s in streams]]
            expected = [twin.next() for twin in alone]
            for (frame, pcm), (want_frame, want_pcm) in zip(got, expected):
                assert np.array_equal(frame, want_frame) and np.array_equal(pcm, want_pcm)
            assert len({float(frame.mean()) for frame, _ in got}) == 3  # the streams' frames differ: mix-ups show
    finally:
        queue.close()
    assert queue.batch_sizes == {3: 6}  # all three rendered in one call each time, not waited for longer
    assert [s.tick for s in streams] == [6, 13, 20]


def test_the_servers_frame_pumps_batch_their_streams_and_each_gets_its_own_frames_and_sound(batch_avatar) -> None:
    from ernerf.apps.live.server import FramePump, LiveServer

    server = LiveServer(batch_avatar, speak=lambda text: [], decode=lambda data: speech(1.0),
                        batching=RenderBatching(frames=4, wait_seconds=0.1))
    streams = [Stream(batch_avatar, start_tick=5 * k) for k in range(3)]
    twins = [Stream(batch_avatar, start_tick=5 * k) for k in range(3)]  # the same streams, rendered frame by frame
    for k, level in enumerate((0.05, 0.3, 1.0)):
        utterance = batch_avatar.utterance(level * speech(1.0, seed=k))
        streams[k].say(utterance)
        twins[k].say(utterance)

    async def run() -> tuple[list[list[np.ndarray]], list[np.ndarray]]:
        pumps = [FramePump(stream, server.render_queue) for stream in streams]
        for pump in pumps:
            pump.start()
        frames: list[list[np.ndarray]] = [[] for _ in pumps]
        for _ in range(5):  # the clients take their frames in turn, as WebRTC tracks at one frame rate do
            for k, pump in enumerate(pumps):
                frame, pcm = await asyncio.wait_for(pump.next_frame(), 10.0)
                await pump.send_audio(pcm)  # as the video track does when the frame goes out
                frames[k].append(frame)
        sound = [np.concatenate([await pump.next_audio() for _ in range(10)]) for pump in pumps]  # 20 ms each
        for pump in pumps:
            pump.stop()
        await server.shutdown(None)
        return frames, sound

    frames, sound = asyncio.run(run())
    for k, twin in enumerate(twins):
        expected = [twin.next() for _ in range(5)]
        assert all(np.array_equal(got, want) for got, (want, _) in zip(frames[k], expected))
        assert np.array_equal(sound[k], np.concatenate([pcm for _, pcm in expected]))
    assert max(server.render_queue.batch_sizes) == 3  # the three streams' frames were rendered together


def test_a_stream_that_leaves_mid_batch_does_not_stall_the_others(batch_avatar: LiveAvatar) -> None:
    renderer: BatchMouthRenderer = batch_avatar.renderer
    queue = RenderQueue(batch_avatar, RenderBatching(frames=4, wait_seconds=0.05))
    staying, leaving = Stream(batch_avatar), Stream(batch_avatar, start_tick=3)

    async def run() -> list[int]:
        queue.join(), queue.join()
        renderer.gate.clear()
        first = asyncio.ensure_future(queue.next_frame(staying))
        gone = asyncio.ensure_future(queue.next_frame(leaving))
        await asyncio.get_running_loop().run_in_executor(None, renderer.rendering.wait, 10.0)
        gone.cancel()  # the client leaves while its frame renders with the other's
        queue.leave()
        renderer.gate.set()
        await first
        start = time.monotonic()
        for _ in range(5):
            await asyncio.wait_for(queue.next_frame(staying), 10.0)
        return [time.monotonic() - start]

    try:
        (seconds,) = asyncio.run(run())
    finally:
        queue.close()
    assert renderer.calls[0] == 2 and renderer.calls[1:] == [1] * 5  # after it left, frames render alone
    assert staying.tick == 6 and leaving.tick == 4  # the one who left got no frame after its last
    assert seconds < 5 * 0.05 + 2.0  # never waiting for the stream that left beyond the bound


def test_a_stream_that_stops_asking_is_waited_for_no_longer_than_the_bound(batch_avatar: LiveAvatar) -> None:
    queue = RenderQueue(batch_avatar, RenderBatching(frames=4, wait_seconds=0.2))
    queue.join(), queue.join()  # two streams joined; one never asks (a client gone silent, not yet noticed)
    stream = Stream(batch_avatar)
    try:
        start = time.monotonic()
        frames = [queue.submit(stream).result(10.0) for _ in range(3)]
        seconds = time.monotonic() - start
    finally:
        queue.close()
    assert len(frames) == 3 and queue.batch_sizes == {1: 3}
    assert 3 * 0.2 <= seconds < 3 * 0.2 + 2.0  # each frame waited the bound, then rendered alone


def test_serve_config_batches_one_frame_by_default_and_refuses_less() -> None:
    from ernerf.apps.live.serve import render_batching
    from ernerf.errors import ErnerfError
    from tests.conftest import compose

    assert render_batching(compose("serve", ["subject=x"]).render) == RenderBatching(frames=1, wait_seconds=0.005)
    assert render_batching(compose("serve", ["subject=x", "render.batch_frames=4"]).render).frames == 4
    with pytest.raises(ErnerfError, match="render.batch_frames=0"):
        render_batching(compose("serve", ["subject=x", "render.batch_frames=0"]).render)


def test_the_queue_accounts_the_render_threads_time_to_the_model_when_the_model_is_slow(batch_avatar) -> None:
    model_seconds = 0.03
    launch_heads = batch_avatar.launch_heads

    def slow(heads):
        time.sleep(model_seconds)
        return launch_heads(heads)

    batch_avatar.launch_heads = slow
    queue = RenderQueue(batch_avatar, RenderBatching(frames=1))
    stream = Stream(batch_avatar)
    queue.join()
    began = time.perf_counter()
    try:
        for _ in range(5):
            queue.submit(stream).result(10.0)
    finally:
        queue.close(wait_seconds=10.0)
        stream.close()
    wall = time.perf_counter() - began
    assert queue.seconds["model"] >= 5 * model_seconds
    assert set(queue.seconds) == {"waiting", "requests", "backgrounds", "model", "handing over"}
    # the parts cover the thread's time: all of it is in one of them, none counted twice
    assert sum(queue.seconds.values()) <= wall + 0.5 and sum(queue.seconds.values()) >= 5 * model_seconds


def recorded_launches(avatar: LiveAvatar, events: list[tuple[str, int]], start: threading.Event) -> None:
    """Have `avatar.launch_heads` record ("launch", n) and its result's reading ("read", n) in `events`; the first
    launch waits for `start`."""
    launch_heads = avatar.launch_heads

    def recorded(heads):
        start.wait(10.0)
        number = sum(kind == "launch" for kind, _ in events)
        events.append(("launch", number))
        crops = launch_heads(heads)

        class Read:
            def result(self):
                events.append(("read", number))
                return crops.result()

        return Read()

    avatar.launch_heads = recorded


@pytest.mark.parametrize("streams", [3, 1])
def test_a_launched_frame_is_read_back_once_the_next_is_launched_or_no_stream_waits(batch_avatar, streams) -> None:
    """engine.render_async in the live queue: while other streams wait, frame n is read back (and pasted) after frame
    n + 1 was launched, so the device renders meanwhile; a stream alone gets each frame at once. Frames as alone."""
    events: list[tuple[str, int]] = []
    start = threading.Event()
    recorded_launches(batch_avatar, events, start)
    queue = RenderQueue(batch_avatar, RenderBatching(frames=1))
    asking = [Stream(batch_avatar, start_tick=7 * k) for k in range(streams)]
    alone = [Stream(batch_avatar, start_tick=7 * k) for k in range(streams)]
    for _ in asking:
        queue.join()
    try:
        futures = [queue.submit(s) for s in asking]  # every stream asks before the first frame launches
        start.set()
        for (frame, pcm), twin in zip([f.result(10.0) for f in futures], alone):
            want_frame, want_pcm = twin.next()
            assert np.array_equal(frame, want_frame) and np.array_equal(pcm, want_pcm)
        if streams == 1:
            frame, _ = queue.submit(asking[0]).result(10.0)
            assert np.array_equal(frame, alone[0].next()[0])
    finally:
        queue.close(wait_seconds=10.0)
        for stream in asking + alone:
            stream.close()
    if streams == 3:
        assert events == [("launch", 0), ("launch", 1), ("read", 0), ("launch", 2), ("read", 1), ("read", 2)]
    else:
        assert events == [("launch", 0), ("read", 0), ("launch", 1), ("read", 1)]

