"""Training speed of a stage: iterations/s and rays/s at ER-NeRF's batch, and val PSNR after a wall-clock budget.

GPU (preprocessed subject):
    python bench/train_speed.py --data-root data --subject trump --steps 300 --budget 300
    python bench/train_speed.py ... --override encoder=triplane_triton --override datamodule.preload=device
Frames in pinned host memory, one copied to the GPU per step, against frames on the GPU (docs/performance.md):
    python bench/train_speed.py ... --override datamodule.preload=host --override datamodule.num_workers=0
Time to a quality (the val PSNR scored every 5 s of training; e.g. 2 GPUs against one GPU's 60-s figure):
    python bench/train_speed.py ... --budget 60 --val-every 5 --devices 2 --target-psnr 35.6
The stage as train.py runs it (its step budget from the subject's length, divided over the GPUs, the lr schedule
over it), scored every 5 s and at the end; then 2 GPUs' time to the 1-GPU run's final PSNR:
    python bench/train_speed.py ... --steps 0 --full-stage --val-every 5 --json one.json
    python bench/train_speed.py ... --steps 0 --full-stage --val-every 5 --devices 2 --target-psnr <one's val_psnr>
A lips or torso stage starts from the subject's trained previous stage, as train.py's does (`--override
init_from=<checkpoint>` names another, e.g. the short subject's head for one tiled with bench/preload_speed.py).
CPU smoke run:
    python bench/train_speed.py --data-root data --subject trump --rays 1024 --steps 10 --budget 0 \
        --override datamodule.downscale=8 --override trainer=cpu
A minutes-long subject's stage from a short one (its frames listed 7,500 times: cost, not quality), each stage
starting from the short subject's trained stage before it, as train.py's would, and the torso rendering the frozen
head's layers where its real budget would:
    python bench/train_speed.py --subject trump --tile-to 7500 --stage lips --steps 1500 --warmup 300 --budget 0
Each --override is a Hydra override of conf/train.yaml, so any stage, encoder or precision can be timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts
import lightning as L  # noqa: E402

from callbacks.data_parallel import DataParallelCallback  # noqa: E402
from callbacks.ema import EMAWeights  # noqa: E402
from callbacks.head_layers import layers_pay  # noqa: E402
from ernerf.apps.chain import initial_checkpoint, run_budget, stage_steps  # noqa: E402
from ernerf.engine import ExecutionEngine  # noqa: E402
from ernerf.errors import ErnerfError  # noqa: E402


class StepTimer(L.Callback):
    """Wall time of every training step. No per-step GPU sync (it would serialise host and GPU, which training
    does not); the GPU is synchronised once at the end, so the last time is the real end of the work."""

    def __init__(self, engine: ExecutionEngine | None = None) -> None:
        self.times: list[float] = []
        self.captures: list[int] = []  # the engine's graph captures so far, at the end of each step
        self.graph_ms: dict[str, float] = {}
        self.ranks_identical: bool | None = None
        self.engine = engine  # whose graphs to time: replays train on (the optimizer's graph steps again), speed runs only

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.times.append(time.perf_counter())
        graphed = self.engine.graphed if self.engine is not None else None
        self.captures.append(graphed.captures if graphed is not None else 0)

    def first_steps_s(self, count: int) -> float:
        """Seconds from the start of training to the end of step `count` (compiling and graph captures included)."""
        return self.times[min(count, len(self.times)) - 1] - self.start if self.times else float("nan")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if torch.cuda.is_available() and self.times:
            torch.cuda.synchronize()
            self.times[-1] = time.perf_counter()
            if trainer.world_size > 1:  # DDP: every rank must hold the same weights and grid
                state = [t.detach().double().sum() for t in (*pl_module.parameters(), *pl_module.buffers())]
                gathered = pl_module.all_gather(torch.stack(state))  # [W, P]
                self.ranks_identical = bool((gathered == gathered[0]).all())
            if self.engine is not None:
                self.graph_ms = replay_times(self.engine.graphed)

    def rate(self, warmup: int) -> float:
        """Steps/s after the first `warmup` steps."""
        t = self.times[warmup:]
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")

    def rate_between_captures(self, warmup: int) -> float:
        """Steps/s after the first `warmup` steps, leaving out the steps that captured a graph again (the occupancy
        grid's samples outgrew or left the graph's capacity): the rate a long run settles at."""
        t, c = self.times[warmup:], self.captures[warmup:]
        steady = [(b - a) for a, b, before, after in zip(t, t[1:], c, c[1:]) if before == after]
        return len(steady) / sum(steady) if steady else float("nan")


class ProfileWindow(L.Callback):
    """PyTorch profiler over `steps` training steps from step `start`: wall and GPU kernel time per step, host syncs,
    the top kernels and host ops (bench/profile_step.py's summary), under the real Trainer loop; with `trace`, its
    timeline written there as a Chrome trace."""

    def __init__(self, start: int, steps: int, timer: StepTimer, trace: Path | None = None) -> None:
        self.start, self.steps, self.timer, self.trace = start, steps, timer, trace
        self.prof: torch.profiler.profile | None = None
        self.summary: dict = {}

    def on_train_batch_start(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.start and self.prof is None:
            torch.cuda.synchronize()  # the timed steps end here, all their work done
            self.timer.times[-1] = time.perf_counter()
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.prof is not None and not self.summary and trainer.global_step >= self.start + self.steps:
            torch.cuda.synchronize()
            wall = (time.perf_counter() - self.t0) / self.steps
            self.prof.__exit__(None, None, None)
            if self.trace is not None:  # the timeline (chrome://tracing, Perfetto): where the GPU waits, and on what
                self.prof.export_chrome_trace(str(self.trace))
            from profile_step import kernel_summary, sync_sources

            self.summary = {"wall_ms_per_step": round(wall * 1e3, 3), **kernel_summary(self.prof, self.steps),
                            "sync_sources_per_step": sync_sources(self.prof, self.steps)}


def replay_times(graphed: object, replays: int = 50) -> dict[str, float]:
    """GPU time of one replay of each captured graph (ms), timed back to back: what the step costs when the host
    keeps up. (Replays train on: call after the figures that matter.)"""
    layouts = getattr(graphed, "layouts", {})
    graphs = {f"step {key}" if len(layouts) > 1 else "step": entry.graph for key, entry in layouts.items()}
    graphs["optimizer"] = getattr(graphed, "optimizer_graph", None)
    times = {}
    for name, graph in graphs.items():
        if graph is None:
            continue
        graph.replay()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
        times[name] = round((time.perf_counter() - t0) / replays * 1e3, 3)
    return times


def starting_checkpoint(cfg, num_frames: int) -> str | None:
    """What the stage starts from, as train.py finds it (`initial_checkpoint`: init_from=, else the subject's previous
    stage), its per-frame codes dropped when the subject has another number of frames (a tiled subject timed from its
    short original's head). A lips or torso stage with none is timed from an untrained head, which marches more
    samples than a trained one (its occupancy grid is full): said on the terminal, as its rates are not a stage's."""
    try:
        path = initial_checkpoint(cfg)
    except ErnerfError as err:
        print(f"note: {err} Timing {cfg.stage.name} from an untrained head: its steps march more samples than a "
              "real stage's.", flush=True)
        return None
    if path is None:
        return None
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    other = [k for k, v in state.items() if k.endswith("individual_codes") and v.shape[0] != num_frames]
    if not other:
        return path
    for key in other:  # the stage's own codes keep their init
        del state[key]
    fitted = Path(tempfile.mkdtemp()) / Path(path).name
    torch.save(checkpoint, fitted)
    print(f"{cfg.stage.name} starts from {path} ({', '.join(other)} left at their init: {num_frames} frames here)",
          flush=True)
    return str(fitted)


def decide_head_layers(cfg, datamodule) -> None:
    """A torso stage's `head_layers: auto` decided by the stage's own step budget for the subject, as train.py's run
    decides it, not by the bench's few steps (which would march the head where the stage renders its layers)."""
    layers = cfg.callbacks.get("head_layers")
    if not layers or layers.enabled != "auto":
        return
    height, width = datamodule.frame_size
    steps = stage_steps(cfg, datamodule.num_train_frames)
    layers.enabled = layers_pay(steps, cfg.datamodule.num_rays, datamodule.num_train_frames, height, width)
    print(f"{cfg.stage.name}: the stage's {steps} steps on {datamodule.num_train_frames} frames "
          f"{'render' if layers.enabled else 'march'} the frozen head ({'its layers' if layers.enabled else 'per step'})",
          flush=True)


def build(overrides: list[str], budget_ranks: int | None = None) -> tuple:
    """Compose conf/train.yaml with overrides; instantiate datamodule, system, the execution engine (conf/engine/) and
    the callbacks that take part in the step (the engine, the occupancy grid's refresh, the EMA of the weights when
    configured: validation scores it, and the torso stage's frozen-head layers). With `budget_ranks`,
    trainer.max_steps (and what follows it) is the stage's budget for the subject on that many ranks, as train.py
    plans it.
    -> (cfg, datamodule, system, engine, step callbacks)"""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.datamodule)
    if budget_ranks:
        run_budget(cfg, datamodule.num_train_frames, budget_ranks)
    cfg.model.init_from = starting_checkpoint(cfg, datamodule.num_train_frames)
    decide_head_layers(cfg, datamodule)
    OmegaConf.resolve(cfg)
    system = instantiate(cfg.model, num_frames=datamodule.num_train_frames)
    engine = instantiate(cfg.engine)
    step_callbacks = [instantiate(cfg.callbacks.occupancy_grid)]
    for name in ("ema", "head_layers"):  # the torso stage's head layers change what its steps compute
        if cfg.callbacks.get(name):
            step_callbacks.append(instantiate(cfg.callbacks[name]))
    return cfg, datamodule, system, engine, [*step_callbacks, engine]


def trainer_for(cfg, callbacks: list, devices: int = 1, data_parallel: DataParallelCallback | None = None,
                **kwargs: object) -> L.Trainer:
    """A bare trainer of the config's accelerator/precision: no logger, no checkpoints, no validation loop.

    With several devices: Lightning's DDP, each rank drawing its own rays, with `data_parallel`'s recipe (default:
    per-rank seeds and lr x sqrt(W)); every rank runs the max_steps given."""
    # the project's DDP strategy (conf/trainer/ddp.yaml: no per-step buffer broadcast)
    extra = {"strategy": instantiate(OmegaConf.load(REPO / "conf" / "trainer" / "ddp.yaml").strategy)} if devices > 1 else {}
    if devices > 1:
        callbacks = [*callbacks, data_parallel or DataParallelCallback(lr_scaling="sqrt")]
    return L.Trainer(accelerator=cfg.trainer.accelerator, devices=devices, precision=cfg.trainer.precision,
                     logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                     max_epochs=-1, callbacks=callbacks, default_root_dir=tempfile.mkdtemp(), **extra, **kwargs)


def measure_speed(overrides: list[str], steps: int, warmup: int, devices: int = 1,
                  profile_steps: int = 0, trace: Path | None = None) -> dict[str, float]:
    """Iterations/s and rays/s (all devices) over `steps` training steps (the first `warmup` excluded); with
    `profile_steps`, a profile of that many steps after the timed ones."""
    cfg, datamodule, system, engine, step_callbacks = build(overrides)
    timer = StepTimer(engine)
    window = ProfileWindow(steps, profile_steps, timer, trace) if profile_steps else None
    trainer = trainer_for(cfg, [*step_callbacks, timer, *([window] if window else [])], devices,
                          max_steps=steps + profile_steps + (1 if profile_steps else 0))
    trainer.fit(system, datamodule=datamodule)
    timer.times, timer.captures = timer.times[:steps], timer.captures[:steps]
    its = timer.rate(warmup)
    graph = engine.graphed
    budget = stage_steps(cfg, datamodule.num_train_frames)
    return {"profile": window.summary if window else {}, "ranks_identical": timer.ranks_identical, "it_per_s": its,
            "train_frames": datamodule.num_train_frames, "stage_steps": budget,
            "stage_steps_s": round(budget / its, 1) if budget and its else None,
            "rays_per_s": its * cfg.datamodule.num_rays * devices, "num_rays": cfg.datamodule.num_rays,
            "devices": devices, "cuda_graph_captures": graph.captures if graph else 0,
            "it_per_s_between_captures": timer.rate_between_captures(warmup),
            "captures_timed": timer.captures[-1] - timer.captures[warmup] if len(timer.captures) > warmup else 0,
            "graph_capacity": graph.capacity if graph else None, "graph_replay_ms": timer.graph_ms,
            "rays_built_in_graph": bool(graph and graph.build), "first_10_steps_s": timer.first_steps_s(10),
            "preload": datamodule.store.mode}


class PsnrCurve(L.Callback):
    """Train for `budget` seconds (or until max_steps), scoring the val PSNR every `every` seconds of training on the
    way and once more when training ends before the budget.

    The clock runs from the start of training (compiling and graph captures count) and stops while rank 0 renders
    the held-out frames (the other ranks wait at a barrier). Every `check_steps` steps on a GPU (every step on a
    CPU) all ranks synchronise and take rank 0's clock (a broadcast), so they score and stop at the same step.
    `startup_s` is the clock at the first check: the first `check_steps` steps, compiling and captures included."""

    def __init__(self, datamodule: L.LightningDataModule, budget: float, every: float | None = None,
                 check_steps: int = 25) -> None:
        self.datamodule, self.budget, self.gpu_check_steps = datamodule, budget, check_steps
        self.every = every if every and every < budget else budget
        self.points: list[dict[str, float]] = []  # one per score: train_s, steps (per rank), val_psnr, val_ssim

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check_steps = self.gpu_check_steps if pl_module.device.type == "cuda" else 1
        self.t0, self.paused, self.next = time.perf_counter(), 0.0, self.every
        self.startup_s: float | None = None
        self.scored_step = -1

    def clock(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        """Seconds of training so far, rank 0's (the GPU's queue drained first)."""
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = torch.tensor([time.perf_counter() - self.t0 - self.paused], dtype=torch.float64, device=pl_module.device)
        if trainer.world_size > 1:
            torch.distributed.broadcast(elapsed, src=0)
        return float(elapsed)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step % self.check_steps:
            return
        elapsed = self.clock(trainer, pl_module)
        if self.startup_s is None:
            self.startup_s = elapsed
        if elapsed < self.next and elapsed < self.budget:
            return
        self.score(trainer, pl_module, elapsed)
        while self.next <= elapsed:
            self.next += self.every
        if elapsed >= self.budget:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Training ended on its own (max_steps) after the last score: score the final weights."""
        if self.scored_step != trainer.global_step:  # the same on every rank: they score at the same steps
            self.score(trainer, pl_module, self.clock(trainer, pl_module))

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, elapsed: float) -> None:
        """Rank 0 scores the held-out frames while the others wait: when averaging, the EMA's weights (`val_psnr`) and
        the trained weights themselves (`val_psnr_weights`)."""
        pause, self.scored_step = time.perf_counter(), trainer.global_step
        if trainer.global_rank == 0:
            ema = next((c for c in trainer.callbacks if isinstance(c, EMAWeights)), None)
            with ema.averaged(pl_module) if ema is not None else contextlib.nullcontext():
                psnr, ssim = validation_metrics(pl_module, self.datamodule)
            point = {"train_s": round(elapsed, 2), "steps": trainer.global_step, "val_psnr": psnr, "val_ssim": ssim}
            if ema is not None:
                point["val_psnr_weights"], _ = validation_metrics(pl_module, self.datamodule)
            pl_module.train()
            self.points.append(point)
        if trainer.world_size > 1:
            torch.distributed.barrier()
        self.paused += time.perf_counter() - pause


def psnr_at_budget(overrides: list[str], seconds: float, devices: int = 1, every: float | None = None,
                   full_stage: bool = False) -> dict | None:
    """Train for a wall-clock budget, then the mean PSNR/SSIM over the held-out frames (on rank 0); with `every`,
    also at every `every` seconds of training on the way (the curve). With `full_stage`: train the stage's own step
    budget as train.py plans it on `devices` ranks (max_steps / W, and callbacks.data_parallel's lr x sqrt(W)),
    stopping at `seconds` only if that comes first."""
    # Every held-out frame by default; an explicit --override datamodule.num_val_frames=N comes later and wins.
    cfg, datamodule, system, _, step_callbacks = build(["datamodule.num_val_frames=null", *overrides],
                                                       budget_ranks=devices if full_stage else None)
    curve = PsnrCurve(datamodule, seconds, every)
    trainer = trainer_for(cfg, [*step_callbacks, curve], devices,
                          instantiate(cfg.callbacks.data_parallel) if full_stage else None,
                          max_steps=cfg.trainer.max_steps if full_stage else 10**7)
    trainer.fit(system, datamodule=datamodule)
    if trainer.global_rank != 0:
        return None
    last = curve.points[-1]
    return {"budget_s": seconds, "steps": last["steps"], "train_s": last["train_s"], "startup_s": curve.startup_s,
            "check_steps": curve.check_steps, "val_psnr": last["val_psnr"], "val_ssim": last["val_ssim"],
            "val_frames": len(datamodule.val_dataloader().dataset), "curve": curve.points}


def memory_peaks() -> dict:
    """The process's peak GPU memory allocated by torch (None without CUDA) and peak host RSS, in MiB (what preloaded
    frames cost: issue #16)."""
    import resource

    gpu = round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None
    return {"gpu_peak_mib": gpu, "host_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


@torch.no_grad()
def validation_metrics(system: L.LightningModule, datamodule: L.LightningDataModule) -> tuple[float, float]:
    """Mean PSNR and SSIM over the datamodule's validation frames, rendered by the system (no Trainer needed)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    system.eval()
    psnrs, ssims = [], []
    for item in datamodule.val_dataloader().dataset:
        out = system.render_image(item["c2w"], item["intrinsics"], item["height"], item["width"], item["audio"],
                                  item["eye"], None, item["bg"])
        pred = out["rgb"].permute(2, 0, 1)[None]
        target = item["rgb"].to(pred.device).permute(2, 0, 1)[None]
        psnrs.append(float(peak_signal_noise_ratio(pred, target, data_range=1.0)))
        ssims.append(float(structural_similarity_index_measure(pred, target, data_range=1.0)))
    return sum(psnrs) / len(psnrs), sum(ssims) / len(ssims)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--subject", default="trump")
    parser.add_argument("--stage", default="head")
    parser.add_argument("--rays", type=int, default=65536, help="rays per step (ER-NeRF: 65,536)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps (0: only the budget run)")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--budget", type=float, help="seconds of training before the val PSNR (default 300; 0: skip). "
                        "With --full-stage: a time limit on the stage (default none)")
    parser.add_argument("--full-stage", action="store_true", help="train the stage's own step budget, as train.py "
                        "does (divided over --devices), then score the val PSNR")
    parser.add_argument("--val-every", type=float, help="also score the val PSNR every this many seconds of training")
    parser.add_argument("--target-psnr", type=float, help="report the training time at which the val PSNR first "
                        "reached this (e.g. another run's final figure)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override (repeatable)")
    parser.add_argument("--devices", type=int, default=1, help="GPUs (more than one: Lightning's DDP)")
    parser.add_argument("--profile", type=int, default=0, help="then profile this many steps (GPU)")
    parser.add_argument("--trace", type=Path, help="with --profile: write the profiled steps' timeline here (.json)")
    parser.add_argument("--tile-to", type=int, help="time the subject with its training frames listed up to this "
                        "many (a minutes-long subject's cost from a short one: bench/preload_speed.py's tiling)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.tile_to:
        from preload_speed import tiled

        tiles = Path(tempfile.mkdtemp(prefix="tiled_"))  # the subject's name kept: its runs are found as before
        tiled(Path(args.data_root) / args.subject, args.tile_to, tiles / args.subject)
        args.data_root = str(tiles)
    overrides = [f"subject={args.subject}", f"paths.data_root={args.data_root}", f"stage={args.stage}",
                 f"datamodule.num_rays={args.rays}", *args.override]
    if torch.cuda.is_available() and not any(o.startswith("trainer=") for o in args.override):
        overrides.append("trainer=gpu")
    result = {"overrides": overrides, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.steps > 0:
        result.update(measure_speed(overrides, args.steps, min(args.warmup, args.steps // 2), args.devices,
                                    args.profile, args.trace))
        result.update(memory_peaks())
    if rank == 0 and args.steps > 0:
        print(f"{args.stage}: {result['it_per_s']:.1f} it/s, {result['rays_per_s'] / 1e6:.2f} M rays/s "
              f"({args.rays} rays/step x {args.devices} device(s)) on {result['device']}, frames preloaded: "
              f"{result['preload']} (datamodule.preload); "
              f"CUDA graph captures {result['cuda_graph_captures']} ({result['captures_timed']} in the timed steps; "
              f"{result['it_per_s_between_captures']:.1f} it/s without them; capacity {result['graph_capacity']}, "
              f"rays drawn in the graph: {result['rays_built_in_graph']}); GPU ms per replay {result['graph_replay_ms']}; "
              f"first 10 steps {result['first_10_steps_s']:.1f} s (compiling, captures); peak memory: GPU "
              f"{result['gpu_peak_mib']} MiB, host {result['host_peak_rss_mib']} MiB"
              + (f"; ranks hold identical weights and grid: {result['ranks_identical']}" if args.devices > 1 else ""),
              flush=True)
        if result["stage_steps"]:
            print(f"{args.stage}: its budget for {result['train_frames']} training frames, {result['stage_steps']} "
                  f"steps, takes {result['stage_steps_s'] / 60:.1f} min at that rate (steps alone: no preload, "
                  "compilation or validation)", flush=True)
    if rank == 0 and result.get("profile"):
        print("profile per step:", json.dumps(result["profile"], indent=1), flush=True)
    seconds = args.budget if args.budget is not None else math.inf if args.full_stage else 300.0
    if seconds > 0:
        budget = psnr_at_budget(overrides, seconds, args.devices, args.val_every, args.full_stage)
        if budget is None:
            return
        result.update(budget)

        def weights(point: dict) -> str:
            return f" (EMA; the weights themselves: {point['val_psnr_weights']:.2f} dB)" if "val_psnr_weights" in point else ""

        for point in result["curve"][:-1]:
            print(f"  at {point['train_s']:.1f} s ({point['steps']} steps): val PSNR {point['val_psnr']:.2f} dB"
                  + weights(point), flush=True)
        print(f"after {result['train_s']:.1f} s of training ({result['steps']} steps per device; the first "
              f"{result['check_steps']}, compiling and captures, took {result['startup_s']:.1f} s): val PSNR "
              f"{result['val_psnr']:.2f} dB{weights(result['curve'][-1])}, SSIM {result['val_ssim']:.4f} over "
              f"{result['val_frames']} held-out frames", flush=True)
        if args.target_psnr is not None:
            reached = [p for p in result["curve"] if p["val_psnr"] >= args.target_psnr]
            result["target_reached_s"] = reached[0]["train_s"] if reached else None
            print(f"val PSNR {args.target_psnr:.2f} dB first reached at "
                  + (f"{reached[0]['train_s']:.1f} s" if reached else "no score (not within the run)"), flush=True)
    if rank != 0:
        return
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
