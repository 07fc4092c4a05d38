"""Throughput and peak memory of the real preprocessing pipeline on a real clip.

    python bench/preprocess.py                           # trump_10s.mp4 (250 frames, 512x512)
    python bench/preprocess.py --loop 12                 # a 2-minute input: the clip looped with -stream_loop
    python bench/preprocess.py --loop 6 --scale 1080     # ... upscaled to 1080p: the memory check
    python bench/preprocess.py --upto landmarks          # only the first steps

Each step's frames/s is reported twice: raw (frames / seconds of the step on the input) and marginal,
which excludes fixed costs such as loading a model: the same steps first run on a 3.2 s warm-up cut
of the input, and marginal = (frames_input - frames_warmup) / (seconds_input - seconds_warmup).
Peak RSS is resource.getrusage of this process and of its largest child (worker processes, ffmpeg).
CPU seconds per step count this process and all its descendants (live ones through /proc), so a
step that keeps both cores busy shows about twice its wall time; "main" counts this process alone
(its threads included): work no worker shares, so on an idle 2-core machine a step takes about
max(cpu / 2, main). The load average tells how much other work shared the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "bench"))  # process_tree, beside this script, also when it is loaded as a module

from omegaconf import DictConfig, open_dict  # noqa: E402

from ernerf.io.layout import SubjectLayout  # noqa: E402
from process_tree import descendants  # noqa: E402
from ernerf.io.video import probe, run_ffmpeg  # noqa: E402
from ernerf.preprocess.base import StepContext, StepReport, run_steps  # noqa: E402
from ernerf.preprocess.pipeline import build_steps  # noqa: E402
from ernerf.preprocess.segmentation import warm_pool  # noqa: E402

DEFAULT_CLIP = REPO.parent / "shared" / "data" / "train" / "trump_10s.mp4"
WARMUP_SECONDS = 3.2  # just above the ingest step's 3 s minimum


def compose_preprocess(overrides: list[str]) -> DictConfig:
    """The real `preprocess` entry point's config."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="preprocess", overrides=["subject=bench", *overrides])


def steps_config(cfg: DictConfig, upto: str | None) -> DictConfig:
    """The `preprocess.steps` block, cut after `upto` (so unfinished later steps are not even imported)."""
    names = list(cfg.preprocess.steps.keys())
    if upto is not None and upto not in names:
        sys.exit(f"--upto {upto!r} is not a step; steps: {names}")
    keep = names[: names.index(upto) + 1] if upto else names
    with open_dict(cfg):  # delete in place: the steps interpolate ${preprocess.workers} from the root
        for name in names[len(keep):]:
            del cfg.preprocess.steps[name]
    return cfg.preprocess.steps


def make_input(clip: Path, out: Path, loop: int, scale: int | None, seconds: float | None = None) -> Path:
    """Loop / upscale / cut the clip with ffmpeg into `out` (H.264 + AAC)."""
    args = ["-stream_loop", str(loop - 1), "-i", str(clip)]
    if seconds is not None:
        args += ["-t", f"{seconds}"]
    if scale:
        args += ["-vf", f"scale=-2:{scale}:flags=bicubic"]
    args += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
             "-c:a", "aac", "-b:a", "128k", str(out)]
    run_ffmpeg(args, f"preparing the benchmark input {out.name}")
    return out


def run_pipeline(steps_cfg: DictConfig, video: Path, root: Path) -> tuple[list[StepReport], int]:
    """Run every step once on a fresh subject folder; returns the reports and the frame count."""
    if root.exists():
        shutil.rmtree(root)
    layout = SubjectLayout(root)
    root.mkdir(parents=True)
    reports = []
    for step in build_steps(steps_cfg):
        cpu0, main0 = cpu_seconds(), main_cpu_seconds()
        reports += run_steps([step], StepContext(layout=layout, video=video))
        reports[-1].facts["cpu_seconds"] = cpu_seconds() - cpu0
        reports[-1].facts["main_cpu_seconds"] = main_cpu_seconds() - main0
        print(f"  {step.name:<15} {reports[-1].seconds:7.1f} s  cpu {reports[-1].facts['cpu_seconds']:6.1f} s"
              f" (main {reports[-1].facts['main_cpu_seconds']:5.1f} s)"
              f"   peak RSS {peak_rss_mib():.0f} MiB   load {os.getloadavg()[0]:.1f}", flush=True)
    return reports, int(json.loads(layout.meta.read_text())["num_frames"])


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, its finished children and its live descendants."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile (and its time moved into RUSAGE_CHILDREN of its parent)
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def main_cpu_seconds() -> float:
    """User + system CPU seconds of this process alone (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_mib() -> float:
    """Peak resident memory so far of this process plus that of its largest child, in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own + child


def table(full: list[StepReport], n_full: int, warm: list[StepReport], n_warm: int) -> list[dict]:
    """Per step and overall: seconds, raw and marginal frames/s."""
    rows = []
    for f, w in zip(full, warm):
        rows.append(_row(f.name, f.seconds, w.seconds, n_full, n_warm, f.facts.get("cpu_seconds", 0.0),
                         f.facts.get("main_cpu_seconds", 0.0)))
    total, total_warm = sum(r.seconds for r in full), sum(r.seconds for r in warm)
    cpu = sum(r.facts.get("cpu_seconds", 0.0) for r in full)
    main = sum(r.facts.get("main_cpu_seconds", 0.0) for r in full)
    rows.append(_row("overall", total, total_warm, n_full, n_warm, cpu, main))
    return rows


def _row(name: str, seconds: float, warm_seconds: float, n: int, n_warm: int, cpu: float, main: float = 0.0) -> dict:
    extra = seconds - warm_seconds
    marginal = (n - n_warm) / extra if extra > 1e-3 and n > n_warm else float("nan")
    return {"step": name, "seconds": round(seconds, 2), "warmup_seconds": round(warm_seconds, 2),
            "fps": round(n / max(seconds, 1e-9), 2), "marginal_fps": round(marginal, 2),
            "cpu_seconds": round(cpu, 2), "main_cpu_seconds": round(main, 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="input video (default: %(default)s)")
    p.add_argument("--loop", type=int, default=1, help="play the clip K times in a row (ffmpeg -stream_loop)")
    p.add_argument("--scale", type=int, default=None, help="upscale to this height, e.g. 1080")
    p.add_argument("--upto", default=None, help="stop after this step")
    p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "preprocess")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up run (no marginal figures)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the preprocess config, e.g. preprocess.workers=1")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Prepare the input, run warm-up and full pipelines, print and save the figures."""
    args = parse_args(argv)
    if not args.clip.exists():
        sys.exit(f"clip {args.clip} not found: pass --clip <video> (the default expects ../shared/data beside the repo)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    steps_cfg = steps_config(compose_preprocess(args.overrides), args.upto)
    video = args.clip
    if args.loop > 1 or args.scale:
        video = make_input(args.clip, args.workdir / "input.mp4", args.loop, args.scale)
    info = probe(video)
    print(f"input {video}: {info.width}x{info.height}, {info.duration:.1f} s, {info.num_frames} frames")
    warm_pool(int(compose_preprocess(args.overrides).preprocess.workers))  # as preprocess_subject does
    warm, n_warm = [], 0
    if not args.no_warmup:
        cut = make_input(args.clip, args.workdir / "warmup.mp4", 1, args.scale, seconds=WARMUP_SECONDS)
        print(f"warm-up run ({WARMUP_SECONDS} s):")
        warm, n_warm = run_pipeline(steps_cfg, cut, args.workdir / "warmup")
    print("timed run:")
    t0 = time.perf_counter()
    full, n_full = run_pipeline(steps_cfg, video, args.workdir / "subject")
    wall = time.perf_counter() - t0
    rows = table(full, n_full, warm or [StepReport(r.name, "", 0.0, {}) for r in full], n_warm)
    report = {"input": str(video), "size": f"{info.width}x{info.height}", "frames": n_full, "wall_seconds": round(wall, 1),
              "peak_rss_mib": round(peak_rss_mib(), 0), "load_average": os.getloadavg(), "steps": rows}
    print_rows(rows, n_full, wall)
    print(f"peak RSS (self + largest child): {report['peak_rss_mib']:.0f} MiB; load average "
          + " ".join(f"{x:.1f}" for x in report["load_average"]))
    (args.workdir / "results.json").write_text(json.dumps(report, indent=2))


def print_rows(rows: list[dict], n: int, wall: float) -> None:
    """A plain-text table of the figures."""
    print(f"\n{n} frames, wall {wall:.1f} s")
    print(f"{'step':<15}{'seconds':>9}{'warm-up s':>11}{'fps':>9}{'marginal fps':>14}{'cpu s':>9}{'main s':>8}")
    for r in rows:
        print(f"{r['step']:<15}{r['seconds']:>9.1f}{r['warmup_seconds']:>11.1f}{r['fps']:>9.1f}{r['marginal_fps']:>14.1f}"
              f"{r['cpu_seconds']:>9.1f}{r['main_cpu_seconds']:>8.1f}")


if __name__ == "__main__":
    main()
