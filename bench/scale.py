"""Minutes-long subjects: preprocessing cost (and, on a GPU, training and inference) against the video's length.

    python bench/scale.py                          # 20 s, 1, 5 and 10 minutes of trump_10s.mp4, ping-pong
    python bench/scale.py --lengths 20 60          # seconds (or 1m, 5m)
    python bench/scale.py --quick                  # 1.6 s forward and back (3.2 s), preprocessing only (the smoke test)
    python bench/scale.py --lengths 20 --train --infer   # + train.py per stage and infer.py of 3 minutes of audio

Long inputs are made from one real clip played forward, then backward, then forward... (a ping-pong, so the head
never jumps), its audio ping-ponged with it: reversed speech, so such a clip measures cost, not quality. Each length
is preprocessed by the README's command, `python preprocess.py video=... subject=...`, as a subprocess. Figures per
length: wall time, frames/s per step (from each step's `.steps/<step>.json` marker) and overall, peak RSS (the
largest single process, from the kernel's accounting of the finished process tree, and the sum over the live tree,
sampled), dataset size on disk and file count per folder, and the load average before and after. GPU parts
(`--train`, `--infer`) say "skipped: no GPU" without CUDA. `--train` trains each stage whole; a long video's stage
rates on a GPU machine (which has no face models to preprocess with) come from `bench/stage_rates.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "bench"))  # process_tree, beside this script, also when it is loaded as a module

from process_tree import descendants  # noqa: E402
from ernerf.io.video import ffmpeg_exe, probe, run_ffmpeg  # noqa: E402

DEFAULT_CLIP = REPO.parent / "shared" / "data" / "train" / "trump_10s.mp4"
DEFAULT_LENGTHS = ("20", "1m", "5m", "10m")
QUICK_CUT = 1.6  # --quick ping-pongs the clip's first seconds: forward and back, 80 frames (ingest takes >= 3 s)
INFER_AUDIO_SECONDS = 180.0  # the inference figure: 3 minutes of driving audio
STAGES = ("head", "lips", "torso")
RSS_EVERY_S = 0.25
NOTE = ("inputs are ping-pong clips (forward, then backward) with their audio ping-ponged too (reversed speech): "
        "they measure cost, not quality")


def parse_length(text: str) -> float:
    """'20' or '20s' -> 20.0, '5m' -> 300.0 seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([sm]?)", text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length: give seconds (20, 20s) or minutes (5m)")
    return float(m[1]) * (60.0 if m[2] == "m" else 1.0)


def length_name(seconds: float) -> str:
    return f"{seconds / 60:g}min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


# ---------------------------------------------------------------- inputs


def pingpong_unit(clip: Path, work: Path, cut: float | None = None) -> Path:
    """The clip (its first `cut` seconds) forward then backward, video and audio (H.264 + AAC), made once."""
    out = work / f"pingpong_{clip.stem}{f'_{cut:g}s' if cut else ''}.mp4"
    if out.exists():
        return out
    graph = ("[0:v]split[f][b];[b]reverse[r];[f][r]concat=n=2:v=1:a=0[v];"
             "[0:a]asplit[fa][ba];[ba]areverse[ra];[fa][ra]concat=n=2:v=0:a=1[a]")
    tmp = out.with_name(f".tmp.{out.name}")
    cut_args = ["-t", f"{cut}"] if cut else []
    run_ffmpeg([*cut_args, "-i", str(clip), "-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-c:v", "libx264",
                "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-g", "50", "-c:a", "aac", "-b:a", "128k",
                str(tmp)], f"making the ping-pong of {clip.name}")
    os.replace(tmp, out)
    return out


def long_clip(unit: Path, seconds: float, work: Path) -> Path:
    """`seconds` of the ping-pong unit repeated (stream copy: no re-encode, whatever the length)."""
    out = work / f"{unit.stem}_{length_name(seconds)}.mp4"
    if out.exists():
        return out
    repeats = int(seconds // max(probe(unit).duration, 1e-3)) + 1
    tmp = out.with_name(f".tmp.{out.name}")
    run_ffmpeg(["-stream_loop", str(repeats), "-i", str(unit), "-t", f"{seconds:.3f}", "-c", "copy", str(tmp)],
               f"making the {length_name(seconds)} clip")
    os.replace(tmp, out)
    return out


def driving_audio(unit: Path, seconds: float, work: Path) -> Path:
    """`seconds` of the ping-pong unit's audio, 16 kHz mono wav: inference's driving audio."""
    out = work / f"{unit.stem}_audio_{length_name(seconds)}.wav"
    if not out.exists():
        run_ffmpeg(["-stream_loop", "-1", "-i", str(unit), "-t", f"{seconds:.3f}", "-vn", "-ac", "1", "-ar", "16000",
                    str(out)], "making the driving audio")
    return out


# ---------------------------------------------------------------- running a command and measuring it


class TreeRss:
    """Samples the summed resident memory of a process and its live descendants (Linux /proc) in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            self.peak_kib = max(self.peak_kib, sum(_rss_kib(p) for p in [self.pid, *descendants(self.pid)]))

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._stop.set()
        self._thread.join()
        return self.peak_kib / 1024


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # ended meanwhile
        pass
    return 0


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict:
    """Run `cmd` (output to `log`); wall seconds, CPU seconds and peak RSS of its whole process tree.

    os.wait4 gives the kernel's figures for this child and every descendant it waited for (the pool's
    workers, ffmpeg): CPU time summed, ru_maxrss the largest single process. The sampled sum adds up
    the processes alive at the same moment."""
    load = os.getloadavg()
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        sampler = TreeRss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {"returncode": proc.returncode, "wall_seconds": round(wall, 2),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "peak_tree_rss_mib": round(sampler.stop(), 1),
            "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()]}


def _check(run: dict, what: str, log: Path) -> None:
    if run["returncode"] != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        sys.exit(f"{what} failed (exit {run['returncode']}); last lines of {log}:\n{tail}")


# ---------------------------------------------------------------- preprocessing


def preprocess(video: Path, data_root: Path, subject: str, overrides: list[str]) -> dict:
    """The README's command on `video`, from scratch; its figures and the dataset's."""
    root = data_root / subject
    if root.exists():
        shutil.rmtree(root)
    log = data_root / f"{subject}.preprocess.log"
    cmd = [sys.executable, str(REPO / "preprocess.py"), f"video={video}", f"subject={subject}",
           f"paths.data_root={data_root}", "preprocess.progress=false", *overrides]
    run = run_measured(cmd, log)
    _check(run, f"preprocessing {video.name}", log)
    frames = int(json.loads((root / "meta.json").read_text())["num_frames"])
    steps = step_figures(root, frames)
    run["frames"] = frames
    run["fps_overall"] = round(frames / run["wall_seconds"], 2)
    run["fps_steps"] = round(frames / sum(s["seconds"] for s in steps), 2)  # without interpreter start-up
    run["steps"] = steps
    run["dataset"] = dataset_size(root)
    return run


def step_figures(root: Path, frames: int) -> list[dict]:
    """Seconds and frames/s of each step, from its completion marker, in the order the run recorded."""
    order = json.loads((root / ".steps" / "order.json").read_text())["steps"]
    rows = []
    for name in order:
        seconds = float(json.loads((root / ".steps" / f"{name}.json").read_text())["seconds"])
        rows.append({"step": name, "seconds": round(seconds, 2), "fps": round(frames / max(seconds, 1e-9), 1)})
    return rows


def dataset_size(root: Path) -> dict:
    """Bytes and file count of the dataset, in all and per top-level entry (hidden working folders apart)."""
    parts: dict[str, dict[str, int]] = {}
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(root).parts
        if rel[0] in (".logs",):  # Hydra's logs of the run, not the dataset
            continue
        key = rel[0] if len(rel) > 1 else "(files)"
        entry = parts.setdefault(key, {"bytes": 0, "files": 0})
        entry["bytes"] += path.stat().st_size
        entry["files"] += 1
    return {"bytes": sum(p["bytes"] for p in parts.values()), "files": sum(p["files"] for p in parts.values()),
            "parts": dict(sorted(parts.items(), key=lambda kv: -kv[1]["bytes"]))}


# ---------------------------------------------------------------- GPU parts

# run a script in this interpreter and leave torch's peak GPU memory in $ERNERF_GPU_PROBE at exit
PROBE = """import atexit, json, os, runpy, sys
def _peak():
    import torch
    out = {"max_memory_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None}
    open(os.environ["ERNERF_GPU_PROBE"], "w").write(json.dumps(out))
atexit.register(_peak)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_run(script: str, args: list[str], log: Path) -> dict:
    """`python <script> <args>` under the GPU-memory probe."""
    probe_file = log.with_suffix(".gpu.json")
    env = {**os.environ, "ERNERF_GPU_PROBE": str(probe_file)}
    run = run_measured([sys.executable, "-c", PROBE, str(REPO / script), *args], log, env)
    _check(run, f"{script} {' '.join(args)}", log)
    if probe_file.exists():
        run.update(json.loads(probe_file.read_text()))
    return run


def train_stages(data_root: Path, runs_root: Path, subject: str, overrides: list[str]) -> dict:
    """train.py per stage: wall, steps/s (steps of finished.json over the whole command's wall), peak GPU memory."""
    out = {}
    for stage in STAGES:
        run = gpu_run("train.py", [f"subject={subject}", f"stage={stage}", f"paths.data_root={data_root}",
                                   f"paths.runs_root={runs_root}", *overrides],
                      runs_root / f"{subject}.train_{stage}.log")
        finished = runs_root / subject / stage / "finished.json"
        step = json.loads(finished.read_text()).get("step") if finished.exists() else None
        run["steps"] = step
        run["it_per_s_incl_startup"] = round(step / run["wall_seconds"], 1) if step else None
        out[stage] = run
    return out


def infer(unit: Path, work: Path, data_root: Path, runs_root: Path, subject: str) -> dict:
    """infer.py on 3 minutes of driving audio: wall, seconds per output second, peak GPU memory."""
    audio = driving_audio(unit, INFER_AUDIO_SECONDS, work)
    out = runs_root / f"{subject}_infer.mp4"
    run = gpu_run("infer.py", [f"subject={subject}", f"audio={audio}", f"output={out}", f"paths.data_root={data_root}",
                               f"paths.runs_root={runs_root}", "progress=false"], runs_root / f"{subject}.infer.log")
    run["audio_seconds"] = INFER_AUDIO_SECONDS
    run["seconds_per_output_second"] = round(run["wall_seconds"] / INFER_AUDIO_SECONDS, 3)
    return run


# ---------------------------------------------------------------- report


def print_length(r: dict) -> None:
    p = r["preprocess"]
    print(f"\n{r['length']} ({p['frames']} frames): wall {p['wall_seconds']:.1f} s, {p['fps_overall']:.1f} frames/s "
          f"overall ({p['fps_steps']:.1f} in the steps), cpu {p['cpu_seconds']:.0f} s, peak RSS {p['peak_rss_mib']:.0f} "
          f"MiB (largest process), {p['peak_tree_rss_mib']:.0f} MiB (tree, sampled); load "
          f"{p['load_before'][0]:.1f} -> {p['load_after'][0]:.1f}")
    print("  " + "  ".join(f"{s['step']} {s['fps']:.0f}" for s in p["steps"]) + "   (frames/s per step)")
    d = p["dataset"]
    print(f"  dataset {d['bytes'] / 2**20:.1f} MiB in {d['files']} files: " + ", ".join(
        f"{k} {v['bytes'] / 2**20:.1f} MiB/{v['files']}" for k, v in list(d["parts"].items())[:6]))
    for part in ("train", "infer"):
        if isinstance(r.get(part), str):
            print(f"  {part}: {r[part]}")


def print_table(results: list[dict]) -> None:
    steps = [s["step"] for s in results[0]["preprocess"]["steps"]]
    head = f"{'length':<8}{'frames':>7}{'wall s':>8}{'fps':>6}{'RSS MiB':>9}{'tree MiB':>9}{'MiB':>8}{'files':>7}"
    print("\n" + head + "".join(f"{s[:9]:>10}" for s in steps))
    for r in results:
        p = r["preprocess"]
        fps = {s["step"]: s["fps"] for s in p["steps"]}
        print(f"{r['length']:<8}{p['frames']:>7}{p['wall_seconds']:>8.1f}{p['fps_overall']:>6.1f}"
              f"{p['peak_rss_mib']:>9.0f}{p['peak_tree_rss_mib']:>9.0f}{p['dataset']['bytes'] / 2**20:>8.1f}"
              f"{p['dataset']['files']:>7}" + "".join(f"{fps.get(s, float('nan')):>10.1f}" for s in steps))
    print(f"({NOTE}; per-step columns are frames/s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="the real clip to ping-pong (default: %(default)s)")
    p.add_argument("--lengths", nargs="+", type=parse_length, default=[parse_length(x) for x in DEFAULT_LENGTHS],
                   help="lengths to measure: seconds (20, 20s) or minutes (5m); default 20 1m 5m 10m")
    p.add_argument("--quick", action="store_true",
                   help=f"the clip's first {QUICK_CUT:g} s forward and back, preprocessing only (the smoke test)")
    p.add_argument("--work-dir", type=Path, default=REPO / "bench" / "out" / "scale",
                   help="clips, datasets and runs go here (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, help="results file (default: <work-dir>/results.json)")
    p.add_argument("--train", action="store_true", help="GPU: train.py per stage on each length's subject")
    p.add_argument("--infer", action="store_true", help="GPU: infer.py on 3 minutes of audio (needs --train's runs)")
    p.add_argument("--train-override", action="append", default=[], help="a Hydra override for train.py (repeatable)")
    p.add_argument("--keep", action="store_true", help="keep each length's dataset (default: removed once measured)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of preprocess.py, e.g. preprocess.workers=1")
    args = p.parse_args(argv)
    args.cut = None
    if args.quick:
        args.cut, args.lengths, args.train, args.infer = QUICK_CUT, [2 * QUICK_CUT], False, False
    return args


def measure_length(args: argparse.Namespace, unit: Path, seconds: float, gpu: bool) -> dict:
    """Preprocess one length (and train / infer on it when asked and a GPU is there)."""
    name = length_name(seconds)
    video = long_clip(unit, seconds, args.work_dir)
    data_root, runs_root = args.work_dir / "data", args.work_dir / "runs"
    data_root.mkdir(parents=True, exist_ok=True)
    subject = f"scale_{name}"
    print(f"{name}: preprocessing {video.name} ...", flush=True)
    result = {"length": name, "seconds": seconds, "video": str(video), "clip_seconds": round(probe(video).duration, 3),
              "preprocess": preprocess(video, data_root, subject, args.overrides)}
    if args.train or args.infer:
        runs_root.mkdir(parents=True, exist_ok=True)
    if args.train:
        result["train"] = train_stages(data_root, runs_root, subject, args.train_override) if gpu else "skipped: no GPU"
    if args.infer:
        result["infer"] = infer(unit, args.work_dir, data_root, runs_root, subject) if gpu else "skipped: no GPU"
    if not args.keep and not args.train and not args.infer:
        shutil.rmtree(data_root / subject)
    print_length(result)
    return result


def main(argv: list[str] | None = None) -> None:
    """Make the clips, measure each length, print the table and write the JSON."""
    args = parse_args(argv)
    if not args.clip.exists():
        sys.exit(f"clip {args.clip} not found: pass --clip <video> (the default expects ../shared/data beside the repo)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    gpu = (args.train or args.infer) and has_cuda()
    unit = pingpong_unit(args.clip, args.work_dir, args.cut)
    print(f"{NOTE}\nclip {args.clip.name}, ping-pong {probe(unit).duration:.1f} s; ffmpeg {ffmpeg_exe()}; "
          f"{os.cpu_count()} CPUs, nice {os.nice(0)}, load {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    results = [measure_length(args, unit, s, gpu) for s in args.lengths]
    print_table(results)
    report = {"note": NOTE, "clip": str(args.clip), "cpus": os.cpu_count(), "nice": os.nice(0),
              "command": [sys.executable, *sys.argv], "overrides": args.overrides, "lengths": results}
    out = args.json or args.work_dir / "results.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
