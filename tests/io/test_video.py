"""Where ffmpeg comes from: the environment variables, imageio-ffmpeg, then PATH; a clear error without any."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from ernerf.errors import ErnerfError
from ernerf.io.video import FFMPEG_ENV, ffmpeg_exe


def fake_exe(folder: Path, name: str = "ffmpeg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in FFMPEG_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_environment_variables_come_first(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    ours, imageio_var = fake_exe(tmp_path / "a"), fake_exe(tmp_path / "b")
    clean_env.setenv("IMAGEIO_FFMPEG_EXE", str(imageio_var))
    assert ffmpeg_exe() == str(imageio_var)
    clean_env.setenv("ERNERF_FFMPEG", str(ours))
    assert ffmpeg_exe() == str(ours)  # ours wins over imageio-ffmpeg's own variable
    clean_env.setenv("ERNERF_FFMPEG", str(tmp_path / "missing" / "ffmpeg"))
    with pytest.raises(ErnerfError, match="ERNERF_FFMPEG=.*not an executable"):
        ffmpeg_exe()


def test_imageio_ffmpeg_then_path(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    on_path = fake_exe(tmp_path / "bin")
    clean_env.setenv("PATH", str(on_path.parent))
    assert ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()
    clean_env.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` now fails as if not installed
    assert ffmpeg_exe() == str(on_path)


def test_no_ffmpeg_anywhere_names_the_fixes(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setitem(sys.modules, "imageio_ffmpeg", None)
    clean_env.setenv("PATH", str(tmp_path))
    with pytest.raises(ErnerfError, match=r"pip install imageio-ffmpeg.*ERNERF_FFMPEG"):
        ffmpeg_exe()


def x264_options(path: Path) -> str:
    """The option string x264 writes into the stream's first SEI message."""
    data = path.read_bytes()
    start = data.index(b"options: ")
    return data[start:data.index(b"\x00", start)].decode(errors="replace")


def test_video_writer_encodes_with_the_preset_asked_for(tmp_path: Path) -> None:
    import numpy as np

    from ernerf.io.video import VideoWriter, iter_frames

    frames = [np.full((32, 48, 3), 40 * k, np.uint8) for k in range(4)]
    for preset in ("veryfast", "superfast"):
        with VideoWriter(tmp_path / f"{preset}.mp4", preset=preset) as writer:
            for frame in frames:
                writer.write(frame)
    fast, default = x264_options(tmp_path / "superfast.mp4"), x264_options(tmp_path / "veryfast.mp4")
    assert "subme=1" in fast and "subme=2" in default  # x264's presets differ in sub-pixel motion search
    decoded = list(iter_frames(tmp_path / "superfast.mp4"))
    assert len(decoded) == 4 and all(np.abs(d.astype(int) - f).max() <= 2 for d, f in zip(decoded, frames))
