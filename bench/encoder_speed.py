"""Forward+backward throughput of ER-NeRF's tri-plane hash encoding across backends, in one run.

Sizes follow ER-NeRF: three 2D grids (xy, yz, xz), 12 levels x 1 feature, 2^14 rows, resolution 64..512.
    CUDA: python bench/encoder_speed.py                       (2^20 and 2^18 points, all backends)
    CPU smoke test: TRITON_INTERPRET=1 python bench/encoder_speed.py --device cpu --log2-points 10 --repeats 2
Each backend is warmed up, then timed `--repeats` times (CUDA events on GPU); the table reports medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ernerf.encoders.hashgrid import hashgrid_torch, level_offsets, level_resolutions  # noqa: E402

LEVELS, LEVEL_DIM, LOG2_T, BASE, TOP, BOUND = 12, 1, 14, 64, 512, 1.0
PLANES = ((0, 1), (1, 2), (0, 2))
Encode = Callable[[Tensor], Tensor]  # [N, 3] -> [N, 36]; parameters captured by the closure


def make_grids(device: str, dtype: torch.dtype) -> tuple[list[Tensor], list[int], list[int]]:
    """Three tri-plane embedding tables (spec init) and their shared layout."""
    resolutions = level_resolutions(LEVELS, BASE, TOP)
    offsets = level_offsets(resolutions, 2, LOG2_T)
    embs = [
        torch.empty(offsets[-1], LEVEL_DIM, device=device).uniform_(-1e-4, 1e-4).to(dtype).requires_grad_()
        for _ in PLANES
    ]
    return embs, offsets, resolutions


def torch_triplane(embs: list[Tensor], offsets: list[int], resolutions: list[int]) -> Encode:
    """The pure-PyTorch reference, one grid per plane, concatenated."""

    def encode(x: Tensor) -> Tensor:
        feats = [hashgrid_torch(x[:, list(d)], e, offsets, resolutions, LOG2_T, BOUND) for d, e in zip(PLANES, embs)]
        return torch.cat(feats, dim=-1)

    return encode


def compiled_triplane(embs: list[Tensor], offsets: list[int], resolutions: list[int]) -> Encode:
    """torch.compile of the reference (compiled once, on first call during warm-up)."""
    return torch.compile(torch_triplane(embs, offsets, resolutions), dynamic=False)


def triton_triplane(embs: list[Tensor], offsets: list[int], resolutions: list[int]) -> Encode:
    """The fused Triton kernel: all planes and levels in one launch."""
    from ernerf.encoders.triton_hashgrid import triplane_triton

    return lambda x: triplane_triton(x, embs, offsets, resolutions, LOG2_T, BOUND)


def triton_per_plane(embs: list[Tensor], offsets: list[int], resolutions: list[int]) -> Encode:
    """The Triton kernel called once per plane and concatenated (three launches each way)."""
    from ernerf.encoders.triton_hashgrid import hashgrid_triton

    def encode(x: Tensor) -> Tensor:
        feats = [hashgrid_triton(x[:, list(d)], e, offsets, resolutions, LOG2_T, BOUND) for d, e in zip(PLANES, embs)]
        return torch.cat(feats, dim=-1)

    return encode


def tcnn_triplane(embs: list[Tensor], offsets: list[int], resolutions: list[int]) -> Encode:
    """tiny-cuda-nn's HashGrid with the same levels (its own parameters, registered as embs' stand-ins)."""
    import tinycudann

    growth = (TOP / BASE) ** (1 / (LEVELS - 1))
    config = {"otype": "HashGrid", "n_levels": LEVELS, "n_features_per_level": LEVEL_DIM,
              "log2_hashmap_size": LOG2_T, "base_resolution": BASE, "per_level_scale": growth}
    grids = [tinycudann.Encoding(2, config, dtype=torch.float32) for _ in PLANES]
    embs[:] = [g.params for g in grids]

    def encode(x: Tensor) -> Tensor:
        u = ((x + BOUND) / (2 * BOUND)).clamp(0.0, 1.0)
        return torch.cat([g(u[:, list(d)]) for d, g in zip(PLANES, grids)], dim=-1)

    return encode


BACKENDS = {"torch": torch_triplane, "compile": compiled_triplane, "triton": triton_triplane, "triton-3x": triton_per_plane,
            "tcnn": tcnn_triplane}


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    """Seconds one call takes: CUDA events on GPU (no host sync inside the timed region), wall clock on CPU."""

    def cuda_time(fn: Callable[[], None]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def cpu_time(fn: Callable[[], None]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return cuda_time if device == "cuda" else cpu_time


def measure(encode: Encode, embs: list[Tensor], x: Tensor, warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds of (forward, forward + backward to the embeddings)."""
    grad = torch.randn(x.shape[0], 3 * LEVELS * LEVEL_DIM, device=x.device)

    def forward() -> None:
        with torch.no_grad():
            encode(x)

    def forward_backward() -> None:
        torch.autograd.grad(encode(x), embs, grad)

    clock = timer(x.device.type)
    for _ in range(warmup):
        forward_backward()
        forward()
    fwd = statistics.median(clock(forward) for _ in range(repeats))
    both = statistics.median(clock(forward_backward) for _ in range(repeats))
    return fwd, both


def run_backend(name: str, n: int, args: argparse.Namespace, dtype: torch.dtype = torch.float32) -> str:
    """One table row: throughputs in million points per second, or why the backend was skipped."""
    embs, offsets, resolutions = make_grids(args.device, dtype)
    label = f"{name}{' (fp16)' if dtype == torch.float16 else ''}"
    try:
        encode = BACKENDS[name](embs, offsets, resolutions)
        x = torch.rand(n, 3, device=args.device) * 2 * BOUND - BOUND
        fwd, both = measure(encode, embs, x, args.warmup, args.repeats)
    except Exception as err:  # a missing optional backend must not hide the others' numbers
        return f"| {label:<14} | 2^{n.bit_length() - 1:<3} | {'skipped: ' + type(err).__name__ + ': ' + str(err)[:60]}"
    return f"| {label:<14} | 2^{n.bit_length() - 1:<3} | {n / fwd / 1e6:>10.4g} | {n / both / 1e6:>14.4g} | {both * 1e3:>10.4g} |"


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log2-points", type=int, nargs="+", default=[20, 18])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--half", action="store_true", help="also time triton with fp16 embeddings")
    return parser.parse_args()


def main() -> None:
    """Print one table row per (points, backend)."""
    args = parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"tri-plane hash encoding, {LEVELS} levels x {LEVEL_DIM}, 2^{LOG2_T} rows, res {BASE}..{TOP} on {name}")
    print("| backend        | N     | fwd Mpts/s | fwd+bwd Mpts/s | fwd+bwd ms |")
    print("|----------------|-------|------------|----------------|------------|")
    for log2_n in args.log2_points:
        for backend in args.backends:
            print(run_backend(backend, 2**log2_n, args), flush=True)
        if args.half and "triton" in args.backends:
            print(run_backend("triton", 2**log2_n, args, torch.float16), flush=True)


if __name__ == "__main__":
    main()
