"""bench/voices.py: the cross-speaker benchmark's figures, and its smoke run on a subject trained for a few steps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench.scripts import REPO, run_bench, train_mini_head


def voices_module():
    sys.path.insert(0, str(REPO / "bench"))
    import voices

    return voices


def test_voice_sync_finds_a_known_lag_and_a_still_mouth_scores_no_spread() -> None:
    """The benchmark's figures: the lag-forgiving correlation of evaluate.py, the spread of the mouth."""
    from ernerf.apps.evaluation.figures import SYNC_LAG, audio_sync_findings
    from ernerf.metrics.lipsync import correlation

    voices = voices_module()
    energy = np.abs(np.sin(np.linspace(0, 12, 80))) + 0.1 * np.random.default_rng(0).random(80)
    late = np.concatenate([np.full(2, energy[0]), energy[:-2]])  # the mouth follows the sound 2 frames late
    assert audio_sync_findings(late, energy, "c").values["c"] > 0.99  # SYNC_LAG forgives it
    assert SYNC_LAG == 2 and correlation(late, energy, max_lag=0) < 0.9  # without the allowance: less
    still = np.full(80, 0.07)
    assert voices.mouth_spread(still) == pytest.approx(0.0, abs=1e-12)
    assert audio_sync_findings(still, energy, "c").values["c"] == 0.0
    assert voices.mouth_spread(0.5 * late) == pytest.approx(0.5 * np.std(late))


def test_voice_ratios_are_to_the_subject_own_audio_and_the_target_needs_all_of_them() -> None:
    voices = voices_module()
    scores = voices.add_ratios([voices.SourceScore("own", 23, 0.5, 0.02), voices.SourceScore("a", 125, 0.45, 0.02),
                                voices.SourceScore("b", 125, 0.6, 0.01)])
    assert [s.corr_ratio for s in scores] == [None, pytest.approx(0.9), pytest.approx(1.2)]
    assert [s.spread_ratio for s in scores] == [None, pytest.approx(1.0), pytest.approx(0.5)]
    assert not voices.meets_target(scores)  # b's mouth moves half as much as with the subject's own audio
    scores[2].spread = 0.018
    assert voices.meets_target(voices.add_ratios(scores))
    scores.append(voices.SourceScore("own-train", 125, 0.1, 0.001))  # a reference, not a foreign voice
    assert voices.meets_target(voices.add_ratios(scores)) and scores[-1].corr_ratio == pytest.approx(0.2)
    unmeasured = voices.add_ratios([voices.SourceScore("own", 23, None, 0.02), voices.SourceScore("a", 9, 0.4, 0.02)])
    assert unmeasured[1].corr_ratio is None and not voices.meets_target(unmeasured)
    assert unmeasured[0].corr_interval is None and unmeasured[1].corr_interval[0] < 0.4 < unmeasured[1].corr_interval[1]


def test_several_runs_are_summed_up_per_source_over_the_runs_that_measured_it() -> None:
    voices = voices_module()

    def report(corrs: list[float | None], met: bool) -> dict:
        return {"meets_target": met, "sources": [{"source": name, "corr": c, "spread": 0.01, "lmd": None}
                                                 for name, c in zip(["own", "a"], corrs)]}

    summary = voices.aggregate([report([0.2, 0.1], False), report([0.4, None], True), report([0.3, 0.5], False)])
    own, a = summary["sources"]
    assert summary["runs"] == 3 and summary["meets_target"] == 1
    assert own["corr"] == {"mean": pytest.approx(0.3), "min": 0.2, "max": 0.4, "runs": 3}
    assert a["corr"] == {"mean": pytest.approx(0.3), "min": 0.1, "max": 0.5, "runs": 2} and own["lmd"] is None
    printed = voices.aggregate_table(summary)
    assert "| own | 0.30 [0.20, 0.40] | 0.0100 [0.0100, 0.0100] | - |" in printed and "(2 runs)" in printed


def test_correlation_intervals_narrow_with_frames_and_cover_the_truth() -> None:
    voices = voices_module()
    low, high = voices.correlation_interval(0.3, 125)
    assert low == pytest.approx(0.132, abs=0.005) and high == pytest.approx(0.451, abs=0.005)
    assert voices.correlation_interval(0.3, 23)[1] - voices.correlation_interval(0.3, 23)[0] > high - low
    assert voices.correlation_interval(0.3, 3) is None and voices.correlation_interval(None, 125) is None
    rng, covered = np.random.default_rng(0), 0
    for _ in range(400):  # pairs of true correlation 0.3: the interval holds it ~95% of the time
        x = rng.standard_normal(60)
        y = 0.3 * x + np.sqrt(1 - 0.09) * rng.standard_normal(60)
        low, high = voices.correlation_interval(float(np.corrcoef(x, y)[0, 1]), 60)
        covered += low <= 0.3 <= high
    assert 0.91 <= covered / 400 <= 0.99


@pytest.fixture(scope="module")
def voiced_mini(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """34 real frames of trump_10s.mp4 with their sound, and a head stage trained on them for a few steps."""
    from ernerf.constants import SAMPLE_RATE
    from ernerf.io.audio import load_audio, write_wav
    from tests.conftest import shared_clip
    from tests.postprocess.mini_subject import write_mini_subject

    tmp = tmp_path_factory.mktemp("voices")
    clip = shared_clip("train/trump_10s.mp4")
    layout = write_mini_subject(tmp / "data" / "mini", clip, num_frames=34)
    write_wav(layout.audio, load_audio(clip, sr=SAMPLE_RATE)[: 34 * SAMPLE_RATE // 25], SAMPLE_RATE)
    train_mini_head(tmp / "data", tmp / "runs", 6, "audio_features=mel")
    return tmp / "data", tmp / "runs"


def test_voices_quick_drives_the_subject_with_every_kind_of_source(voiced_mini, tmp_path) -> None:
    from tests.conftest import shared_clip

    data, runs = voiced_mini
    out = tmp_path / "voices.json"
    again = tmp_path / "runs_again"  # a second runs folder (the same run): scored on its own, then aggregated
    again.symlink_to(runs, target_is_directory=True)
    printed = run_bench("voices.py", ["--subject", "mini", "--data-root", str(data), "--runs-root", str(runs), str(again),
                                      "--quick", "--downscale", "8", "--audio", str(shared_clip("audio/obama_5s.wav")),
                                      "--other-clip", str(shared_clip("train/hdtf_aoc_8s.mp4")), "--json", str(out)])
    both = json.loads(out.read_text())
    report, summary = both["runs"][0], both["aggregate"]
    assert [s["source"] for s in both["runs"][1]["sources"]] == [s["source"] for s in report["sources"]]
    assert summary["runs"] == 2 and "over 2 runs" in printed
    for s, total in zip(report["sources"], summary["sources"]):
        assert total["source"] == s["source"]
        if s["spread"] is not None:
            assert total["spread"]["runs"] == 2 and total["spread"]["min"] <= s["spread"] <= total["spread"]["max"]
    sources = {s["source"]: s for s in report["sources"]}
    assert list(sources) == ["own", "own-train", "obama_5s", "clip:hdtf_aoc_8s", "tts"]
    assert report["audio_kind"] == "mel"
    assert sources["own"]["frames"] == 4 and all(s["frames"] == 5 for s in report["sources"][1:])  # --quick
    own = sources["own"]
    assert own["lmd"] is None or own["lmd"] >= 0  # against the ground truth, own frames only
    assert all(s["lmd"] is None for s in report["sources"][1:])
    for s in report["sources"]:
        assert (s["spread"] is None and s["note"]) or s["spread"] >= 0
        assert f"| {s['source']} |" in printed
        assert (s["corr_interval"] is None) == (s["corr"] is None or s["frames"] < 4)
    if own["corr"] and own["corr"] > 0 and sources["tts"]["corr"] is not None:
        assert sources["tts"]["corr_ratio"] == pytest.approx(sources["tts"]["corr"] / own["corr"])
    assert (tmp_path / "tts.wav").is_file() and str(out) in printed
