"""Audio features: row rate, ER-NeRF window alignment, and the errors a user can hit."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ernerf.audio.features import (HOP, SAMPLE_RATE, HFSpeechExtractor, LogMelExtractor, extract_features,
                                   frame_windows)
from ernerf.errors import ErnerfError
from ernerf.io.audio import write_wav


def tone_burst(seconds: float, at: float, length: float = 0.02, freq: float = 1000.0) -> np.ndarray:
    """Quiet noise with a loud tone burst starting at `at` seconds."""
    rng = np.random.default_rng(0)
    wav = 1e-3 * rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
    t = np.arange(int(length * SAMPLE_RATE)) / SAMPLE_RATE
    start = int(at * SAMPLE_RATE)
    wav[start: start + len(t)] += 0.8 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return wav


def test_logmel_rows_at_50hz() -> None:
    feats = LogMelExtractor(n_mels=80)(np.zeros(SAMPLE_RATE * 3 + 100, np.float32))
    assert feats.shape == (1 + (SAMPLE_RATE * 3 + 100) // HOP, 80)
    assert np.isfinite(feats).all()


def test_frame_windows_index_arithmetic() -> None:
    rows = np.arange(20, dtype=np.float32)[:, None]  # row j holds the value j
    win = frame_windows(rows, num_frames=10, fps=25)[..., 0]
    assert win.shape == (10, 16)
    # frame i's mid time (i + 0.5) / 25 s is row 2i + 1: rows 2i-7 .. 2i+8
    assert win[4].tolist() == list(range(1, 17))
    assert win[0].tolist() == [0] * 8 + list(range(1, 9))  # before the start: repeat row 0
    assert win[9].tolist() == list(range(11, 20)) + [19] * 7  # past the end: repeat the last row


def test_burst_lands_in_the_centre_of_its_frame_window(tmp_path) -> None:
    frame, fps = 40, 25
    at = (frame + 0.5) / fps - 0.01  # 20 ms burst centred on the frame's mid time
    path = write_wav(tmp_path / "burst.wav", tone_burst(3.0, at))
    win = extract_features(path, LogMelExtractor(), num_frames=75)
    assert win.shape == (75, 16, 80)
    energy = win.max(axis=2)  # loudest band of each row: [N, 16]
    assert int(np.argmax(energy[:, 7:9].max(axis=1))) == frame  # no other frame has it at its centre
    assert int(np.argmax(energy[frame])) in (7, 8)  # the burst sits in the middle of the frame's window
    quiet = np.median(energy)
    assert energy[frame - 6].max() < quiet + 1.0  # 6 frames (240 ms) away the burst is out of the window
    assert energy[frame - 3].max() > quiet + 5.0  # 3 frames before, it is near the window's end


def test_extract_features_defaults_to_audio_length(tmp_path) -> None:
    path = write_wav(tmp_path / "a.wav", tone_burst(2.0, 1.0))
    assert extract_features(path, LogMelExtractor(n_mels=40)).shape == (50, 16, 40)


@pytest.mark.parametrize("kwargs", [{}, {"model": "/nonexistent/hubert"}, {"model_path": "/nonexistent/hubert"},
                                    {"model": "./models/hubert"}])
def test_hf_extractor_names_the_config_key(kwargs) -> None:
    pytest.importorskip("transformers")
    extractor = HFSpeechExtractor(**kwargs)  # building it from config must not fail
    with pytest.raises(ErnerfError, match=r"audio_features\.extractor\.model\b.*(facebook/hubert|local)"):
        extractor(np.zeros(SAMPLE_RATE, np.float32))


def test_hf_extractor_without_transformers_names_the_extra(tmp_path, monkeypatch) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    with pytest.raises(ErnerfError, match=r"pip install -e \.\[hub\]"):
        HFSpeechExtractor(str(tmp_path))(np.zeros(SAMPLE_RATE, np.float32))


TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": (16,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}


def tiny_speech_model(folder, kind: str = "Hubert", normalize: bool | None = None):
    """A randomly initialised HuBERT / wav2vec 2.0 with 32-wide hidden states, saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = getattr(transformers, f"{kind}Config")(**TINY)
    getattr(transformers, f"{kind}Model")(config).save_pretrained(folder)
    if normalize is not None:
        transformers.Wav2Vec2FeatureExtractor(do_normalize=normalize).save_pretrained(folder)
    return folder


def as_hub_cache(folder, cache, model_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """Lay a saved model out as the Hugging Face cache holds a downloaded one (models--org--name/snapshots/<commit>)."""
    import shutil

    repo = cache / f"models--{model_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_hf_extractor_rows_match_logmel(tmp_path) -> None:
    tiny_speech_model(tmp_path)
    wav = tone_burst(2.3, 1.0)
    ext = HFSpeechExtractor(str(tmp_path), chunk_seconds=0.5, context_seconds=0.2)
    feats = ext(wav)
    assert ext.feature_dim == 32
    assert feats.shape == (len(LogMelExtractor()(wav)), 32) and np.isfinite(feats).all()
    whole = HFSpeechExtractor(str(tmp_path), chunk_seconds=100.0)(wav)
    # with context covering the whole clip every chunk sees all of it: stitching must give the same rows
    stitched = HFSpeechExtractor(str(tmp_path), chunk_seconds=0.5, context_seconds=10.0)(wav)
    assert np.allclose(stitched, whole, atol=1e-4)


@pytest.mark.parametrize("kind", ["Hubert", "Wav2Vec2"])
def test_a_model_id_loads_from_the_hub_cache_as_the_local_folder_does(tmp_path, monkeypatch, kind: str) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the cached copy must be enough: no request to the hub
    folder = tiny_speech_model(tmp_path / "saved", kind, normalize=False)
    cache = as_hub_cache(folder, tmp_path / "cache", f"tiny-org/tiny-{kind.lower()}")
    wav = tone_burst(1.5, 0.7)
    from_folder = HFSpeechExtractor(str(folder))
    from_cache = HFSpeechExtractor(f"tiny-org/tiny-{kind.lower()}", cache_dir=str(cache))
    assert from_cache.feature_dim == 32
    assert np.array_equal(from_cache(wav), from_folder(wav))
    assert from_cache._normalize is False  # the cached preprocessor_config.json is read, not assumed
    # the older key still names a folder, and wins over the model id the config now gives by default
    legacy = HFSpeechExtractor("facebook/hubert-large-ls960-ft", model_path=str(folder))
    assert np.array_equal(legacy(wav), from_folder(wav))
    assert not np.allclose(HFSpeechExtractor(str(tiny_speech_model(tmp_path / "other", kind, normalize=True)))(wav),
                           from_folder(wav))  # a different model (normalising its input) gives other rows


def test_an_uncached_model_id_offline_names_the_download_command(tmp_path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    calls = []
    real = transformers.AutoModel.from_pretrained

    def recording(source, **kwargs):
        calls.append(kwargs["local_files_only"])
        return real(source, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", recording)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    extractor = HFSpeechExtractor("facebook/hubert-large-ls960-ft", cache_dir=str(tmp_path))
    with pytest.raises(ErnerfError) as info:
        extractor(np.zeros(SAMPLE_RATE, np.float32))
    message = str(info.value)
    assert "\n" not in message and calls == [True]  # offline: the cache was read, the hub never asked
    for phrase in ("huggingface-cli download facebook/hubert-large-ls960-ft", "audio_features.extractor.model=",
                   "audio_features=mel", "TRANSFORMERS_OFFLINE"):
        assert phrase in message, message


def test_a_failed_download_names_the_fixes(tmp_path, monkeypatch) -> None:
    transformers = pytest.importorskip("transformers")
    calls = []

    def unreachable(source, local_files_only, cache_dir):
        calls.append(local_files_only)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", unreachable)
    with pytest.raises(ErnerfError, match=r"couldn't connect.*huggingface-cli download facebook/wav2vec2-large-960h"):
        HFSpeechExtractor("facebook/wav2vec2-large-960h", cache_dir=str(tmp_path))(np.zeros(SAMPLE_RATE, np.float32))
    assert calls == [True, False]  # the cache first, then one download attempt


def test_hub_ids_and_paths_are_told_apart(monkeypatch) -> None:
    from ernerf.audio.features import hub_offline, is_path_like

    assert not is_path_like("facebook/hubert-large-ls960-ft") and not is_path_like("bert-base-uncased")
    assert all(map(is_path_like, ["/models/hubert", "./hubert", "~/models/hubert", "models/facebook/hubert"]))
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for value, offline in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub_offline() is offline
