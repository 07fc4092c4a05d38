"""What `python serve.py subject=<name>` does: load the trained subject once, then serve it until stopped."""

from __future__ import annotations

import errno
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ernerf.apps.checkpoints import audio_extractor, find_trained
from ernerf.apps.inference import OutputOptions, Renderer, audio_kind, load_subject
from ernerf.apps.live.avatar import LiveAvatar, quietest_window
from ernerf.constants import SAMPLE_RATE
from ernerf.errors import ErnerfError, instantiate_config
from ernerf.io.audio import load_audio
from ernerf.io.layout import check_subject_name
from ernerf.postprocess.pasteback import PasteBack
from ernerf.systems.loading import loader_for


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
                           tuple(cfg.pose.offset), cfg.downscale)
    training_windows = np.load(root / trained.feature_file(kind), mmap_mode="r")
    pp = cfg.postprocess
    options = OutputOptions(PasteBack(pp.scheme, pp.blend, pp.feather_px, pp.dilate_px))
    return LiveAvatar(renderer, subject, options, extractor, quietest_window(training_windows, subject.layout.audio))


def text_to_speech(engine: Any):
    """text -> 16 kHz mono speech from a speech engine (conf/tts/), sentence by sentence with its pauses."""
    import librosa

    from ernerf.apps.tts import spoken_parts

    def speak(text: str) -> np.ndarray:
        parts = [audio for audio, _ in spoken_parts(engine, text)]
        if not any(len(p) for p in parts):
            raise ErnerfError("the text has nothing to say: give the words to speak.")
        return librosa.resample(np.concatenate(parts), orig_sr=engine.sample_rate, target_sr=SAMPLE_RATE).astype(
            np.float32)

    return speak


def decode_upload(data: bytes) -> np.ndarray:
    """An uploaded audio (or video) file's sound as 16 kHz mono."""
    with tempfile.NamedTemporaryFile(suffix=".upload") as tmp:
        tmp.write(data)
        tmp.flush()
        return load_audio(Path(tmp.name), sr=SAMPLE_RATE)


def check_port(host: str, port: int) -> None:
    """Refuse a port another program holds, in one line, before the model loads."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ErnerfError(f"port {port} on {host} is in use by another program: give port=<another>.") from exc
            raise ErnerfError(f"cannot listen on {host}:{port} ({exc.strerror}): check host=.") from exc


def serve_command(cfg: Any) -> None:
    """Load the avatar, then serve the page and the WebRTC streams on cfg.host:cfg.port until interrupted."""
    from aiohttp import web

    from ernerf.apps.live.server import LiveServer

    check_port(cfg.host, cfg.port)
    avatar = build_avatar(cfg)
    server = LiveServer(avatar, text_to_speech(instantiate_config(cfg.tts)), decode_upload)
    print(f"the avatar of {cfg.subject} is live at http://{cfg.host}:{cfg.port}/ (Ctrl-C stops it)", flush=True)
    try:
        web.run_app(server.app(), host=cfg.host, port=cfg.port, print=None)
    finally:
        avatar.close()
