"""Time to preload a subject's frames (datamodule.preload=device or host): decode every frame once into memory.

    python bench/preload_speed.py --subject-dir data/trump --preload host [--threads 1] [--device cuda]
    python bench/preload_speed.py ... --stage torso      # + parsing masks, the plate instead of torso backgrounds

A minutes-long subject for this can be a short one's training frames repeated (the same files, so the page cache
holds them after the first read: decoding is what is timed, not the disk).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.frames import GiB  # noqa: E402
from datamodules.subject import FrameStore, parse_subject  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject-dir", required=True)
    parser.add_argument("--audio-file", default="aud_mel.npy")
    parser.add_argument("--preload", choices=["device", "host"], default="host")
    parser.add_argument("--stage", choices=["head", "torso"], default="head")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: one per CPU)")
    parser.add_argument("--downscale", type=int, default=1)
    args = parser.parse_args()
    data = parse_subject(Path(args.subject_dir), args.audio_file, args.downscale)
    torso = args.stage == "torso"
    started = time.perf_counter()
    store = FrameStore(data, "plate" if torso else "torso", args.preload, args.device, parsing_masks=torso,
                       threads=args.threads)
    seconds = time.perf_counter() - started
    stored = sum(frames.nbytes for frames in store.frames.values())
    print(json.dumps({"frames": data.num_frames, "kinds": list(store.frames), "preload": args.preload,
                      "device": args.device, "threads": args.threads, "GiB": round(stored / GiB, 3),
                      "seconds": round(seconds, 1), "frames_per_s": round(data.num_frames / seconds, 1),
                      "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, 2)}))


if __name__ == "__main__":
    main()
