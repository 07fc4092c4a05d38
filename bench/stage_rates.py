"""A minutes-long subject's training cost on a GPU, measured from a short preprocessed one.

    python train.py subject=trump stage=all                                  # the stages the long ones start from
    python bench/stage_rates.py --subject trump --lengths 20 5m 10m [--preload device host] [--steps 1500]

For each length, stage and place of the frames, `bench/train_speed.py --tile-to <frames>` times the stage on the
subject's training frames listed up to a subject of that length's training frames (its share of training frames
kept): cost, not quality. Each stage starts from the short subject's trained stage before it, and the torso renders
the frozen head's layers where its budget for that length would (bench/train_speed.py). Printed and written as
JSON: the stage's step budget for the length, it/s, that budget in minutes of steps, GPU peak, host peak RSS and
the bench's own wall (its preload, compilation and the head's layers included), and per length and place the
stages' minutes of steps summed: `stage=all`'s steps alone, without its preloads, compilation and validations.
Preprocessing a long video is `bench/scale.py`'s (a CPU's work: the GPU machine has no face models).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from scale import parse_length, run_measured  # noqa: E402

STAGES = ("head", "lips", "torso")
FPS = 25
NOTE = "the subject's training frames tiled to each length: cost, not quality"


def train_frames_at(subject_dir: Path, seconds: float) -> int:
    """Training frames of a subject `seconds` long with this subject's share of training frames."""
    counts = [len(json.loads((subject_dir / f"transforms_{split}.json").read_text())["frames"])
              for split in ("train", "val")]
    return max(1, round(seconds * FPS * counts[0] / sum(counts)))


def time_stage(args: argparse.Namespace, frames: int, stage: str, preload: str, work: Path) -> dict:
    """bench/train_speed.py for one stage of a tiled subject, as a subprocess (a fresh process per stage, as
    `train.py stage=<stage>` is): its figures and the process tree's wall and peak RSS."""
    name = f"{frames}_{stage}_{preload}"
    figures, log = work / f"{name}.json", work / f"{name}.log"
    cmd = [sys.executable, str(REPO / "bench" / "train_speed.py"), "--data-root", str(args.data_root), "--subject",
           args.subject, "--tile-to", str(frames), "--stage", stage, "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--budget", "0", "--json", str(figures), "--override", "datamodule.num_workers=0",
           "--override", f"datamodule.preload={preload}", "--override", f"paths.runs_root={args.runs_root}",
           *[item for o in args.override for item in ("--override", o)], *args.bench_args]
    run = run_measured(cmd, log)
    if run["returncode"] != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
        return {"stage": stage, "preload": preload, "error": f"exit {run['returncode']}: {tail}"}
    found = json.loads(figures.read_text())
    keys = ("it_per_s", "stage_steps", "stage_steps_s", "gpu_peak_mib", "host_peak_rss_mib", "first_10_steps_s",
            "cuda_graph_captures", "device")
    return {"stage": stage, "preload": preload, "frames": frames, **{k: found.get(k) for k in keys},
            "bench_wall_s": run["wall_seconds"], "bench_peak_rss_mib": run["peak_rss_mib"]}


def print_length(length: str, frames: int, rows: list[dict]) -> None:
    print(f"\n{length}: {frames} training frames ({NOTE})")
    print(f"  {'stage':<7}{'preload':<8}{'steps':>8}{'it/s':>8}{'steps min':>10}{'GPU MiB':>9}{'host MiB':>9}"
          f"{'bench s':>9}")
    for r in rows:
        if "error" in r:
            print(f"  {r['stage']:<7}{r['preload']:<8}  failed: {r['error'].splitlines()[-1]}")
            continue
        print(f"  {r['stage']:<7}{r['preload']:<8}{r['stage_steps']:>8}{r['it_per_s']:>8.1f}"
              f"{r['stage_steps_s'] / 60:>10.1f}{r['gpu_peak_mib'] or 0:>9.0f}{r['host_peak_rss_mib'] or 0:>9.0f}"
              f"{r['bench_wall_s']:>9.1f}")
    for preload in dict.fromkeys(r["preload"] for r in rows):
        done = [r for r in rows if r["preload"] == preload and "error" not in r]
        if len(done) == len(STAGES):
            print(f"  stage=all, frames {preload}: {sum(r['stage_steps_s'] for r in done) / 60:.1f} min of steps "
                  "(without preloads, compilation, the head's layers and validations)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subject", default="trump", help="a preprocessed subject whose stages are trained")
    p.add_argument("--data-root", type=Path, default=REPO / "data")
    p.add_argument("--runs-root", type=Path, default=REPO / "runs")
    p.add_argument("--lengths", nargs="+", type=parse_length, default=[parse_length(x) for x in ("20", "5m", "10m")],
                   help="video lengths: seconds (20) or minutes (5m); default 20 5m 10m")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--preload", nargs="+", default=["device"], choices=["device", "host"])
    p.add_argument("--steps", type=int, default=1500, help="timed steps a stage (default %(default)s)")
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--override", action="append", default=[], help="a Hydra override for every stage (repeatable)")
    p.add_argument("--cpu", action="store_true", help="run without CUDA too (a smoke test: give trainer=cpu)")
    p.add_argument("--json", type=Path, default=None, help="results file (default: a temporary folder's)")
    p.add_argument("bench_args", nargs="*", help="more arguments of bench/train_speed.py, after --")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    subject_dir = args.data_root / args.subject
    if not (subject_dir / "transforms_train.json").is_file():
        sys.exit(f"{subject_dir} is no preprocessed subject: python preprocess.py video=<clip> subject={args.subject}")
    import torch

    if not torch.cuda.is_available() and not args.cpu:
        print("skipped: no GPU (--cpu runs it anyway, for a smoke test)")
        return
    work = Path(tempfile.mkdtemp(prefix="stage_rates_"))
    report = {"note": NOTE, "subject": str(subject_dir), "steps": args.steps, "lengths": []}
    for seconds in args.lengths:
        frames = train_frames_at(subject_dir, seconds)
        length = f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"
        rows = [time_stage(args, frames, stage, preload, work) for preload in args.preload for stage in args.stages]
        print_length(length, frames, rows)
        report["lengths"].append({"seconds": seconds, "train_frames": frames, "stages": rows})
    out = args.json or work / "stage_rates.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
