"""The inference pipeline's ceiling: infer.py's loop with a renderer that costs nothing, so what is timed is the CPU
work around each frame (backgrounds, paste masks, decoding, pasting, encoding) on this machine's cores.

On a GPU a frame renders in a few milliseconds and this is what bounds infer.py. Each `--cache-frames` setting
(`postprocess.cache_frames`: backgrounds and paste masks kept in memory) runs `--rounds` times, alternating:

    python bench/pipeline_ceiling.py --subject data/trump --seconds 60 --cache-frames 64,600 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# as conf/infer.yaml sets it before torch loads: OpenMP threads sleep between ops instead of spinning on the cores the
# paste threads and the encoder need
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts

from ernerf.apps.inference import OutputOptions, load_subject, run_inference  # noqa: E402
from ernerf.constants import FPS, SAMPLE_RATE  # noqa: E402
from ernerf.io.audio import write_wav  # noqa: E402
from ernerf.postprocess.pasteback import PasteBack  # noqa: E402


class InstantRenderer:
    """A renderer that returns one fixed crop at once (the pipeline's other stages are what is timed)."""

    def __init__(self, height: int, width: int) -> None:
        self.device = torch.device("cpu")
        generator = torch.Generator().manual_seed(0)
        self.crop = {"rgb": torch.rand(height, width, 3, generator=generator), "opacity": torch.ones(height, width),
                     "depth": torch.ones(height, width)}

    def render_image(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return self.crop


def one_run(subject_dir: Path, seconds: float, cache_frames: int, workers: str, out: Path) -> dict[str, float]:
    """Frames/s and this process's CPU ms a frame (the encoder runs in ffmpeg's process) of one output."""
    subject = load_subject(subject_dir, "aud_mel.npy", "plate", cache_frames=cache_frames)
    frames = int(seconds * FPS)
    audio = write_wav(out / "silence.wav", np.zeros(int(seconds * SAMPLE_RATE), np.float32), SAMPLE_RATE)
    options = OutputOptions(PasteBack("face_neck"), workers=workers if workers == "auto" else int(workers),
                            cache_frames=cache_frames)
    wall, cpu = time.perf_counter(), time.process_time()
    run_inference(InstantRenderer(subject.height, subject.width), subject, np.zeros((frames, 16, 80), np.float32),
                  audio, out / "run", options, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames_per_s": frames / wall, "cpu_ms_a_frame": 1e3 * cpu / frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", type=Path, required=True, help="a preprocessed subject folder (data/<name>)")
    parser.add_argument("--seconds", type=float, default=60.0, help="output seconds a run")
    parser.add_argument("--cache-frames", default="64,600", help="comma-separated postprocess.cache_frames to compare")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="auto", help="paste-back threads (postprocess.workers)")
    args = parser.parse_args()
    settings = [int(c) for c in args.cache_frames.split(",")]
    runs: dict[int, list[dict[str, float]]] = {c: [] for c in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for cache in settings:
                runs[cache].append(one_run(args.subject, args.seconds, cache, args.workers, Path(tmp)))
    print(f"{args.subject.name}: {args.seconds:.0f} s of output ({int(args.seconds * FPS)} frames), a renderer that "
          f"costs nothing, medians of {args.rounds} runs")
    print(f"{'cache_frames':>13}{'frames/s':>10}{'CPU ms a frame':>16}")
    for cache, results in runs.items():
        fps = statistics.median(r["frames_per_s"] for r in results)
        cpu = statistics.median(r["cpu_ms_a_frame"] for r in results)
        print(f"{cache:>13}{fps:>10.1f}{cpu:>16.1f}")


if __name__ == "__main__":
    main()
