"""CPU work around each rendered frame of infer.py and serve.py, per part, before and after.

For every output frame the head is rendered over the frame's background (torso over the plate), pasted with
the frame's alpha mask (parsing map -> dilated, feathered region) into the decoded source frame. This times those parts
of this checkout against the same code of another git revision (the baseline), calls alternating between the two, and
reports medians in ms per frame; it also checks that both give the same bits.
    OMP_NUM_THREADS=1 python bench/frame_cpu.py --subject data/trump --baseline-rev 53fa81c --hd
Parts: background (`load_subject`'s background of a frame, uncached, as the renderer takes it), alpha (what
`Compositor.alpha` computes for a frame it has not cached: default postprocess, scheme face_neck), decode (the frames of
input_temp.mp4 in order through `FrameSource`: per frame, a block's time over its frames), paste (the rendered crop to
uint8 and `PasteBack.paste` into the source frame). `--hd` also times decode and paste on a 1080p copy of the subject
(its video scaled 2x into a 1920x1080 frame, the head box with it; only the frames the timings read), as users'
source videos often are.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import (datamodules.subject), as the entry scripts
from datamodules import subject as subject_module  # noqa: E402
from ernerf.apps import inference  # noqa: E402
from ernerf.io.video import run_ffmpeg  # noqa: E402
from ernerf.postprocess import pasteback  # noqa: E402

MODULES = {"pasteback": "ernerf.postprocess.pasteback", "subject": "datamodules.subject",
           "inference": "ernerf.apps.inference"}  # in import order: each imports those before it
HD_SCALE, HD_SIZE = 2, (1920, 1080)  # the 1080p copy: the video scaled 2x, centred in a 1920x1080 frame


def baseline_modules(rev: str) -> dict[str, ModuleType]:
    """The modules of MODULES as they were at git revision `rev`, imported under other names; each imports the
    baseline's modules before it, and this checkout's for the rest."""
    folder, modules, own = Path(tempfile.mkdtemp()), {}, {name: sys.modules[name] for name in MODULES.values()}
    try:
        for name, dotted in MODULES.items():
            source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{dotted.replace('.', '/')}.py"],
                                    check=True, capture_output=True, text=True).stdout
            (folder / f"{name}_baseline.py").write_text(source)
            spec = importlib.util.spec_from_file_location(f"{name}_baseline", folder / f"{name}_baseline.py")
            module = modules[name] = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
            sys.modules[dotted] = module  # what the next ones import
    finally:
        sys.modules.update(own)
    return modules


def hd_copy(root: Path, folder: Path, frames: int) -> Path:
    """A copy of subject `root` whose input_temp.mp4 is its first `frames` frames in 1080p (links to everything
    else)."""
    hd = folder / root.name
    hd.mkdir(parents=True)
    for item in root.iterdir():
        if item.name not in ("input_temp.mp4", "head_bbox.json"):
            (hd / item.name).symlink_to(item)
    box = pasteback.HeadBox.load(root / "head_bbox.json")
    w, h = (n * HD_SCALE for n in inference.FrameSource(root / "input_temp.mp4").get(0).shape[1::-1])
    dx, dy = (HD_SIZE[0] - w) // 2, (HD_SIZE[1] - h) // 2
    run_ffmpeg(["-i", str(root / "input_temp.mp4"), "-vf",
                f"scale={w}:{h}:flags=bicubic,pad={HD_SIZE[0]}:{HD_SIZE[1]}:{dx}:{dy}", "-frames:v", str(frames),
                "-c:v", "libx264", "-crf", "18", "-pix_fmt", "yuv420p", str(hd / "input_temp.mp4")], "1080p copy")
    corners = [box.x1 * HD_SCALE + dx, box.y1 * HD_SCALE + dy, box.x2 * HD_SCALE + dx, box.y2 * HD_SCALE + dy]
    (hd / "head_bbox.json").write_text('{"x1": %d, "y1": %d, "x2": %d, "y2": %d}' % tuple(corners))
    return hd


def alternating(calls: dict[str, Callable[[int], object]], rounds: int, per_round: int = 1) -> dict[str, float]:
    """Median ms per item of each call(round), the calls alternating round by round (after one untimed round); a call
    handles `per_round` items."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call(r)
            if r:
                seconds[name].append((time.perf_counter() - start) / per_round)
    return {name: 1e3 * statistics.median(values) for name, values in seconds.items()}


def as_levels(output: object) -> np.ndarray:
    """A part's output to compare across revisions: a uint8 background as the [0, 1] floats the renderer gets."""
    array = np.asarray(output)
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 and array.ndim == 3 else array


class Side:
    """One revision's parts on one subject: its FrameStore, SubjectView, PasteBack and FrameSource."""

    def __init__(self, modules: SimpleNamespace, root: Path, audio: str) -> None:
        self.modules, self.root = modules, root
        self.store = modules.subject.FrameStore(modules.subject.parse_subject(root, audio), background="torso")
        self.view = modules.inference.load_subject(root, audio)
        self.paste_back = modules.pasteback.PasteBack()
        self.box = modules.pasteback.HeadBox.load(root / "head_bbox.json")
        self.source: object | None = None

    def background(self, frame: int) -> np.ndarray:
        """What the CPU makes of a frame's background for the renderer (uint8, or [0, 1] floats in revisions that
        turned it into floats on the CPU)."""
        fresh = SimpleNamespace(background=lambda i: self.store._load_background(i).numpy())  # no cache
        return self.modules.inference.render_background(fresh, frame)

    def alpha(self, img_id: int) -> np.ndarray:
        return self.paste_back.alpha(self.view.parsing(img_id), self.view.face_points(img_id))

    def decode_block(self, block: int, size: int) -> list[np.ndarray]:
        """The frames of block `block` in order (a new decoder when the walk starts again)."""
        if block == 0 or self.source is None:
            self.source = self.modules.inference.FrameSource(self.root / "input_temp.mp4")
        return [self.source.get(block * size + k) for k in range(size)]

    def paste(self, raw: dict[str, np.ndarray], frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        inference = self.modules.inference
        if hasattr(inference, "_device_background"):  # renders come back as pixels: round the test render as they are
            return self.paste_back.paste(frame, inference._to_pixels(raw["rgb"]), alpha, self.box)
        return self.paste_back.paste(frame, inference._to_pixels(raw)["rgb"], alpha, self.box)


def decode_rounds(rounds: int, num_frames: int, block: int) -> int:
    """Timed rounds of the decode part: a block each, after an untimed one, within the video's whole blocks."""
    return min(rounds, num_frames // block - 1)


def part_timings(sides: dict[str, Side], rounds: int, parts: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """part -> side -> median ms per frame, and asserts both sides' outputs of each part are the same bits."""
    any_side = next(iter(sides.values()))
    img_ids = [int(i) for i in any_side.view.img_ids]
    n, block = len(img_ids), any_side.modules.inference.FrameSource(any_side.root / "input_temp.mp4").block
    rng = np.random.default_rng(0)
    raw = {"rgb": rng.random((512, 512, 3), dtype=np.float32) * 1.2 - 0.1}  # a render, a little out of [0, 1]
    alphas = [any_side.alpha(img_ids[r % n]) for r in range(rounds + 1)]
    frames = [any_side.decode_block(0, block)[r % block] for r in range(rounds + 1)]
    calls = {
        "background": lambda side: lambda r: side.background(r % n),
        "alpha": lambda side: lambda r: side.alpha(img_ids[r % n]),
        "decode": lambda side: lambda r: side.decode_block(r % (n // block), block),
        "paste": lambda side: lambda r: side.paste(raw, frames[r], alphas[r]),
    }
    times = {}
    for part in parts:
        per_round = block if part == "decode" else 1
        part_rounds = decode_rounds(rounds, n, block) if part == "decode" else rounds
        times[part] = alternating({name: calls[part](side) for name, side in sides.items()}, part_rounds, per_round)
        outputs = [as_levels(calls[part](side)(1)) for side in sides.values()]
        first = outputs[0]
        assert all(np.array_equal(np.asarray(o), np.asarray(first)) for o in outputs[1:]), f"{part}: bits differ"
    return times


def print_table(columns: dict[str, dict[str, dict[str, float]]], names: list[str]) -> None:
    """One row per part (and the total), one column per (subject, side), in ms per frame; parts a column did not time
    (the 1080p copy's background and alpha: the same crop-sized files) are the first column's, marked *."""
    first = next(iter(columns.values()))
    heads = [f"{title} {name}" for title in columns for name in names]
    print("| part       | " + " | ".join(f"{h:>14}" for h in heads) + " |")
    print("|------------|" + "|".join("-" * 16 for _ in heads) + "|")
    for part in [*first, "total"]:
        cells = []
        for table in columns.values():
            for name in names:
                if part == "total":
                    cells.append(f"{sum((table.get(p) or first[p])[name] for p in first):>14.2f}")
                else:
                    cells.append(f"{table[part][name]:>14.2f}" if part in table else f"{first[part][name]:>13.2f}*")
        print(f"| {part:<10} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", type=Path, required=True, help="a preprocessed subject folder (data/<name>)")
    parser.add_argument("--audio", default="aud_mel.npy", help="its audio features file (any the folder has)")
    parser.add_argument("--baseline-rev", help="git revision whose code is 'before' (none: after only)")
    parser.add_argument("--rounds", type=int, default=40, help="timed calls of each part and side (decode: blocks)")
    parser.add_argument("--hd", action="store_true", help="also decode and paste on a 1080p copy of the subject")
    parser.add_argument("--cv2-threads", type=int, default=1, help="cv2.setNumThreads (1: each part on one core)")
    args = parser.parse_args()
    cv2.setNumThreads(args.cv2_threads)
    after = SimpleNamespace(subject=subject_module, inference=inference, pasteback=pasteback)
    sides = {"after": after}
    if args.baseline_rev:
        sides = {"before": SimpleNamespace(**baseline_modules(args.baseline_rev)), **sides}
    full = {name: Side(m, args.subject, args.audio) for name, m in sides.items()}
    columns = {"512": part_timings(full, args.rounds, ("background", "alpha", "decode", "paste"))}
    if args.hd:  # decode and paste again, on a 1080p copy of the frames those parts read
        first = next(iter(full.values()))
        block = inference.FrameSource(args.subject / "input_temp.mp4").block
        frames = (decode_rounds(args.rounds, len(first.view.img_ids), block) + 1) * block
        hd = hd_copy(args.subject, Path(tempfile.mkdtemp()), frames)
        columns["1080p"] = part_timings({name: Side(m, hd, args.audio) for name, m in sides.items()}, args.rounds,
                                        ("decode", "paste"))
    print(f"{args.subject.name}: ms per frame, medians of {args.rounds} calls alternating; outputs the same bits")
    print_table(columns, list(sides))


if __name__ == "__main__":
    main()
