"""Renders with at most the first k occupied samples a ray (`model.marcher.render_max_samples`) against the full render.

A frame's render time is its field samples: every ray evaluates each of its 16 samples that falls in an occupied
cell, also those behind an opaque face, whose weight is nil. For each k this prints the samples a frame evaluates,
how far its frames are from the full render (PSNR over the crop, and the largest pixel difference), and on a GPU the
frames/s of graphed renders.

    python bench/render_samples.py --subject trump [--max-samples 2,3,4,6,8] [--frames 8] [--time-frames 100]
    python bench/render_samples.py --subject trump --downscale 4 --frames 4 --time-frames 0     # CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts

from ernerf.apps.checkpoints import trained_stages  # noqa: E402
from ernerf.apps.inference import SubjectView, audio_window, load_subject, render_crop  # noqa: E402
from ernerf.engine import ExecutionEngine  # noqa: E402
from ernerf.metrics.image import psnr  # noqa: E402
from ernerf.picks import evenly_spaced  # noqa: E402
from ernerf.systems.loading import load_system  # noqa: E402


def count_occupied(system) -> list[int]:
    """Record the occupied samples of each eagerly rendered frame (the system drops the count on its way out)."""
    counts: list[int] = []
    render_frame = system.render_frame

    def counting(inputs, capacity, chunk):
        out = render_frame(inputs, capacity, chunk)
        counts.append(int(out["occupied"]))
        return out

    system.render_frame = counting
    return counts


def render_frames(system, subject: SubjectView, feats: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """rgb uint8 [F, H, W, 3] of the subject's frames, each with its pose, blink and audio window."""
    crops = []
    for i in frames:
        eye = None if subject.eye is None else float(subject.eye[i])
        out = render_crop(system, subject, subject.poses[i], eye, audio_window(feats, int(i)), subject.background(int(i)),
                          ("rgb",), frame=subject.coded_frame(int(i)))
        crops.append(out["rgb"])
    return np.stack(crops)


def frames_per_second(system, subject: SubjectView, feats: np.ndarray, count: int) -> float:
    """Frames/s of `count` renders after two untimed ones (the first captures the render graph on a GPU)."""
    frames = np.arange(count + 2) % len(subject.poses)
    render_frames(system, subject, feats, frames[:2])
    if system.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    render_frames(system, subject, feats, frames[2:])
    if system.device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - t0)


def compare(args: argparse.Namespace) -> dict:
    """Each k's samples, distance from the full render and (with --time-frames) speed, on the latest stage."""
    found = [t for t in trained_stages(args.runs_root, args.subject) if args.stage in (None, t.stage.name)]
    if not found:
        raise SystemExit(f"no checkpoint for subject {args.subject} under {args.runs_root}: train one first.")
    trained = found[-1]
    eager = load_system(trained.checkpoint, args.device, ExecutionEngine(render_cuda_graph=False))
    kind = eager.hparams["audio_kind"]
    subject = load_subject(Path(args.data_root) / args.subject, trained.feature_file(kind), trained.stage.background,
                           downscale=args.downscale)
    feats = np.load(Path(args.data_root) / args.subject / trained.feature_file(kind))
    frames = evenly_spaced(len(subject.poses), args.frames)
    counts = count_occupied(eager)
    report = {"subject": args.subject, "stage": trained.stage.name, "size": subject.height, "frames": frames.tolist(),
              "arms": {}}
    full = None
    timed = load_system(trained.checkpoint, args.device) if args.time_frames else None
    for k in [None, *args.max_samples]:
        eager.marcher.render_max_samples = k
        counts.clear()
        crops = render_frames(eager, subject, feats, frames)
        full = crops if full is None else full
        scores = [psnr(a, b) for a, b in zip(crops, full)]
        arm = {"samples_a_frame": round(float(np.mean(counts))), "samples_vs_full": None,
               "psnr_vs_full_min": round(min(scores), 2), "max_pixel_diff": int(np.abs(crops.astype(int) - full).max())}
        if timed is not None:
            timed.marcher.render_max_samples = k
            timed.execution.graphed_render = None  # a new graph: the old one marched the previous setting
            arm["frames_per_s"] = round(frames_per_second(timed, subject, feats, args.time_frames), 1)
        report["arms"]["all" if k is None else str(k)] = arm
    base = report["arms"]["all"]["samples_a_frame"]
    for arm in report["arms"].values():
        arm["samples_vs_full"] = round(arm["samples_a_frame"] / base, 3) if base else None
    return report


def print_table(report: dict) -> None:
    print(f"{report['subject']} {report['stage']}, {report['size']} px, frames {report['frames']}")
    print(f"{'k':>4} {'samples a frame':>16} {'x full':>7} {'PSNR vs full (min)':>19} {'max diff':>9} {'frames/s':>9}")
    for k, arm in report["arms"].items():
        close = "exact" if arm["max_pixel_diff"] == 0 else f"{arm['psnr_vs_full_min']:.2f}"
        fps = f"{arm['frames_per_s']:.1f}" if "frames_per_s" in arm else "-"
        print(f"{k:>4} {arm['samples_a_frame']:>16} {arm['samples_vs_full']:>7} {close:>19} {arm['max_pixel_diff']:>9} "
              f"{fps:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--stage", help="a trained stage (default: the latest)")
    parser.add_argument("--max-samples", default="2,3,4,6,8", help="comma-separated k to compare with all samples")
    parser.add_argument("--frames", type=int, default=8, help="frames compared, evenly spaced over the subject")
    parser.add_argument("--time-frames", type=int, default=100, help="frames timed per k (0: no timing)")
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.max_samples = [int(k) for k in args.max_samples.split(",") if k]
    report = compare(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
