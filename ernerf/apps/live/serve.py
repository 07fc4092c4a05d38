"""What `python serve.py subject=<name>` does: load the trained subject once, then serve it until stopped."""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ernerf.apps.checkpoints import audio_extractor, find_trained
from ernerf.apps.inference import OutputOptions, Renderer, audio_kind, load_subject, with_held_out_codes
from ernerf.apps.live.avatar import LiveAvatar, pool_threads, quietest_window
from ernerf.apps.live.render_queue import RenderBatching
from ernerf.apps.preflight import check_port
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.errors import ErnerfError, instantiate_config
from ernerf.io.audio import load_audio
from ernerf.io.layout import check_subject_name
from ernerf.postprocess.pasteback import PasteBack
from ernerf.systems.loading import loader_for


def one_blas_thread() -> Any:
    """numpy's BLAS on one thread in this process; -> the limit (its `restore_original_limits()` lifts it).

    Each live stream computes its frames' audio features as the audio comes, small matrix products 25 times a second
    on its own thread. A BLAS thread pool spreads each product over every core, and its threads then spin waiting for
    the next one: on every core of the machine, all the time, taken from the renderer's, the pasting and the video
    encoders. One thread does products this small as fast. The model is torch's and keeps its own threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def build_avatar(cfg: Any, renderer: Renderer | None = None) -> LiveAvatar:
    """The trained subject of `cfg` (conf/serve.yaml), loaded once; `renderer` replaces the checkpoint's (tests)."""
    check_subject_name(cfg.subject)
    trained = find_trained(cfg.paths.runs_root, cfg.subject, cfg.stage_name)
    if renderer is None:
        renderer = loader_for(cfg)(trained.checkpoint, cfg.device)
    kind, dim = audio_kind(renderer.hparams)
    extractor = audio_extractor(trained, kind, dim, cfg.audio_extractor)
    root = Path(cfg.paths.data_root) / cfg.subject
    subject = load_subject(root, trained.feature_file(kind), trained.stage.background, cfg.pose.scale,
                           tuple(cfg.pose.offset), cfg.downscale, cfg.postprocess.cache_frames)
    # the idle walk passes every frame, the held-out ones too: each gets a torso code of its own once
    subject = with_held_out_codes(subject, renderer, trained.checkpoint, len(subject.poses) - 1)
    training_windows = np.load(root / trained.feature_file(kind), mmap_mode="r")
    pp = cfg.postprocess
    options = OutputOptions(PasteBack(pp.scheme, pp.blend, pp.feather_px, pp.dilate_px), cache_frames=pp.cache_frames)
    return LiveAvatar(renderer, subject, options, extractor, quietest_window(training_windows, subject.layout.audio),
                      cfg.render.cpu_workers)


class SentenceSpeech:
    """A typed text as 16 kHz mono speech a sentence at a time, from a speech engine (conf/tts/): its length is the
    number of sentences, and iterating synthesises each (with the engine's pause before it) only when asked for."""

    def __init__(self, engine: Any, text: str) -> None:
        from ernerf.apps.tts import split_sentences

        self.engine, self.text = engine, text
        self.sentences = sum(1 for _ in split_sentences(text))

    def __len__(self) -> int:
        return self.sentences

    def __iter__(self) -> Iterator[np.ndarray]:
        import librosa

        from ernerf.apps.tts import spoken_parts

        pause = np.zeros(0, np.float32)
        for audio, is_sentence in spoken_parts(self.engine, self.text):
            if not is_sentence:  # the pause goes with the sentence after it: each part is whole speech
                pause = audio
                continue
            wav = librosa.resample(np.concatenate([pause, audio]), orig_sr=self.engine.sample_rate,
                                   target_sr=SAMPLE_RATE)
            pause = np.zeros(0, np.float32)
            yield wav.astype(np.float32)


def text_to_speech(engine: Any) -> Callable[[str], SentenceSpeech]:
    """text -> its speech sentence by sentence (SentenceSpeech), from a speech engine (conf/tts/)."""
    return functools.partial(SentenceSpeech, engine)


def decode_upload(data: bytes, max_seconds: float | None = None) -> np.ndarray:
    """An uploaded audio (or video) file's sound as 16 kHz mono; one longer than `max_seconds` is refused, after
    decoding no more than that."""
    with tempfile.NamedTemporaryFile(suffix=".upload") as tmp:
        tmp.write(data)
        tmp.flush()
        limit = None if max_seconds is None else max_seconds + 1.0 / FPS  # a frame more tells a longer file apart
        wav = load_audio(Path(tmp.name), sr=SAMPLE_RATE, max_seconds=limit)
    if max_seconds is not None and len(wav) > max_seconds * SAMPLE_RATE:
        raise ErnerfError(f"the audio is longer than {max_seconds:g} s, the limit of one upload "
                          "(limits.audio_seconds in conf/serve.yaml): send a shorter piece.")
    return wav


def render_batching(render: Any) -> RenderBatching:
    """conf/serve.yaml `render` as the render queue takes it; a batch of fewer than one frame is refused."""
    frames = int(render.batch_frames)
    if frames < 1:
        raise ErnerfError(f"render.batch_frames={frames}: give 1 (each frame alone) or more (frames per model call).")
    return RenderBatching(frames=frames, wait_seconds=float(render.batch_wait_ms) / 1000.0)


def ahead_frames(render: Any) -> int:
    """conf/serve.yaml `render.ahead_frames`: frames each stream renders before they are due, at least one."""
    frames = render.get("ahead_frames", 1)
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise ErnerfError(f"render.ahead_frames={frames}: give 1 or more frames rendered before they are due (fewer: "
                          "live speech shown sooner; more: a steadier picture when rendering is uneven).")
    return frames


def vanished_client_seconds(limits: Any) -> float | None:
    """conf/serve.yaml `limits.vanished_client_seconds` as the server takes it; 0 or less is refused (null turns the
    watch off)."""
    seconds = limits.vanished_client_seconds
    if seconds is None:
        return None
    if float(seconds) <= 0:
        raise ErnerfError(f"limits.vanished_client_seconds={seconds}: give the seconds without receiver reports after "
                          "which a client has vanished (a few: browsers report every second), or null to leave it to "
                          "ICE consent checks (about 30 s).")
    return float(seconds)


def serve_command(cfg: Any) -> None:
    """Load the avatar, then serve the page and the WebRTC streams on cfg.host:cfg.port until interrupted."""
    from aiohttp import web

    from ernerf.apps.live.server import InputLimits, LiveServer

    check_port(cfg.host, cfg.port)
    # the settings are checked before the model loads, so a wrong one is refused at once
    batching, vanish_seconds = render_batching(cfg.render), vanished_client_seconds(cfg.limits)
    ahead = ahead_frames(cfg.render)
    pool_threads(cfg.render.cpu_workers)
    one_blas_thread()
    avatar = build_avatar(cfg)
    limits = cfg.limits
    server = LiveServer(avatar, text_to_speech(instantiate_config(cfg.tts)),
                        functools.partial(decode_upload, max_seconds=float(limits.audio_seconds)),
                        InputLimits(text_chars=int(limits.text_characters),
                                    upload_bytes=int(limits.upload_megabytes * 2**20)),
                        batching, vanish_seconds, ahead)
    print(f"the avatar of {cfg.subject} is live at http://{cfg.host}:{cfg.port}/ (Ctrl-C stops it)", flush=True)
    try:
        web.run_app(server.app(), host=cfg.host, port=cfg.port, print=None)
    finally:
        avatar.close()
