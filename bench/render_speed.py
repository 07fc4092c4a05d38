"""Inference speed: rendered frames/s of the head (and head+torso) and end-to-end seconds per output second.

Trained subject (GPU):  python bench/render_speed.py --subject <name> [--audio speech.wav] [--seconds 4]
CPU smoke run (untrained model on a 12-frame subject cut from a real clip, tiny crops):
    python bench/render_speed.py --untrained --downscale 16 --frames 3 --seconds 0.6
End to end = audio features + rendering + paste-back + H.264/AAC encoding, divided by the output duration.
`render_loop_fps`: infer.py's render loop alone (frames rendered and copied back, one launched ahead of the one read;
with --render-async the device renders the next frame meanwhile).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts

from ernerf.apps.checkpoints import TrainedStage, audio_extractor, trained_stages  # noqa: E402
from ernerf.apps.inference import (OutputOptions, Renderer, SubjectView, driving_features,  # noqa: E402
                                  load_subject, run_inference)
from ernerf.audio.features import AudioFeatureExtractor  # noqa: E402
from ernerf.constants import FPS  # noqa: E402
from ernerf.engine import ExecutionEngine  # noqa: E402
from ernerf.io.audio import load_audio, write_wav  # noqa: E402
from ernerf.systems.loading import load_system  # noqa: E402
from ernerf.postprocess.pasteback import PasteBack  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def time_renders(system: Renderer, subject: SubjectView, frames: int, warmup: int = 1) -> float:
    """Frames/s of system.render_image on the subject's first poses (after `warmup` untimed frames)."""
    dev = system.device
    window = torch.zeros(8, 16, int(system.hparams["feature_dim"]), device=dev)
    intr = tuple(float(v) for v in subject.intrinsics)  # numbers, as inference passes them (a tensor costs 4 reads)
    bg = torch.from_numpy(subject.background(0).astype(np.float32) / 255).to(dev)
    for k in range(warmup + frames):
        if k == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        pose = torch.from_numpy(subject.poses[k % len(subject.poses)]).to(dev)
        system.render_image(pose, intr, subject.height, subject.width, window, None, None, bg)
    _sync(dev)
    return frames / (time.perf_counter() - t0)


def time_render_loop(system: Renderer, subject: SubjectView, frames: int, warmup: int = 2) -> float:
    """Frames/s of infer.py's render loop alone (`RenderedAhead`: crops launched one ahead and copied back to the
    host as uint8 colours and float depth and opacity), over the subject's first poses; no paste, no encoding. With
    engine.render_async the device renders frame t + 1 while frame t is copied back."""
    from ernerf.apps.inference import RenderedAhead
    from ernerf.postprocess.motion import plan_motion

    total = warmup + frames
    plan = plan_motion(subject.poses, subject.eye, total)
    feats = np.zeros((total, 16, int(system.hparams["feature_dim"])), np.float32)
    loop = RenderedAhead(system, subject, plan, feats).frames(itertools.repeat(subject.background(0)))
    for _ in range(warmup):
        next(loop)
    t0 = time.perf_counter()
    for _ in loop:
        pass
    return frames / (time.perf_counter() - t0)


def profile_renders(system: Renderer, subject: SubjectView, frames: int) -> dict:
    """GPU kernel time, launches and host syncs per rendered frame (PyTorch profiler), after one warm-up frame."""
    from torch.profiler import ProfilerActivity, profile

    from profile_step import kernel_sources, kernel_summary

    time_renders(system, subject, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if system.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        time_renders(system, subject, frames, warmup=0)
    return {**kernel_summary(prof, frames), "top_kernel_sources_ms_per_frame": kernel_sources(prof, frames)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def untrained_system(num_frames: int, device: str) -> tuple[Renderer, AudioFeatureExtractor]:
    """A freshly initialised system from the training config, run by its engine (untrained: timings only show the
    pipeline works), and the extractor of its audio features."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["subject=bench"])
    system = instantiate(cfg.model, num_frames=num_frames)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    system = system.to(dev).eval()
    instantiate(cfg.engine).attach(system)
    return system, instantiate(cfg.audio_features.extractor)


def bench_engine(args: argparse.Namespace) -> ExecutionEngine:
    """The default engine (TF32 on: --tf32 only says so) with the command line's --graph and --chunk."""
    chunks = {"eval_chunk": args.chunk, "eval_chunk_gpu": args.chunk} if args.chunk else {}
    return ExecutionEngine(render_cuda_graph=args.graph, tf32=True, render_async=args.render_async, **chunks)


def end_to_end(system: Renderer, subject: SubjectView, audio: Path, seconds: float, out_dir: Path,
               extractor: AudioFeatureExtractor) -> dict[str, float]:
    """Seconds per output second for `seconds` of `audio`, features to result.mp4."""
    clip = write_wav(out_dir / "clip.wav", load_audio(audio)[: int(seconds * 16000)])
    t0 = time.perf_counter()
    kind, dim = system.hparams["audio_kind"], int(system.hparams["feature_dim"])
    feats, _ = driving_features(clip, kind, dim, extractor)
    t_feat = time.perf_counter() - t0
    result = run_inference(system, subject, feats, clip, out_dir, OutputOptions(PasteBack("face_neck")),
                           progress=False)
    total = t_feat + result.seconds_total
    return {"output_seconds": result.num_frames / FPS, "features_s": round(t_feat, 3),
            "render_fps_in_pipeline": round(result.render_fps, 3),
            "seconds_per_output_second": round(total / (result.num_frames / FPS), 3), **peak_memory(system.device)}


def peak_memory(device: torch.device) -> dict:
    """The process's peak host RSS and, on a GPU, the peak of allocated GPU memory (MiB): run two output lengths in
    two processes to see whether memory stays flat in the length."""
    peaks = {"host_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device.type == "cuda":
        peaks["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return peaks


def benched_stages(args: argparse.Namespace) -> list[TrainedStage]:
    """The latest trained stage that renders the head alone (over the torso background), and the latest that renders
    head and torso over the plate, each when trained."""
    found = trained_stages(args.runs_root, args.subject)
    return [kind[-1] for kind in ([t for t in found if t.stage.background != "plate"],
                                  [t for t in found if t.stage.background == "plate"]) if kind]


def bench_trained(args: argparse.Namespace) -> dict:
    """Benchmark each trained stage of a real subject."""
    report = {}
    audio = Path(args.audio) if args.audio else Path(args.data_root) / args.subject / "audio.wav"
    for trained in benched_stages(args):
        engine = bench_engine(args)
        system = load_system(trained.checkpoint, args.device, engine)
        kind, dim = system.hparams["audio_kind"], int(system.hparams["feature_dim"])
        subject = load_subject(Path(args.data_root) / args.subject, trained.feature_file(kind),
                               trained.stage.background, downscale=args.downscale)
        label = "head+torso" if trained.stage.background == "plate" else "head"
        fps = time_renders(system, subject, args.frames)
        report[label] = {"stage": trained.stage.name, "size": subject.height, "render_fps": round(fps, 3),
                         "render_loop_fps": round(time_render_loop(system, subject, args.frames), 3),
                         "rays_per_chunk": engine.render_chunk(system.device), "cuda_graph": engine.render_cuda_graph,
                         "render_async": engine.render_async, "tf32": engine.tf32}
        if args.profile:
            report[label]["profile"] = profile_renders(system, subject, min(args.frames, 10))
        if args.render_only:
            continue
        overrides = {"model_path": args.model_path} if args.model_path else None
        with tempfile.TemporaryDirectory() as tmp:
            report[label] |= end_to_end(system, subject, audio, args.seconds, Path(tmp),
                                        audio_extractor(trained, kind, dim, overrides))
    if not report:
        raise SystemExit(f"no checkpoint for subject {args.subject} under {args.runs_root}: train one first.")
    return report


def bench_untrained(args: argparse.Namespace) -> dict:
    """CPU smoke benchmark: untrained head on a mini subject of real frames."""
    from tests.postprocess.mini_subject import write_mini_subject

    with tempfile.TemporaryDirectory() as tmp:
        layout = write_mini_subject(Path(tmp) / "mini", SHARED / "train" / "trump_10s.mp4")
        subject = load_subject(layout.root, "aud_mel.npy", downscale=args.downscale)
        system, extractor = untrained_system(len(subject.poses), args.device)
        fps = time_renders(system, subject, args.frames)
        report = {"head (untrained)": {"size": subject.height, "render_fps": round(fps, 3),
                                       "render_loop_fps": round(time_render_loop(system, subject, args.frames), 3)}}
        audio = Path(args.audio) if args.audio else SHARED / "audio" / "obama_5s.wav"
        report["head (untrained)"] |= end_to_end(system, subject, audio, args.seconds, Path(tmp), extractor)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", help="a trained subject (checkpoints under --runs-root)")
    parser.add_argument("--untrained", action="store_true", help="no checkpoint: fresh model on a mini subject")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--audio", help="driving audio (default: the subject's own audio.wav)")
    parser.add_argument("--frames", type=int, default=25, help="frames timed for render speed")
    parser.add_argument("--seconds", type=float, default=4.0, help="output seconds for the end-to-end run")
    parser.add_argument("--downscale", type=int, default=1, help="render 512/downscale crops (1 = 512x512)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-path", help="local HuBERT/wav2vec2 folder for hu/w2v subjects")
    parser.add_argument("--chunk", type=int, help="rays rendered at once (default: the engine's eval_chunk[_gpu])")
    parser.add_argument("--render-only", action="store_true", help="time rendering only (no features, paste-back, mp4)")
    parser.add_argument("--graph", action=argparse.BooleanOptionalAction, default=True,
                        help="replay frames as CUDA graphs (engine.render_cuda_graph; the default)")
    parser.add_argument("--tf32", action="store_true", help="TF32 matrix products (engine.tf32=true, the default)")
    parser.add_argument("--render-async", action="store_true",
                        help="infer.py's render loop launches frames one ahead (engine.render_async=true)")
    parser.add_argument("--profile", action="store_true", help="also profile kernels, launches and syncs per frame")
    args = parser.parse_args()
    if not args.subject and not args.untrained:
        parser.error("give --subject <name> (trained) or --untrained (smoke run)")
    torch.set_grad_enabled(False)
    report = bench_trained(args) if args.subject else bench_untrained(args)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    print(json.dumps({"device": device, **report}, indent=2))


if __name__ == "__main__":
    main()
