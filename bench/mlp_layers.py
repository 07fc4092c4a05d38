"""The face field's MLP layers at a rendered frame's size, in the forms a GPU may run faster: milliseconds per call.

    python bench/mlp_layers.py [--samples 730000] [--repeats 50] [--device cuda]

A 512x512 frame of a trained subject evaluates its field on ~0.7 M samples, through 64-wide layers (TF32 on, as the
engine renders). Rows, each timed alone (CUDA events, after a warm-up), same inputs:

- `sigma+geo 65`: the density net's last layer as the model holds it (64 -> 1 + 64 outputs), then the colour net's
  first product on the geometric features h[:, 1:] (a view with a 65-float row stride);
- `sigma+geo padded 72`: the same weights reordered as geo(64), sigma(1), zeros(7), so h[:, :64] is aligned;
- `sigma, geo split`: geo as its own 64-wide product (contiguous) and sigma as a 64 -> 1 product;
- `linear, relu_`: a hidden layer and its in-place ReLU, as `MLP` runs them;
- `addmm+relu epilogue`: the same as one cuBLASLt call (`torch._addmm_activation`, a zero bias).

Each row also prints the largest difference from the first row of its group (the forms compute the same values).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def timed(fn, repeats: int, device: torch.device) -> float:
    """Milliseconds per call of `fn` (mean of `repeats`, after 3 untimed calls)."""
    for _ in range(3):
        fn()
    if device.type != "cuda":
        import time

        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) / repeats * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return begin.elapsed_time(end) / repeats


def last_layer_forms(x: torch.Tensor, w: torch.Tensor, w_color: torch.Tensor) -> dict:
    """name -> function returning (sigma [M], colour net's first product [M, 64]) from hidden features x [M, 64]."""
    padded = torch.cat([w[1:], w[:1], w.new_zeros(7, w.shape[1])])  # [72, 64]: geo, sigma, zeros

    def as_held():
        h = F.linear(x, w)
        return h[:, 0], F.linear(h[:, 1:], w_color)

    def reordered():
        h = F.linear(x, padded)
        return h[:, 64], F.linear(h[:, :64], w_color)

    def split():
        return F.linear(x, w[:1])[:, 0], F.linear(F.linear(x, w[1:]), w_color)

    return {"sigma+geo 65": as_held, "sigma+geo padded 72": reordered, "sigma, geo split": split}


def hidden_layer_forms(x: torch.Tensor, w: torch.Tensor) -> dict:
    zero = w.new_zeros(w.shape[0])
    return {"linear, relu_": lambda: F.linear(x, w).relu_(),
            "addmm+relu epilogue": lambda: torch._addmm_activation(zero, x, w.t())}


def run(samples: int, repeats: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 64, generator=g).to(device)
    w65, w_color, w64 = (torch.randn(n, 64, generator=g).div(8).to(device) for n in (65, 64, 64))
    rows = []
    for group in (last_layer_forms(x, w65, w_color), hidden_layer_forms(x, w64)):
        reference = None
        for name, fn in group.items():
            out = fn()
            out = torch.cat([o.reshape(samples, -1) for o in out], 1) if isinstance(out, tuple) else out
            reference = out if reference is None else reference
            rows.append({"form": name, "ms": round(timed(fn, repeats, device), 4),
                         "max_diff": float((out - reference).abs().max())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=730_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True  # as the engine renders (engine.tf32)
    torch.set_grad_enabled(False)
    device = torch.device(args.device)
    rows = run(args.samples, args.repeats, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"device": name, "samples": args.samples, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
