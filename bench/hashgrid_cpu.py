"""CPU speed of the torch hash-grid backend on the grids a CPU render and a CPU training step use, before and after.

Times `hashgrid_torch` of this checkout against the same function from another git revision (the baseline), calls
alternating between the two, and reports medians; it also checks that both give the same bits.
    OMP_NUM_THREADS=1 python bench/hashgrid_cpu.py --baseline-rev 0b25757 --threads 1
    OMP_NUM_THREADS=2 python bench/hashgrid_cpu.py --baseline-rev 0b25757 --threads 2
    OMP_NUM_THREADS=1 python bench/hashgrid_cpu.py --baseline-rev 5beaf26 --grids "torso plane"   # the points' grad
Grids (conf/encoder/triplane.yaml, conf/experiment/demo.yaml, conf/stage/torso.yaml, conf/encoder/grid3d.yaml) and
points per call: a CPU render sends eval_chunk rays x 16 samples (at most 2^16 with eval_chunk 4096; the torso one
point per pixel), a demo training step 1024 rays x 16 samples. On the torso plane a training step also needs the
gradient with respect to the points (its deformation network moves them): the "fwd+bwd x" pass.
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
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ernerf.encoders import hashgrid  # noqa: E402

# name: (input_dim, levels, level_dim, log2_hashmap_size, base, desired resolution, points per render call,
#        points per training call)
GRIDS = {
    "head plane (one of 3)": (2, 12, 1, 14, 64, 512, 2**16, 2**14),
    "demo head plane": (2, 8, 1, 14, 16, 256, 2**16, 2**14),
    "torso plane": (2, 16, 2, 16, 16, 2048, 2**12, 2**14),
    "3-D grid (grid3d)": (3, 16, 2, 16, 16, 2048, 2**16, 2**14),
}
POINT_GRAD_GRIDS = ("torso plane",)  # grids whose training points need a gradient (fields/torso.py deforms them)


def baseline_module(rev: str) -> ModuleType:
    """ernerf/encoders/hashgrid.py as it was at git revision `rev`, imported under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:ernerf/encoders/hashgrid.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "hashgrid_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("hashgrid_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there (revisions from 5beaf26 on have one)
    spec.loader.exec_module(module)
    return module


def timings(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls alternating round by round (after one untimed round)."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if round_index:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def bench_grid(name: str, functions: dict[str, Callable], repeats: int, train_points: int | None = None) -> list[str]:
    """Table rows (forward without grad, forward + backward, and with the points' gradient where training needs it)
    for one grid, and whether outputs/gradients agree."""
    dim, levels, level_dim, log2, base, top, render_points, grid_train_points = GRIDS[name]
    train_points = train_points or grid_train_points
    resolutions = hashgrid.level_resolutions(levels, base, top)
    offsets = hashgrid.level_offsets(resolutions, dim, log2)
    torch.manual_seed(0)
    table = torch.empty(offsets[-1], level_dim).uniform_(-1e-4, 1e-4).requires_grad_()
    render_x = torch.rand(render_points, dim) * 2 - 1
    train_x = torch.rand(train_points, dim) * 2 - 1
    upstream = torch.randn(train_points, levels * level_dim)

    def forward(fn: Callable) -> Callable[[], tuple[torch.Tensor]]:
        def call() -> tuple[torch.Tensor]:
            with torch.no_grad():
                return (fn(render_x, table, offsets, resolutions, log2),)
        return call

    def forward_backward(fn: Callable) -> Callable[[], tuple[torch.Tensor]]:
        return lambda: torch.autograd.grad(fn(train_x, table, offsets, resolutions, log2), table, upstream)

    def forward_backward_points(fn: Callable) -> Callable[[], tuple[torch.Tensor, ...]]:
        def call() -> tuple[torch.Tensor, ...]:
            x = train_x.clone().requires_grad_()
            return torch.autograd.grad(fn(x, table, offsets, resolutions, log2), (x, table), upstream)
        return call

    passes = [("fwd", forward, render_points), ("fwd+bwd", forward_backward, train_points)]
    if name in POINT_GRAD_GRIDS:
        passes.append(("fwd+bwd x", forward_backward_points, train_points))
    rows = []
    for label, make, points in passes:
        calls = {version: make(fn) for version, fn in functions.items()}
        results = [call() for call in calls.values()]
        same = all(all(map(torch.equal, results[0], other)) for other in results[1:])
        ms = {version: 1e3 * s for version, s in timings(calls, repeats).items()}
        before, after = ms.get("before"), ms["after"]
        ratio = f"{before / after:.2f}x" if before else "-"
        rows.append(f"| {name:<22} | {label:<9} | 2^{points.bit_length() - 1:<3} | "
                    f"{before or float('nan'):>9.1f} | {after:>8.1f} | {ratio:>7} | {'yes' if same else 'NO':<9} |")
    return rows


def main() -> None:
    """Print one table row per grid and pass."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", help="git revision whose hashgrid_torch is 'before' (none: after only)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--grids", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--train-points", type=int, help="points per training call instead of the grid's (e.g. 1024: "
                        "the torso plane in a demo torso step, one point per ray)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    functions = {"after": hashgrid.hashgrid_torch}
    if args.baseline_rev:
        functions = {"before": baseline_module(args.baseline_rev).hashgrid_torch} | functions
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}, calls alternating")
    print("| grid                   | pass      | N     | before ms | after ms | speedup | same bits |")
    print("|------------------------|-----------|-------|-----------|----------|---------|-----------|")
    for name in args.grids:
        for row in bench_grid(name, functions, args.repeats, args.train_points):
            print(row, flush=True)


if __name__ == "__main__":
    main()
