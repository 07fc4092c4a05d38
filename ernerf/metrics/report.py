"""The evaluation report: PNG figures (frames, per-frame PSNR, mouth curves) and an index.html embedding them."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ERROR_SCALE = 64  # the error map saturates at a mean absolute difference of 64/255


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training server
    import matplotlib.pyplot as plt

    return plt


def error_map(render: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean absolute colour difference per pixel scaled to [0, 1] (1 at ERROR_SCALE levels). # [H,W,3] x2 -> [H,W]"""
    diff = np.abs(render.astype(np.float32) - truth.astype(np.float32)).mean(axis=-1)
    return np.clip(diff / ERROR_SCALE, 0.0, 1.0)


def frame_grid(path: Path, truths: np.ndarray, renders: np.ndarray, frames: Sequence[int]) -> Path:
    """One row per sampled frame: ground truth | render | error map."""
    plt = _pyplot()
    rows = len(frames)
    fig, axes = plt.subplots(rows, 3, figsize=(9, 3 * rows), squeeze=False)
    for k, frame in enumerate(frames):
        panels = [(truths[k], f"ground truth {frame}"), (renders[k], "render"),
                  (error_map(renders[k], truths[k]), f"|error| (white = {ERROR_SCALE}/255)")]
        for ax, (image, title) in zip(axes[k], panels):
            ax.imshow(image, cmap="inferno" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def psnr_curve(path: Path, frames: Sequence[int], psnr: Sequence[float]) -> Path:
    """Per-frame PSNR over the validation frames, with its mean."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(frames, psnr, marker=".", label="PSNR")
    ax.axhline(float(np.mean(psnr)), color="grey", linestyle="--", label=f"mean {np.mean(psnr):.2f} dB")
    ax.set_xlabel("frame")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("dB")
    ax.set_title("PSNR per validation frame")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _standard(values: Sequence[float]) -> np.ndarray:
    """Zero mean, unit spread (curves of different units on one axis)."""
    v = np.asarray(values, np.float64)
    return (v - v.mean()) / (v.std() + 1e-9)


def mouth_curves(path: Path, frames: Sequence[int], curves: Mapping[str, Sequence[float]],
                 cross: Mapping[str, Any] | None = None) -> Path:
    """Mouth opening of renders and ground truth with audio energy (validation), and one panel per cross-driving
    source `name` of `cross` (curves `cross_mouth_render_<name>`, `cross_energy_<name>`)."""
    plt = _pyplot()
    names = list(cross or {}) or [None]  # without a source, its panel says why it is empty
    fig, axes = plt.subplots(1 + len(names), 1, figsize=(8, 2.75 * (1 + len(names))), squeeze=False)
    panels = [(axes[0, 0], frames, [("mouth_gt", "mouth, ground truth"), ("mouth_render", "mouth, render"),
                                    ("energy", "audio energy")], "validation frames (standardised)")]
    for ax, name in zip(axes[1:, 0], names):
        title = "cross-driven by unrelated audio" + (f": {Path(str((cross or {})[name])).name}" if name else "")
        panels.append((ax, None, [(f"cross_mouth_render_{name}", "mouth, render"),
                                  (f"cross_energy_{name}", "audio energy")], f"{title} (standardised)"))
    for ax, x, series, title in panels:
        drawn = 0
        for key, label in series:
            if curves.get(key):
                xs = x if x is not None else np.arange(len(curves[key]))
                ax.plot(xs, _standard(curves[key]), label=label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "no face meshed / no audio: see metrics.json", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("frame")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if drawn:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def write_index(path: Path, report: Mapping[str, Any], images: Sequence[Path]) -> Path:
    """A self-contained page: the metrics table (with reasons for unavailable ones) and the figures."""
    reasons = report.get("unavailable", {})
    rows = "\n".join(
        f"<tr><td>{html.escape(name)}</td><td>{_format(value)}</td><td>{html.escape(reasons.get(name, ''))}</td></tr>"
        for name, value in report["metrics"].items())
    figures = "\n".join(f'<p><img src="{html.escape(p.name)}" alt="{html.escape(p.stem)}"></p>' for p in images)
    title = f"Evaluation of {report['subject']} ({report['evaluated']})"
    source = ("renders", report["renders"]) if report.get("renders") else ("checkpoint", report["checkpoint"])
    cross = report.get("cross_audio") or {}
    sources = "".join(f"<br>cross-driven by <code>{html.escape(str(file))}</code>: cross_sync_audio_corr_"
                      f"{html.escape(name)}" for name, file in cross.items())
    page = (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:left}"
            "img{max-width:100%}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n<p>{source[0]}: <code>{html.escape(source[1])}</code><br>"
            f"{len(report['frames']['validation'])} held-back validation frames at "
            f"{report['frames']['width']}x{report['frames']['height']}{sources}</p>\n"
            f"<table><tr><th>metric</th><th>value</th><th>why unavailable</th></tr>\n{rows}\n</table>\n"
            f"<p><em>{html.escape(report['note'])}</em></p>\n{figures}\n</body></html>\n")
    path.write_text(page)
    return path


def region_figure(path: Path, error_map: np.ndarray, labels: np.ndarray, values: Mapping[str, float],
                  regions: Sequence[str]) -> Path:
    """The RMS error over the validation frames with the regions outlined, beside each region's share of the error
    and its PSNR: where the model is wrong."""
    import cv2

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1, 1.2]})
    shown = left.imshow(error_map, cmap="inferno", vmin=0.0, vmax=max(0.05, float(np.percentile(error_map, 99.5))))
    fig.colorbar(shown, ax=left, fraction=0.046, pad=0.04, label="RMS error (of 1)")
    for k in range(len(regions)):
        contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for c in contours:
            left.plot(c[:, 0, 0], c[:, 0, 1], color="cyan", linewidth=0.6)
    left.set_title("RMS error over the validation frames", fontsize=9)
    left.axis("off")
    present = [r for r in regions if f"region_share_{r}" in values]
    shares = [100 * values[f"region_share_{r}"] for r in present]
    bars = right.barh(present, shares, color="tab:orange")
    for bar, region in zip(bars, present):
        right.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {values[f'region_psnr_{region}']:.1f} dB",
                   va="center", fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("% of the summed squared error (label: the region's PSNR)")
    right.set_xlim(0, max(shares + [1.0]) * 1.3)
    right.set_title("where the error is", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
