"""`python infer.py` (and training) run where librosa, PyAV, soundfile, imageio-ffmpeg and espeak-ng are not installed (the GPU machine).

The subprocess runs with tests/hidden_packages/ on PYTHONPATH: its sitecustomize.py makes Python's path finder
blind to those packages, their modules and their distribution metadata alike (torchmetrics asks
importlib.metadata whether librosa is installed before importing it). ffmpeg comes from $ERNERF_FFMPEG, as
a binary carried to the GPU machine would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ernerf.io.audio import load_audio
from ernerf.io.video import iter_frames, run_ffmpeg
from tests.conftest import REPO, compose, shared_clip
from tests.postprocess.conftest import mini_subject  # noqa: F401 - session fixture

MISSING = ("librosa", "av", "soundfile", "imageio_ffmpeg")  # module names
NO_SPEECH = "espeakng_loader"  # the speech engine: only text= needs it
HIDER = Path(__file__).parent / "hidden_packages"  # its sitecustomize.py hides $ERNERF_HIDE_PACKAGES
SECONDS = 2.0


@pytest.fixture
def bare_env() -> dict[str, str]:
    """Environment of a subprocess in which the packages of MISSING look uninstalled."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    env = {**os.environ, "ERNERF_FFMPEG": imageio_ffmpeg.get_ffmpeg_exe(), "OMP_NUM_THREADS": "1",
           "ERNERF_HIDE_PACKAGES": ",".join(MISSING),
           "PYTHONPATH": os.pathsep.join([str(HIDER), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("IMAGEIO_FFMPEG_EXE", None)
    return env


def saved_untrained_system(runs: Path, subject: str, stage: str = "head") -> Path:
    """A freshly initialised TalkingHeadSystem as <runs>/<subject>/<stage>/checkpoints/last.ckpt."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    system = instantiate(compose("train", [f"subject={subject}", "debug=fast"]).model, num_frames=10)
    path = runs / subject / stage / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": system.state_dict(), "hyper_parameters": dict(system.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    return path


CHECK_HIDDEN = """
import importlib.metadata, importlib.util, sys
for name in sys.argv[1:]:
    assert importlib.util.find_spec(name) is None, f"{name} is found"
    try:
        importlib.metadata.version(name.replace("_", "-"))
        sys.exit(f"{name} has distribution metadata")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        __import__(name)
        sys.exit(f"{name} was imported")
    except ModuleNotFoundError:
        pass
import cv2, numpy, torch  # what the GPU machine has stays importable
"""


def test_the_hidden_packages_look_uninstalled_and_training_and_inference_import_without_them(bare_env) -> None:
    """The hider works (modules and distribution metadata of each hidden package gone, torch and OpenCV still there),
    and a GPU machine that only trains and renders needs neither PyAV and mediapipe (preprocessing) nor espeak-ng:
    one process checks both."""
    hidden = [*MISSING, NO_SPEECH, "mediapipe"]
    env = {**bare_env, "ERNERF_HIDE_PACKAGES": ",".join(hidden)}
    code = CHECK_HIDDEN + "import ernerf.apps.train, ernerf.apps.inference, ernerf.apps.chain\nprint('imported')\n"
    done = subprocess.run([sys.executable, "-c", code, *hidden], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:] + done.stdout


def test_infer_runs_without_librosa_av_soundfile_imageio_ffmpeg(tmp_path: Path, mini_subject, bare_env) -> None:
    speech = tmp_path / "speech.m4a"  # AAC stereo 44.1 kHz: decoding and the channel count go through ffmpeg
    run_ffmpeg(["-i", str(shared_clip("audio/radio31_8s.wav")), "-t", f"{SECONDS}", "-ac", "2", "-ar", "44100",
                "-c:a", "aac", str(speech)], "making the driving audio")
    runs, out = tmp_path / "runs", tmp_path / "out" / "talk.mp4"
    saved_untrained_system(runs, "mini")
    cmd = [sys.executable, "infer.py", "subject=mini", f"audio={speech}", f"output={out}", "device=cpu",
           f"paths.data_root={mini_subject.root.parent}", f"paths.runs_root={runs}", "downscale=32", "progress=false"]
    env = {**bare_env, "ERNERF_HIDE_PACKAGES": ",".join([*MISSING, NO_SPEECH])}  # audio= needs no speech engine
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "s per output second" in done.stdout

    sent = load_audio(speech)
    n = round(len(sent) / 16000 * 25)  # 50, or 51 with an ffmpeg < 7.1 (it keeps the AAC encoder's end padding)
    frames = list(iter_frames(out))
    assert len(frames) == n and frames[0].shape == (512, 512, 3)  # pasted into the original 512x512 frames
    wav = load_audio(out)  # raises if the result has no audio stream
    assert abs(len(wav) / 16000 - n / 25) < 0.05
    assert np.corrcoef(np.abs(wav[: len(sent)]), np.abs(sent[: len(wav)]))[0, 1] > 0.9  # the driving speech, in sync

