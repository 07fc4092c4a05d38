"""Audio I/O: any file -> 16 kHz mono float32, PCM16 wav written atomically."""

from __future__ import annotations

from pathlib import Path

import wave

import numpy as np
import pytest
import soundfile as sf

from ernerf.errors import ErnerfError
from ernerf.io.audio import _channels, channels_from_ffmpeg_info, fit_length, load_audio, loudness_db, write_wav
from ernerf.io.video import run_ffmpeg
from tests.conftest import shared_clip


def _sine(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spectrum)])


def test_wav_round_trip_is_pcm16_exact(tmp_path: Path) -> None:
    wav = _sine(440, 16000, 1.0)
    write_wav(tmp_path / "a.wav", wav, 16000)
    info = sf.info(tmp_path / "a.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    back = load_audio(tmp_path / "a.wav")
    assert len(back) == len(wav) and np.abs(back - wav).max() < 1 / 2**14
    assert not list(tmp_path.glob(".tmp.*"))


def test_wav_samples_equal_what_soundfile_wrote(tmp_path: Path) -> None:
    """write_wav (stdlib wave) quantises exactly as soundfile/libsndfile did: clipping, extremes, rounding."""
    rng = np.random.default_rng(0)
    steps = np.arange(-70000, 70000, dtype=np.float64) / 4 / 32768  # every quarter step: halves, integers
    edges = [-1.5, -1.0, -0.99999, 0.0, 0.99999, 1.0, 1.5, 2**-16, -(2**-16)]
    wav = np.concatenate([edges, rng.uniform(-1.2, 1.2, 50000), rng.normal(0, 1e-4, 20000), steps]).astype(np.float32)
    write_wav(tmp_path / "ours.wav", wav, 22050)
    sf.write(tmp_path / "sf.wav", np.clip(wav, -1.0, 1.0), 22050, subtype="PCM_16", format="WAV")  # the old writer
    ours, sr = sf.read(tmp_path / "ours.wav", dtype="int16")
    ref, _ = sf.read(tmp_path / "sf.wav", dtype="int16")
    assert sr == 22050 and sf.info(tmp_path / "ours.wav").subtype == "PCM_16"
    assert np.array_equal(ours, ref)
    assert ours[:7].tolist() == [-32768, -32768, -32768, 0, 32767, 32767, 32767]
    with wave.open(str(tmp_path / "ours.wav")) as f:  # and the standard library reads it back too
        assert (f.getnchannels(), f.getsampwidth(), f.getnframes()) == (1, 2, len(wav))


def test_channel_count_from_ffmpeg_equals_pyav(tmp_path: Path) -> None:
    """The channel count parsed from `ffmpeg -i` (no PyAV at run time) is what PyAV reports, for many layouts."""
    av = pytest.importorskip("av")
    layouts = ["mono", "stereo", "2.1", "quad", "5.1", "5.1(side)", "hexagonal", "7.1", "7.1.4", "22.2"]
    files = []
    for k, layout in enumerate(layouts):
        files.append(tmp_path / f"{k}.wav")
        run_ffmpeg(["-f", "lavfi", "-i", f"anullsrc=r=16000:cl={layout}", "-t", "0.1", "-c:a", "pcm_s16le",
                    str(files[-1])], "making a test layout")
    with wave.open(str(tmp_path / "nine.wav"), "wb") as f:  # no named layout: ffmpeg says "9 channels"
        f.setparams((9, 2, 16000, 0, "NONE", "not compressed"))
        f.writeframes(bytes(9 * 2 * 160))
    files += [tmp_path / "nine.wav", shared_clip("train/trump_10s.mp4"), shared_clip("audio/obama_5s.wav")]
    for path in files:
        with av.open(str(path)) as container:
            assert _channels(path) == container.streams.audio[0].codec_context.channels, path
    assert [_channels(f) for f in files[:3]] == [1, 2, 3]
    assert _channels(shared_clip("edge/no_audio_track_portrait.mp4")) == 1  # no audio: load_audio then says so


def test_channel_count_parser_on_ffmpeg_lines() -> None:
    line = "  Stream #0:1[0x2](eng): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, {}, fltp, 128 kb/s (default)"
    for layout, count in [("stereo", 2), ("5.1(side)", 6), ("7.1(wide-side)", 8), ("octagonal", 8), ("3 channels", 3),
                          ("downmix", 2), ("9.1.4", 14)]:
        assert channels_from_ffmpeg_info("Input #0, mov,mp4\n" + line.format(layout)) == count, layout
    assert channels_from_ffmpeg_info("  Stream #0:0: Video: h264, yuv420p, 512x512, 25 fps") == 1
    assert channels_from_ffmpeg_info("") == 1


def test_stereo_48k_is_resampled_to_mono_16k(tmp_path: Path) -> None:
    left, right = _sine(440, 48000, 2.0), _sine(440, 48000, 2.0)
    sf.write(tmp_path / "s.wav", np.stack([left, right], 1), 48000)
    wav = load_audio(tmp_path / "s.wav", sr=16000)
    assert wav.dtype == np.float32 and abs(len(wav) - 32000) <= 16
    assert abs(_peak_hz(wav, 16000) - 440) < 2
    assert abs(loudness_db(wav) - loudness_db(left)) < 0.5  # same level: a sine of amp 0.5 is -9 dBFS
    sf.write(tmp_path / "l.wav", np.stack([left, np.zeros_like(left)], 1), 48000)
    half = load_audio(tmp_path / "l.wav")  # one silent channel: the average is half the amplitude
    assert abs(loudness_db(half) - (loudness_db(left) - 6.02)) < 0.5


def test_audio_from_a_video_file() -> None:
    wav = load_audio(shared_clip("train/trump_10s.mp4"))
    assert abs(len(wav) / 16000 - 10.0) < 0.05 and -40 < loudness_db(wav) < -5


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="audio file not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(ErnerfError, match="has no audio stream"):
        load_audio(shared_clip("edge/no_audio_track_portrait.mp4"))
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(ErnerfError, match="cannot decode audio"):
        load_audio(tmp_path / "junk.wav")


def test_fit_length_and_loudness_are_exact() -> None:
    wav = np.ones(10, dtype=np.float32)
    assert np.array_equal(fit_length(wav, 4), wav[:4])
    assert np.array_equal(fit_length(wav, 12), np.r_[wav, 0, 0])
    assert loudness_db(np.zeros(100)) == pytest.approx(-120.0)
    assert loudness_db(np.ones(100)) == pytest.approx(0.0)
