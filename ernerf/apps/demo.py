"""`make demo`: from nothing to a talking result.mp4 on the built-in sample, each stage skipped when done.

    python -m ernerf.apps.demo [paths.data_root=/tmp/data] [paths.runs_root=/tmp/runs]

Stages: sample (astronaut + offline TTS) -> preprocess -> train (head stage, conf/experiment/demo.yaml,
sized for a few minutes on 2 CPU cores) -> infer (the unseen `new_sentence.wav`) -> <runs_root>/demo/result.mp4.
Each stage prints its wall and CPU seconds. To extend the demo, append a `Stage` to `STAGES` whose `done`
looks at the stage's output and whose `run` produces it from the earlier stages' outputs.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from ernerf.apps.inference import infer_from_config
from ernerf.apps.sample import SamplePaths, make_new_sentence, make_sample, new_sentence_path
from ernerf.apps.train import train
from ernerf.constants import SAMPLE_RATE
from ernerf.errors import ErnerfError
from ernerf.io.audio import load_audio
from ernerf.io.layout import SubjectLayout
from ernerf.io.video import iter_frames
from ernerf.metrics.lipsync import audio_energy, correlation, mouth_opening
from ernerf.preprocess.mediapipe_face import FaceMesher, native_stderr_silenced
from ernerf.preprocess.pipeline import build_steps, preprocess_subject

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the demo composes the real entry-point configs
SUBJECT = "demo"
TRAIN_EXPERIMENT = "demo"  # conf/experiment/demo.yaml
SYNC_MAX_LAG = 2  # frames: mouth shapes lead or trail the sound by a frame or two


@dataclass(frozen=True)
class DemoContext:
    """Where the demo's inputs and outputs live, and the composed preprocess config."""

    cfg: DictConfig  # the `preprocess` entry point's config (paths, preprocess, audio_features)
    source_dir: Path  # the generated sample: sample.mp4, new_sentence.wav, ground truth

    @property
    def layout(self) -> SubjectLayout:
        return SubjectLayout(Path(self.cfg.paths.data_root) / self.cfg.subject)

    @property
    def sample_video(self) -> Path:
        return SamplePaths.in_dir(self.source_dir).video

    @property
    def new_sentence(self) -> Path:
        return new_sentence_path(self.source_dir)

    @property
    def run_dir(self) -> Path:
        """The head-stage run of the demo subject (checkpoints, csv logs, validation images)."""
        return Path(self.cfg.paths.runs_root) / self.cfg.subject / "head"

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def result(self) -> Path:
        """The demo's final output: the avatar speaking `new_sentence.wav`."""
        return Path(self.cfg.paths.runs_root) / self.cfg.subject / "result.mp4"

    def path_overrides(self) -> list[str]:
        """The paths of this demo as overrides for the train and infer configs."""
        return [f"paths.data_root={self.cfg.paths.data_root}", f"paths.runs_root={self.cfg.paths.runs_root}"]


@dataclass(frozen=True)
class Stage:
    """One step of the demo: `run` produces what `done` checks for."""

    name: str
    done: Callable[[DemoContext], bool]
    run: Callable[[DemoContext], None]


def _sample_done(ctx: DemoContext) -> bool:
    files = [*SamplePaths.in_dir(ctx.source_dir).files(), ctx.new_sentence]
    return all(f.exists() for f in files)


def _make_sample(ctx: DemoContext) -> None:
    make_sample(ctx.source_dir)
    make_new_sentence(ctx.source_dir)


def _preprocess_done(ctx: DemoContext) -> bool:
    return all(step.is_complete(ctx.layout) for step in build_steps(ctx.cfg.preprocess.steps))


def _preprocess(ctx: DemoContext) -> None:
    preprocess_subject(ctx.cfg.preprocess, ctx.layout, video=ctx.sample_video)


def train_config(ctx: DemoContext, overrides: Sequence[str] = ()) -> DictConfig:
    """The real `train` config: head stage, the CPU-sized demo experiment, this demo's paths."""
    return _compose("train", [f"subject={ctx.cfg.subject}", "stage=head", f"experiment={TRAIN_EXPERIMENT}",
                              *ctx.path_overrides(), *overrides])


def _train_done(ctx: DemoContext) -> bool:
    return ctx.checkpoint.is_file()


def _train(ctx: DemoContext) -> None:
    train(train_config(ctx))  # on one thread: the demo experiment's `cpu_threads`


def infer_config(ctx: DemoContext, overrides: Sequence[str] = ()) -> DictConfig:
    """The real `infer` config: the trained head speaks the new sentence, crops rendered at the training size, in
    chunks of the demo experiment's size."""
    trained = train_config(ctx)
    return _compose("infer", [f"subject={ctx.cfg.subject}", f"audio={ctx.new_sentence}", f"output={ctx.result}",
                              f"downscale={trained.datamodule.downscale}", f"engine.eval_chunk={trained.engine.eval_chunk}",
                              *ctx.path_overrides(), *overrides])


def _infer_done(ctx: DemoContext) -> bool:
    return ctx.result.is_file()


def _infer(ctx: DemoContext) -> None:
    result = infer_from_config(infer_config(ctx))
    for warning in result.warnings:
        print(f"[demo] warning: {warning}")
    print(f"[demo] rendered {result.num_frames} frames at {result.render_fps:.1f} frames/s")
    try:
        sync = video_lip_sync(ctx.result)
    except ErnerfError as exc:
        print(f"[demo] warning: {exc}")
        return
    print(f"[demo] mouth opening vs loudness of the new sentence: r = {sync:.2f} "
          "(the sample video itself: 0.83; frames in random order: below 0.3)")


def mouth_opening_track(video: Path | str) -> np.ndarray:
    """Mediapipe inner-lip opening of every frame of a video [T]; NaN where no face is found."""
    values = []
    with native_stderr_silenced(), FaceMesher(static=False) as mesher:  # mediapipe's start-up log
        for rgb in iter_frames(video):
            points = mesher.mesh(rgb)
            values.append(np.nan if points is None else float(mouth_opening(points[None])[0]))
    return np.asarray(values)


def loudness_track(audio: Path | str, num_frames: int) -> np.ndarray:
    """RMS loudness of the audio (a wav, or a video's sound track) per 25 fps frame [num_frames]."""
    return audio_energy(load_audio(audio, sr=SAMPLE_RATE), SAMPLE_RATE, num_frames)


def lip_sync(mouth: np.ndarray, loudness: np.ndarray, max_lag: int = SYNC_MAX_LAG) -> float:
    """Correlation of mouth opening and loudness, best over +-max_lag frames; frames without a face bridged."""
    n = min(len(mouth), len(loudness))
    mouth, loudness = mouth[:n], loudness[:n]
    found = ~np.isnan(mouth)
    if found.mean() < 0.5:
        raise ErnerfError(f"a face was found in only {found.sum()} of {n} frames: the lip sync cannot be measured.")
    # Gaps are filled by interpolation rather than dropped, so the lag search still compares neighbours.
    filled = np.interp(np.arange(n), np.flatnonzero(found), mouth[found])
    return correlation(filled, loudness, max_lag=max_lag)


def video_lip_sync(video: Path | str, audio: Path | str | None = None) -> float:
    """How well a video's mouth follows its audio (its own track unless `audio` is given)."""
    mouth = mouth_opening_track(video)
    return lip_sync(mouth, loudness_track(audio or video, len(mouth)))


STAGES: list[Stage] = [
    Stage("sample", _sample_done, _make_sample),
    Stage("preprocess", _preprocess_done, _preprocess),
    Stage("train", _train_done, _train),
    Stage("infer", _infer_done, _infer),
]


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The real `preprocess` Hydra config with subject=demo and the user's overrides."""
    return _compose("preprocess", [f"subject={SUBJECT}", *overrides])


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Compose one of conf/'s entry-point configs with overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def run_demo(overrides: Sequence[str] = (), stages: Sequence[Stage] | None = None) -> DemoContext:
    """Run every stage that is not done yet, in order; returns the context for reporting."""
    cfg = compose_config(overrides)
    ctx = DemoContext(cfg=cfg, source_dir=Path(cfg.paths.data_root) / "demo_src")
    for stage in STAGES if stages is None else stages:
        _run_stage(stage, ctx)
    return ctx


def _run_stage(stage: Stage, ctx: DemoContext) -> None:
    try:
        if stage.done(ctx):
            print(f"[demo] {stage.name}: already done, skipping")
            return
        print(f"[demo] {stage.name} ...", flush=True)
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        stage.run(ctx)
    except InstantiationException as exc:
        # A `_target_` in conf/ that does not import: a stale install or an unfinished checkout.
        raise ErnerfError(f"demo stage {stage.name}: cannot build an object named in conf/ ({exc}). "
                          "Update the checkout and reinstall with `pip install -e .`.") from exc
    print(f"[demo] {stage.name} done in {time.perf_counter() - t0:.1f} s "
          f"({cpu_seconds() - cpu0:.1f} CPU s)", flush=True)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (workers, ffmpeg)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def report(ctx: DemoContext) -> None:
    """Print where the demo's outputs are."""
    print(f"[demo] sample video: {ctx.sample_video}")
    print(f"[demo] dataset: {ctx.layout.root}")
    if ctx.layout.contact_sheet.exists():
        print(f"[demo] contact sheet: {ctx.layout.contact_sheet}")
    print(f"[demo] new sentence for inference: {ctx.new_sentence}")
    if ctx.checkpoint.exists():
        print(f"[demo] trained head: {ctx.checkpoint}")
    if ctx.result.exists():
        print(f"[demo] result: {ctx.result}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `make demo`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ctx = run_demo(sys.argv[1:] if argv is None else argv)
    except ErnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
