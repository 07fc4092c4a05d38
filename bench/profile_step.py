"""Where the time of one training step goes: data, forward, backward, optimizer; GPU kernels; host syncs.

Runs the system's own `training_step` eagerly in a bare loop (no Lightning Trainer, no CUDA graph; the configured
engine's TF32 and compile_field=true apply), so the figures show what each launch costs; `bench/train_speed.py`
gives the step under the Trainer (graphed on one GPU).

GPU (preprocessed subject, frames preloaded on the GPU):
    python bench/profile_step.py --data-root data --subject trump --variant base --variant tf32 \
        --variant fused --variant engine.compile_field=true
CPU smoke run:
    python bench/profile_step.py --data-root data --subject trump --rays 512 --steps 6 --override datamodule.downscale=8

A variant is a comma list of switches: tf32 (TF32 matmuls), fused (fused AdamW), bf16 (bf16 autocast), and Hydra
overrides (`key=value`, e.g. engine.compile_field=true); `base` is the configuration as it is.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import sys
import time
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.profiler import ProfilerActivity, profile, record_function

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import (datamodules.subject), as the entry scripts
from datamodules.subject import FrameStore, TrainRays  # noqa: E402
from train_speed import build  # noqa: E402

SWITCHES = ("tf32", "fused", "bf16")
PHASES = ("data", "forward", "backward", "optimizer", "occupancy")
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")


class BareLoop:
    """The head stage's step (data, training_step, backward, optimizer, periodic grid refresh) without a Trainer."""

    def __init__(self, overrides: list[str], switches: set[str], device: torch.device) -> None:
        cfg, datamodule, system, engine, _ = build(overrides)
        self.system = system.to(device).train()
        engine.attach(self.system)  # outside a Trainer the engine runs steps eagerly (its TF32, compile_field=true)
        data = datamodule.data
        store = FrameStore(data, datamodule.background, preload=device.type == "cuda", device=device,
                           parsing_masks=datamodule.parsing_masks)
        self.dataset = TrainRays(data, store, datamodule.sampler, datamodule.eye_jitter, datamodule.parsing_masks)
        groups = system.parameter_groups()
        self.optimizer = instantiate(cfg.model.optimizer)(groups, **({"fused": True} if "fused" in switches else {}))
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in switches
                         else contextlib.nullcontext())
        self.every = int(cfg.callbacks.occupancy_grid.every_n_steps)
        self.samples: list[int] = []
        marcher_forward = self.system.marcher.forward

        def counting_forward(*args, **kwargs):  # samples the field evaluated per step (after compaction)
            out = marcher_forward(*args, **kwargs)
            self.samples.append(out.samples_evaluated)
            return out

        self.system.marcher.forward = counting_forward
        self.rng, self.steps, self.device = random.Random(0), 0, device

    def step(self) -> None:
        """One optimizer step, each phase labelled for the profiler."""
        with record_function("data"):
            batch = self.dataset[self.rng.randrange(len(self.dataset))]
        if self.steps % self.every == 0:
            with record_function("occupancy"):
                data = self.dataset.data
                frame = self.rng.randrange(data.num_train)
                self.system.refresh_occupancy(data.audio_window(frame).to(self.device),
                                              data.eye[frame: frame + 1].to(self.device))
        with record_function("forward"), self.autocast:
            loss = self.system.training_step(batch, self.steps)["loss"]
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_rate(loop: BareLoop, steps: int) -> float:
    """Steps/s over `steps` steps, synchronised only at the ends (as training runs)."""
    synchronize(loop.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loop.step()
    synchronize(loop.device)
    return steps / (time.perf_counter() - t0)


def profiled(loop: BareLoop, steps: int) -> dict:
    """Per-step host time of each phase, GPU kernel time and launches, host syncs, and the top kernels."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if loop.device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            loop.step()
        synchronize(loop.device)
    return {**kernel_summary(prof, steps, PHASES), "top_kernel_sources_ms_per_step": kernel_sources(prof, steps)}


def kernel_summary(prof: profile, steps: int, phases: tuple[str, ...] = ()) -> dict:
    """Per step: host time of the labelled `phases`, GPU kernel time and launches, host syncs, top kernels."""
    events = prof.key_averages()
    by_name = {e.key: e for e in events if e.device_type == torch.autograd.DeviceType.CPU}
    host = {p: round(by_name[p].cpu_time_total / steps / 1e3, 3) for p in phases if p in by_name}
    # Kernels only: user annotations (the phases' record_function ranges) also appear on the GPU timeline.
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and e.name not in phases
               and not e.name.startswith("Optimizer.")]
    top = collections.Counter()
    for k in kernels:
        top[k.name[:90]] += k.device_time_total if hasattr(k, "device_time_total") else k.cuda_time_total
    return {
        "host_ms_per_phase": host,
        "gpu_kernel_ms_per_step": round(sum(top.values()) / steps / 1e3, 3),
        "kernels_per_step": round(len(kernels) / steps, 1),
        "host_syncs_per_step": round(sum(by_name[s].count for s in SYNC_CALLS if s in by_name) / steps, 2),
        "dtoh_copies_per_step": round(sum(e.count for e in events if "DtoH" in e.key) / steps, 2),
        "top_kernels_ms_per_step": {name: round(us / steps / 1e3, 3) for name, us in top.most_common(15)},
        "top_host_ops_ms_per_step": {e.key[:60]: round(e.self_cpu_time_total / steps / 1e3, 3) for e in sorted(
            by_name.values(), key=lambda e: -e.self_cpu_time_total)[:10]},
    }


def sync_sources(prof: profile, steps: int, depth: int = 6) -> dict[str, float]:
    """Host syncs and device-to-host copies per step by where they were called: the call, then up to `depth` ops
    and labels around it, innermost first (CUDA runtime calls skipped), e.g.
    `cudaStreamSynchronize < aten::_local_scalar_dense < aten::item < DistributedDataParallel.forward`."""
    found: collections.Counter = collections.Counter()
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU or not (event.name in SYNC_CALLS or "DtoH" in event.name):
            continue
        chain, parent = [event.name], event.cpu_parent
        while parent is not None and len(chain) <= depth:
            if not parent.name.startswith("cuda"):
                chain.append(parent.name[:60])
            parent = parent.cpu_parent
        found[" < ".join(chain)] += 1
    return {where: round(n / steps, 2) for where, n in found.most_common(12)}


def kernel_sources(prof: profile, steps: int, top: int = 25) -> dict[str, list]:
    """GPU time per step by who launched it: kernel <- innermost op in the autograd node or label above it, with
    the input shapes of its longest launch: {source: [ms per step, launches per step, shapes]}.

    Needs a profile with `record_shapes=True` for the shapes. Kernels replayed from a CUDA graph have no launching op.
    """
    totals: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    longest: dict[str, tuple[float, str]] = {}
    for event in prof.events():
        if event.device_type != torch.autograd.DeviceType.CPU or not event.kernels:
            continue
        context, parent = "", event.cpu_parent
        while parent is not None and not context:  # the nearest autograd node or user label
            if parent.name.startswith("autograd::engine::evaluate_function: ") or not parent.name.startswith(
                    ("aten::", "cuda", "ernerf::")):
                context = parent.name.removeprefix("autograd::engine::evaluate_function: ")
            parent = parent.cpu_parent
        shapes = ",".join("x".join(map(str, s)) for s in (event.input_shapes or []) if s)
        for kernel in event.kernels:
            key = f"{kernel.name[:48]} <- {event.name} in {context[:40]}"
            totals[key] += kernel.duration
            counts[key] += 1
            if kernel.duration > longest.get(key, (-1.0, ""))[0]:
                longest[key] = (kernel.duration, shapes[:60])
    return {key: [round(us / steps / 1e3, 3), round(counts[key] / steps, 1), longest[key][1]]
            for key, us in totals.most_common(top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--subject", default="trump")
    parser.add_argument("--stage", default="head")
    parser.add_argument("--rays", type=int, default=65536)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--variant", action="append", default=[], help="comma list of switches (repeatable)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer here: the system's logging is a no-op
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    overrides = [f"subject={args.subject}", f"paths.data_root={args.data_root}", f"stage={args.stage}",
                 f"datamodule.num_rays={args.rays}", *args.override]
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "overrides": overrides}
    for variant in args.variant or ["base"]:
        tokens = [t for t in variant.split(",") if t and t != "base"]
        switches = {t for t in tokens if "=" not in t}
        if switches - set(SWITCHES):
            parser.error(f"unknown switches {sorted(switches - set(SWITCHES))}: use {SWITCHES}")
        torch.backends.cuda.matmul.allow_tf32 = "tf32" in switches
        torch.manual_seed(0)
        loop = BareLoop(overrides + [t for t in tokens if "=" in t], switches, device)
        for _ in range(args.warmup):
            loop.step()
        rate = timed_rate(loop, args.steps)
        samples_per_ray = sum(loop.samples[-args.steps:]) / min(len(loop.samples), args.steps) / args.rays
        figures = {"it_per_s": round(rate, 2), "ms_per_step": round(1e3 / rate, 3),
                   "samples_per_ray": round(samples_per_ray, 2), **profiled(loop, args.profile_steps)}
        results[variant] = figures
        print(f"[{variant}] {rate:.1f} it/s ({1e3 / rate:.2f} ms/step), {samples_per_ray:.2f} samples/ray; GPU kernels "
              f"{figures['gpu_kernel_ms_per_step']} ms/step, {figures['kernels_per_step']} launches, "
              f"{figures['host_syncs_per_step']} syncs; host ms {figures['host_ms_per_phase']}", flush=True)
        print(json.dumps(figures["top_kernels_ms_per_step"], indent=1), flush=True)
        for source, (ms, launches, shapes) in figures["top_kernel_sources_ms_per_step"].items():
            print(f"  {ms:6.3f} ms {launches:5.1f}x  {source}  [{shapes}]", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
