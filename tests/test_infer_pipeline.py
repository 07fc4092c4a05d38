"""The pipelined render loop (decode ahead, paste on threads, encode in order) against a plain sequential loop."""

from __future__ import annotations

import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ernerf.errors import ErnerfError
from ernerf.apps.inference import OutputOptions, load_subject, render_planned_frame, run_inference
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import iter_frames
from ernerf.postprocess.motion import plan_motion
from ernerf.postprocess.depth import colorize_depth, depth_range
from ernerf.postprocess.mux import ResultWriter
from ernerf.postprocess.pasteback import HeadBox, PasteBack
from tests.conftest import shared_clip
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture
from tests.postprocess.mini_subject import FEATURE_DIM, CropRenderer

NUM_FRAMES = 30  # the 12 training frames ping-pong: forward, back, forward again
AUDIO = shared_clip("audio/radio31_8s.wav")


class JitteryPaste(PasteBack):
    """Paste-back that takes a random 0-15 ms first, so later frames often finish before earlier ones."""

    def paste(self, frame, crop, alpha, box):
        time.sleep(random.uniform(0, 0.015))
        return super().paste(frame, crop, alpha, box)


def features(n: int = NUM_FRAMES) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 16, FEATURE_DIM)).astype(np.float32)


def sequential_reference(view, feats: np.ndarray, out_dir: Path, paste: PasteBack) -> dict[str, Path]:
    """Render, paste and write one frame after the other, on this thread (what inference did before threads)."""
    renderer = CropRenderer(view.layout, view.poses, view.img_ids)
    plan = plan_motion(view.poses, view.eye, len(feats))
    box, originals, near_far = HeadBox.load(view.layout.head_bbox), list(iter_frames(view.layout.video)), None
    with ResultWriter(out_dir, AUDIO, len(feats), alpha="png", depth=True) as writer:
        for t in range(len(feats)):
            rendered = render_planned_frame(renderer, view, plan, feats, t)
            img_id = int(view.img_ids[plan.indices[t]])
            alpha = paste.alpha(view.parsing(img_id), view.face_points(img_id))
            frame = originals[img_id]
            depth = paste.paste_depth(frame.shape[:2], rendered["depth"], alpha, box)
            near_far = near_far or depth_range(depth)
            head = np.dstack([rendered["rgb"], (np.clip(rendered["opacity"], 0, 1) * 255 + 0.5).astype(np.uint8)])
            writer.write(paste.paste(frame, rendered["rgb"], alpha, box), head, colorize_depth(depth, *near_far))
        return writer.close()


def pipeline_threads() -> list[str]:
    names = ("ernerf-paste", "ernerf-decode", "ernerf-writer")
    return [t.name for t in threading.enumerate() if t.name.startswith(names) and t.is_alive()]


@pytest.mark.parametrize("scheme", ["face", "face_neck"])
def test_pipelined_output_equals_the_sequential_loop(tmp_path, mini_subject, scheme):
    view = load_subject(mini_subject.root, "aud_mel.npy")
    feats = features()
    expected = sequential_reference(view, feats, tmp_path / "sequential", PasteBack(scheme))
    renderer = CropRenderer(view.layout, view.poses, view.img_ids)
    options = OutputOptions(JitteryPaste(scheme), alpha="png", depth=True, workers=3)
    result = run_inference(renderer, view, feats, AUDIO, tmp_path / "pipelined", options, progress=False)

    assert result.num_frames == NUM_FRAMES and result.render_fps > 0 and result.seconds_total >= result.seconds_render
    # each torso as the frame pasted into has it; the walk also passes held-out frames, which have no code of their own
    assert renderer.torso_frames == [k if k < view.num_train else None for k in renderer.calls]
    assert max(renderer.calls) >= view.num_train
    for kind in ("video", "depth"):
        got, want = list(iter_frames(result.outputs[kind])), list(iter_frames(expected[kind]))
        assert len(got) == len(want) == NUM_FRAMES
        for t, (a, b) in enumerate(zip(got, want)):
            assert np.array_equal(a, b), f"{kind} frame {t} differs"
        assert result.outputs[kind].read_bytes() == expected[kind].read_bytes()  # same frames, same encoder: same file
    heads = sorted(result.outputs["alpha"].glob("*.png"))
    assert [p.read_bytes() for p in heads] == [p.read_bytes() for p in sorted(expected["alpha"].glob("*.png"))]
    assert pipeline_threads() == []


class LaunchingRenderer(CropRenderer):
    """A renderer that launches frames (engine.render_async's path): every third launched frame comes back flagged
    short, its launched outputs blank, so only rendering it again (`redo`) gives the right crop."""

    def __init__(self, view) -> None:
        super().__init__(view.layout, view.poses, view.img_ids)
        self.launches = 0
        self.redone: list[int] = []

    def launch_image(self, c2w, intrinsics, H, W, audio_window, eye, frame_index, bg, torso_frame=None):
        import torch

        from ernerf.systems.execution import LaunchedRender

        number, self.launches = self.launches, self.launches + 1
        out = self.render_image(c2w, intrinsics, H, W, audio_window, eye, frame_index, bg, torso_frame)
        if number % 3:
            return LaunchedRender(out, torch.tensor(False), lambda: out)

        def redo():
            self.redone.append(number)
            return out

        return LaunchedRender({k: torch.zeros_like(v) for k, v in out.items()}, torch.tensor(True), redo)


def test_frames_are_read_one_launch_behind_and_short_ones_rendered_again(tmp_path, mini_subject):
    """The device renders frame t + 1 while frame t is read back and pasted: each frame is read after the next one
    was launched; the output equals the sequential loop's, frames that fell short of the graph's samples included."""
    from ernerf.apps.inference import RenderedAhead

    view = load_subject(mini_subject.root, "aud_mel.npy")
    feats = features()
    renderer = LaunchingRenderer(view)
    plan = plan_motion(view.poses, view.eye, len(feats))
    ahead = RenderedAhead(renderer, view, plan, feats)
    launched_when_read = []
    for t, raw in ahead.frames(view.background(int(i)) for i in plan.indices):
        launched_when_read.append(renderer.launches)
        want = render_planned_frame(CropRenderer(view.layout, view.poses, view.img_ids), view, plan, feats, t)
        assert raw.keys() == want.keys() and all(np.array_equal(raw[k], want[k]) for k in want), f"frame {t}"
    assert launched_when_read == [min(t + 2, NUM_FRAMES) for t in range(NUM_FRAMES)]
    assert renderer.redone == list(range(0, NUM_FRAMES, 3)) and ahead.seconds > 0

    expected = sequential_reference(view, feats, tmp_path / "sequential", PasteBack("face"))
    result = run_inference(LaunchingRenderer(view), view, feats, AUDIO, tmp_path / "launched",
                           OutputOptions(JitteryPaste("face"), alpha="png", depth=True, workers=3), progress=False)
    assert result.outputs["video"].read_bytes() == expected["video"].read_bytes()
    assert result.outputs["depth"].read_bytes() == expected["depth"].read_bytes()
    assert pipeline_threads() == []


def subject_missing_parsing(src: SubjectLayout, dst: Path, img_id: int) -> SubjectLayout:
    shutil.copytree(src.root, dst)
    layout = SubjectLayout(dst)
    layout.parsing(img_id).unlink()
    return layout


def test_an_error_in_a_paste_thread_is_raised_and_the_partial_output_removed(tmp_path, mini_subject):
    layout = subject_missing_parsing(mini_subject, tmp_path / "mini", img_id=6)  # frame 0 has its map: it passes
    view = load_subject(layout.root, "aud_mel.npy")
    renderer = CropRenderer(view.layout, view.poses, view.img_ids)
    out = tmp_path / "out"
    with pytest.raises(ErnerfError, match=r"postprocess.scheme=face_neck needs the parsing maps"):
        run_inference(renderer, view, features(), AUDIO, out, OutputOptions(PasteBack("face_neck"), workers=2),
                      progress=False)
    assert len(renderer.calls) < NUM_FRAMES  # stopped early, not after rendering everything
    assert list(out.iterdir()) == []  # no result.mp4, no temporary video or audio left
    assert pipeline_threads() == []


class FailingRenderer(CropRenderer):
    """Raises `exc` on its `at`-th call."""

    def __init__(self, view, exc: BaseException, at: int) -> None:
        super().__init__(view.layout, view.poses, view.img_ids)
        self.exc, self.at = exc, at

    def render_image(self, *args, **kwargs):
        if len(self.calls) == self.at:
            raise self.exc
        return super().render_image(*args, **kwargs)


@pytest.mark.parametrize("exc", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()])
def test_render_error_or_ctrl_c_stops_every_thread(tmp_path, mini_subject, exc):
    view = load_subject(mini_subject.root, "aud_mel.npy")
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(type(exc), match=str(exc) or None):
        run_inference(FailingRenderer(view, exc, at=9), view, features(), AUDIO, out,
                      OutputOptions(JitteryPaste("box"), workers=2), progress=False)
    assert time.perf_counter() - t0 < 20  # no hang waiting on work that will never come
    assert list(out.iterdir()) == []
    assert pipeline_threads() == []


def test_backgrounds_go_to_the_renderer_and_pixels_come_back_as_numpy_rounds_them() -> None:
    """Backgrounds cross to the renderer as uint8 and rendered colours come back as uint8 (a quarter of the bytes of
    float32): both conversions on the device give numpy's float32 values bit for bit, also at rounding ties."""
    import torch

    from ernerf.apps.inference import _device_background, _to_pixels

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    sent = _device_background(levels, "cpu")
    assert sent.dtype == torch.float32 and np.array_equal(sent.numpy(), levels.astype(np.float32) / 255.0)
    ties = (np.arange(256, dtype=np.float32) + 0.5) / 255  # values whose * 255 lands on or beside k + 0.5
    rng = np.random.default_rng(0)
    colours = np.concatenate([ties, np.nextafter(ties, 0), np.nextafter(ties, 1), rng.uniform(-0.2, 1.2, 4096),
                              [0.0, 1.0, -1e-7, 1 + 1e-7]]).astype(np.float32)
    expected = (np.clip(colours, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    assert np.array_equal(_to_pixels(torch.from_numpy(colours)), expected)
    assert np.array_equal(_to_pixels(colours), expected)


def test_only_the_outputs_the_options_use_come_back_from_the_renderer(mini_subject) -> None:  # noqa: F811
    from ernerf.apps.inference import render_crop

    paste = PasteBack("box")
    assert OutputOptions(paste).rendered == ("rgb",)
    assert OutputOptions(paste, alpha="png", depth=True).rendered == ("rgb", "depth", "opacity")
    subject = load_subject(mini_subject.root, "aud_mel.npy", downscale=4)
    bg = subject.background(0)
    renderer = CropRenderer(subject.layout, subject.poses, subject.img_ids)
    window = features(8)
    only_rgb = render_crop(renderer, subject, subject.poses[0], None, window, bg, ("rgb",))
    everything = render_crop(renderer, subject, subject.poses[0], None, window, bg)
    assert set(only_rgb) == {"rgb"} and set(everything) == {"rgb", "depth", "opacity"}
    assert only_rgb["rgb"].dtype == np.uint8 and np.array_equal(only_rgb["rgb"], everything["rgb"])


class CountingPaste(PasteBack):
    """Paste-back that counts the masks it makes."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.masks = 0

    def alpha(self, parsing, face_points=None):
        self.masks += 1
        return super().alpha(parsing, face_points)


# none kept: a mask for every frame, and one more for the first frame's check before the walk starts
@pytest.mark.parametrize("cache_frames, masks", [(64, 12), (4, None), (0, NUM_FRAMES + 1)])
def test_the_walk_makes_each_paste_mask_and_background_once_when_the_cache_holds_its_frames(
        tmp_path, mini_subject, cache_frames, masks) -> None:
    view = load_subject(mini_subject.root, "aud_mel.npy", cache_frames=cache_frames)
    paste = CountingPaste("face_neck")
    result = run_inference(CropRenderer(view.layout, view.poses, view.img_ids), view, features(), AUDIO,
                           tmp_path / "out", OutputOptions(paste, workers=2, cache_frames=cache_frames), progress=False)
    assert result.num_frames == NUM_FRAMES
    backgrounds = view.background.cache_info()
    if masks is None:  # fewer kept than the 12 frames: the walk's turns come back through the last ones only
        assert 12 < paste.masks < NUM_FRAMES and 12 <= backgrounds.misses < NUM_FRAMES
    else:
        assert paste.masks == masks and backgrounds.misses == min(masks, NUM_FRAMES)
    expected = sequential_reference(view, features(), tmp_path / "ref", PasteBack("face_neck"))
    assert result.outputs["video"].read_bytes() == expected["video"].read_bytes()


@pytest.mark.parametrize("bad", [-1, 2.5, "many", True])
def test_a_bad_cache_size_says_what_it_takes(mini_subject, bad) -> None:
    with pytest.raises(ErnerfError, match="postprocess.cache_frames must be a whole number"):
        load_subject(mini_subject.root, "aud_mel.npy", cache_frames=bad)
