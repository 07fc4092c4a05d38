"""Time to preload a subject's frames (datamodule.preload=device or host): decode every frame once into memory.

    python bench/preload_speed.py --subject-dir data/trump --preload host [--threads 1] [--device cuda]
    python bench/preload_speed.py ... --stage torso      # + parsing masks, the plate instead of torso backgrounds
    python bench/preload_speed.py ... --tile-to 7500     # a 5-minute subject from a short one

--tile-to repeats the subject's training frames up to that many (a folder linking the subject's files, temporary
unless --tiled-dir names it, e.g. data/trump7500 for bench/train_speed.py --subject trump7500 afterwards): the same
files, so the page cache holds them after the first read, and decoding is what is timed, not the disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.frames import GiB  # noqa: E402
from datamodules.subject import FrameStore, SubjectData, parse_subject  # noqa: E402


def tiled(subject: Path, frames: int, into: Path) -> Path:
    """A subject folder in `into` whose training split repeats `subject`'s training frames up to `frames`."""
    into.mkdir(parents=True, exist_ok=True)
    for entry in subject.resolve().iterdir():
        if entry.name != "transforms_train.json":
            (into / entry.name).symlink_to(entry)
    train = json.loads((subject / "transforms_train.json").read_text())
    train["frames"] = [train["frames"][k % len(train["frames"])] for k in range(frames)]
    (into / "transforms_train.json").write_text(json.dumps(train))
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject-dir", required=True)
    parser.add_argument("--audio-file", default="aud_mel.npy")
    parser.add_argument("--preload", choices=["device", "host"], default="host")
    parser.add_argument("--stage", choices=["head", "torso"], default="head")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="decoding threads (default: one per CPU)")
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--tile-to", type=int, default=None, help="repeat the training frames up to this many")
    parser.add_argument("--tiled-dir", default=None, help="where to keep the tiled subject (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subject = Path(args.subject_dir)
        if args.tile_to:
            subject = tiled(subject, args.tile_to, Path(args.tiled_dir or Path(tmp) / subject.name))
        print(json.dumps(measure(parse_subject(subject, args.audio_file, args.downscale), args)))


def measure(data: SubjectData, args: argparse.Namespace) -> dict:
    """Seconds to preload `data`'s frames as `args` say, the bytes stored and the process's peak RSS."""
    torso = args.stage == "torso"
    started = time.perf_counter()
    store = FrameStore(data, "plate" if torso else "torso", args.preload, args.device, parsing_masks=torso,
                       threads=args.threads)
    seconds = time.perf_counter() - started
    stored = sum(frames.nbytes for frames in store.frames.values())
    return {"frames": data.num_frames, "kinds": list(store.frames), "preload": args.preload, "device": args.device,
            "threads": args.threads, "bytes": stored, "GiB": round(stored / GiB, 3), "seconds": round(seconds, 1),
            "frames_per_s": round(data.num_frames / seconds, 1),
            "peak_rss_GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, 2)}

if __name__ == "__main__":
    main()
