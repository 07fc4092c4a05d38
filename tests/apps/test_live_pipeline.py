"""The work around the model in the live render queue: backgrounds made ahead and frames pasted on the avatar's pool,
each stream decoding its own walk through the video, so the model's thread renders and does nothing else."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ernerf.apps.inference import FrameSource, OutputOptions, load_subject
from ernerf.apps.live.avatar import LiveAvatar, Stream, pool_threads
from ernerf.apps.live.render_queue import RenderBatching, RenderQueue
from ernerf.audio.features import LogMelExtractor
from ernerf.errors import ErnerfError
from ernerf.postprocess.pasteback import PasteBack
from tests.apps.test_live import MouthRenderer
from tests.postprocess.mini_subject import FEATURE_DIM, CropRenderer, write_mini_subject
from tests.conftest import shared_clip

FRAMES = 64  # four blocks of FrameSource's 16: streams spread over the walk need different ones
PULLED = 20


@pytest.fixture(scope="module")
def long_subject(tmp_path_factory):
    return write_mini_subject(tmp_path_factory.mktemp("data") / "long", shared_clip("train/trump_10s.mp4"), FRAMES)


def crop_avatar(layout, cpu_workers: int | str = 2) -> LiveAvatar:
    """The subject at 128 px whose renderer returns each training frame's own crop: a frame pasted into another
    stream's source frame, or a crop of another frame, shows."""
    subject = load_subject(layout.root, "aud_mel.npy", downscale=4)
    renderer = CropRenderer(layout, subject.poses, subject.img_ids, shift=40)
    idle = np.full((16, FEATURE_DIM), -15.0, np.float32)
    return LiveAvatar(renderer, subject, OutputOptions(PasteBack("box")), LogMelExtractor(), idle, cpu_workers)


def pull(render_queue: RenderQueue, streams: list[Stream], frames: int) -> list[list[np.ndarray]]:
    """Each stream's next `frames` frames, every stream asking from its own thread as a client's pump does."""
    got: list[list[np.ndarray]] = [[] for _ in streams]

    def client(k: int) -> None:
        for _ in range(frames):
            got[k].append(render_queue.submit(streams[k]).result(timeout=60)[0])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(streams))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return got


@pytest.fixture
def decodes(monkeypatch) -> list[FrameSource]:
    """The decoder behind every block decode, in order."""
    seen: list[FrameSource] = []
    decode = FrameSource._decode

    def counted(self, b):
        seen.append(self)
        return decode(self, b)

    monkeypatch.setattr(FrameSource, "_decode", counted)
    return seen


def test_spread_streams_get_their_own_frames_and_decode_each_block_once(long_subject, decodes) -> None:
    avatar = crop_avatar(long_subject)
    starts = [k * avatar.period // 4 for k in range(4)]
    streams = [Stream(avatar, start_tick=start) for start in starts]
    render_queue = RenderQueue(avatar, RenderBatching(frames=1))
    for _ in streams:
        render_queue.join()
    try:
        got = pull(render_queue, streams, PULLED)
        per_stream = {id(stream.sources): 0 for stream in streams}
        for source in decodes:
            per_stream[id(source)] += 1
        # 20 frames touch at most two blocks of 16, three where a walk turns back at the video's end
        assert max(per_stream.values()) <= 3 and len(decodes) <= 3 * len(streams)
        decodes.clear()
        alone = [Stream(avatar, start_tick=start) for start in starts]  # the same clocks through `avatar.frame`
        for k, stream in enumerate(alone):
            for t in range(PULLED):
                assert np.array_equal(got[k][t], stream.next()[0]), f"stream {k}, frame {t}"
        assert not np.array_equal(got[0][0], got[1][0])  # the streams show different frames
        # each torso as the frame pasted into has it (held-out frames, which have no code of their own: the mean)
        num_train = avatar.subject.num_train
        assert avatar.renderer.torso_frames == [k if k < num_train else None for k in avatar.renderer.calls]
    finally:
        render_queue.close(wait_seconds=10)
        for stream in streams:
            stream.close()
        avatar.close()


def test_the_model_thread_only_renders(long_subject, monkeypatch) -> None:
    avatar = crop_avatar(long_subject)
    threads: dict[str, set[str]] = {"background": set(), "paste": set(), "render": set()}
    for name, method in (("background", "background"), ("paste", "paste"), ("render", "launch_heads")):
        original = getattr(avatar, method)

        def recorded(*args, _original=original, _name=name):
            threads[_name].add(threading.current_thread().name)
            return _original(*args)

        monkeypatch.setattr(avatar, method, recorded)
    streams = [Stream(avatar, start_tick=start) for start in (0, 40)]
    render_queue = RenderQueue(avatar, RenderBatching(frames=1))
    for _ in streams:
        render_queue.join()
    try:
        pull(render_queue, streams, 6)
    finally:
        render_queue.close(wait_seconds=10)
        avatar.close()
    assert threads["render"] == {"ernerf-render"}
    assert threads["background"] and all(name.startswith("ernerf-live-cpu") for name in threads["background"])
    assert threads["paste"] and all(name.startswith("ernerf-live-cpu") for name in threads["paste"])


def test_a_closed_stream_is_refused_and_frees_its_decoder(long_subject) -> None:
    avatar = crop_avatar(long_subject)
    stream, other = Stream(avatar), Stream(avatar, start_tick=30)
    render_queue = RenderQueue(avatar, RenderBatching(frames=1))
    render_queue.join()
    render_queue.join()
    try:
        pull(render_queue, [stream, other], 2)
        sources = stream.sources
        stream.close()
        with pytest.raises(ErnerfError, match="decoder was closed"):
            sources.get(0)
        with pytest.raises(ErnerfError, match="stream was closed"):
            render_queue.submit(stream).result(timeout=30)
        assert len(pull(render_queue, [other], 3)[0]) == 3  # the other client goes on
    finally:
        render_queue.close(wait_seconds=10)
        other.close()
        avatar.close()


def test_a_batch_of_streams_is_pasted_as_frames_rendered_alone(long_subject) -> None:
    subject = load_subject(long_subject.root, "aud_mel.npy", downscale=4)
    idle = np.full((16, FEATURE_DIM), -15.0, np.float32)
    avatar = LiveAvatar(BatchedMouth(), subject, OutputOptions(PasteBack("box")), LogMelExtractor(), idle, 2)
    starts = (0, 21, 42)
    streams = [Stream(avatar, start_tick=start) for start in starts]
    render_queue = RenderQueue(avatar, RenderBatching(frames=3, wait_seconds=1.0))
    for _ in streams:
        render_queue.join()
    try:
        got = pull(render_queue, streams, 5)
    finally:
        render_queue.close(wait_seconds=10)
    assert max(render_queue.batch_sizes) == 3
    for k, start in enumerate(starts):
        alone = Stream(avatar, start_tick=start)
        for t in range(5):
            assert np.array_equal(got[k][t], alone.next()[0]), f"stream {k}, frame {t}"
    avatar.close()


class BatchedMouth(MouthRenderer):
    """The fake mouth renderer rendering several frames per call, each as it renders one (so frames compare exactly)."""

    def render_images(self, c2w, intrinsics, H, W, audio_windows, eyes, bg, torso_frames=None):
        import torch

        frames = [self.render_image(c2w[b], intrinsics, H, W, audio_windows[b], None, None, bg[b])
                  for b in range(len(c2w))]
        return {name: torch.stack([f[name] for f in frames]) for name in frames[0]}


@pytest.mark.parametrize("setting, threads", [(3, 3), ("auto", None)])
def test_pool_threads(setting, threads) -> None:
    got = pool_threads(setting)
    assert got == threads if threads is not None else got >= 1


@pytest.mark.parametrize("setting", [0, -2, "many", True, 1.5])
def test_pool_threads_refuses_what_is_not_a_count(setting) -> None:
    with pytest.raises(ErnerfError, match="render.cpu_workers"):
        pool_threads(setting)


def test_the_queue_benchmark_counts_each_stream_frames(long_subject) -> None:
    from tests.bench.scripts import bench_module

    stream_bench = bench_module("stream")
    avatar = crop_avatar(long_subject)
    try:
        fps, per_call, shares = stream_bench.queue_only(avatar, 3, RenderBatching(frames=1), seconds=1.0)
    finally:
        avatar.close()
    assert len(fps) == 3 and min(fps) > 0 and per_call == 1.0
    assert shares["model"] > 0 and "waiting" in shares  # the render thread's time a frame, per part
    assert "busy" in stream_bench.thread_line(shares)
    assert stream_bench.graph_captures(avatar) == (0, []) and "none" in stream_bench.captures_line(avatar, 0)  # CPU


def test_the_queue_benchmark_says_how_often_the_render_graph_was_captured_in_a_run() -> None:
    from types import SimpleNamespace

    from tests.bench.scripts import bench_module

    stream_bench = bench_module("stream")
    graphed = SimpleNamespace(captures=3, entries={"a": SimpleNamespace(capacity=983040),
                                                   "b": SimpleNamespace(capacity=65536)})
    avatar = SimpleNamespace(renderer=SimpleNamespace(execution=SimpleNamespace(graphed_render=graphed)))
    assert stream_bench.graph_captures(avatar) == (3, [65536, 983040])
    line = stream_bench.captures_line(avatar, before=1)
    assert "2 captures in the run" in line and "65,536, 983,040 samples" in line


def test_serve_refuses_a_bad_cpu_workers_before_the_model_loads(monkeypatch) -> None:
    from ernerf.apps.live import serve
    from tests.apps.test_live import free_port
    from tests.conftest import compose

    def loaded(cfg):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(serve, "build_avatar", loaded)
    cfg = compose("serve", ["subject=x", "render.cpu_workers=0", f"port={free_port()}"])
    with pytest.raises(ErnerfError, match="render.cpu_workers=0"):
        serve.serve_command(cfg)


def test_serve_keeps_numpy_blas_on_one_thread_before_the_model_loads(monkeypatch) -> None:
    # each stream's audio features are small matrix products 25 times a second: a BLAS pool's threads spin between them
    from threadpoolctl import threadpool_info, threadpool_limits

    from ernerf.apps.live import serve
    from tests.apps.test_live import free_port
    from tests.conftest import compose

    original = {pool["prefix"]: pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    seen = []

    def loaded(cfg):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        raise ErnerfError("stop here")

    monkeypatch.setattr(serve, "build_avatar", loaded)
    cfg = compose("serve", ["subject=x", f"port={free_port()}"])
    threadpool_limits(2, user_api="blas")  # as on any machine of two cores or more
    try:
        with pytest.raises(ErnerfError, match="stop here"):
            serve.serve_command(cfg)
    finally:
        threadpool_limits(original)  # this test process's pools as they were
    assert seen and set(seen) == {1}
