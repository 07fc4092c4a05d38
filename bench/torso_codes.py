"""Which torso code a torso-stage render pasted back into a training frame should take: the mean or that frame's own.

    python bench/torso_codes.py --subject trump --run runs/trump/torso [--data-root data] [--downscale 4] [--every 10]

`infer.py` and `serve.py` paste the rendered head into original video frames, walking the subject's frames, so nearly
every output frame belongs to a training frame whose torso the torso field was trained to draw with that frame's code
(the held-out frames of the walk keep the mean code).
New audio changes the mouth, not where the body sat in that frame. This script renders every `--every`-th training
frame of a torso-stage run with the frame's own audio window and blink, over the plate as the stage renders, once
with the mean torso code (what held-out frames get) and once with the frame's own, and scores both against the
frame's ground truth: whole crop, the regions of `evaluate.py` (neck, torso, ...), and the pixels the paste-back
takes from the render (weighted by its alpha: what a viewer sees of the render in the output video), and its feathered
edge (weighted by 4 alpha (1 - alpha): where the render meets the original frame, a seam if they disagree).

    python bench/torso_codes.py --subject trump --run runs/trump/torso --held-out

`--held-out` scores the validation frames instead, which have no code of their own: the mean code against codes
fitted to each frame (`ernerf/apps/torso_fit.py`) on its left half and scored on its right half (NeRF-W's evaluation
of per-image codes: does a fitted code say where the body is, or only fit the pixels it saw?), and fitted on the
whole frame and scored there (what a crop pasted into that frame would get).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ernerf.cli import keep_torchmetrics_import_lean  # noqa: E402

keep_torchmetrics_import_lean()  # before the first Lightning import, as the entry scripts

from ernerf.metrics.image import pasted_figures  # noqa: E402
from ernerf.postprocess.pasteback import paste_weights  # noqa: E402


def score(rendered, data, weights: np.ndarray, right_half: bool = False) -> dict[str, float]:
    """Whole, pasted and seam PSNR of rendered frames, and evaluate.py's regions; `right_half`: the first three over
    the right half of each frame alone (no regions: they are whole-frame figures)."""
    from ernerf.apps.evaluation.regions import region_findings

    half = np.ones(weights.shape)
    if right_half:
        half[..., : weights.shape[-1] // 2] = 0
    row = pasted_figures(rendered.renders, rendered.truths, weights, half)
    if not right_half:
        found = region_findings(rendered, data)
        row.update({k: float(v) for k, v in found.found.values.items() if k.startswith("region_psnr_")})
    return row


def held_out_arms(system, data, store, frames: np.ndarray, steps: int, neighbours: tuple[int, ...] = ()):
    """(name, own_torso, install) of each way to code the validation frames: the mean code on the whole frame and
    on its right half, codes fitted on the left half scored on the right, and fitted on the whole frame."""
    from ernerf.apps.torso_fit import CodeFit, fit_torso_codes

    def fitted(part: str):
        def install() -> None:
            system.torso.use_fitted_codes(fit_torso_codes(system, store, frames, part, CodeFit(steps=steps)))
        return install

    def nearest(k: int):
        def install() -> None:
            system.torso.use_fitted_codes(pose_neighbour_codes(system, data, frames, k))
        return install

    return (("mean", False, None), ("mean, right half", False, None),
            *((f"{k} nearest in pose", True, nearest(k)) for k in neighbours),
            ("fitted left, right half", True, fitted("left")), ("fitted whole frame", True, fitted("all")))


def pose_neighbour_codes(system, data, frames: np.ndarray, k: int) -> torch.Tensor:
    """Each frame's code as the mean of the codes of the k training frames whose torso anchors the camera sees
    nearest to where it sees this frame's (the pose the torso field is driven by) [len(frames), individual_dim]."""
    from ernerf.fields.torso import pose_keypoints

    torso = system.torso
    with torch.no_grad():
        anchors = torso.anchors.detach().cpu()
        keys = torch.stack([pose_keypoints(anchors, c2w).reshape(-1) for c2w in data.poses])  # [F, 2K]
        distance = torch.cdist(keys[torch.as_tensor(frames)], keys[: data.num_train])  # [V, T]
        nearest = distance.topk(k, largest=False).indices  # [V, k]
        return torso.individual_codes.detach()[nearest.to(torso.individual_codes.device)].mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--run", type=Path, required=True, help="a torso-stage run folder")
    parser.add_argument("--data-root", type=Path, default=Path("data"))
    parser.add_argument("--downscale", type=int, default=4)
    parser.add_argument("--every", type=int, default=10, help="score every n-th training frame")
    parser.add_argument("--held-out", action="store_true", help="score the validation frames with fitted codes")
    parser.add_argument("--fit-steps", type=int, default=100)
    parser.add_argument("--pose-neighbours", type=int, nargs="*", default=[],
                        help="--held-out: also code each frame by the mean code of its k nearest training frames in pose")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from datamodules.subject import parse_subject
    from ernerf.apps.checkpoints import read_trained
    from ernerf.apps.evaluation.frames import render_validation
    from ernerf.apps.inference import audio_kind, frame_store
    from ernerf.apps.runs import offered_checkpoint
    from ernerf.systems.loading import load_system

    trained = read_trained(offered_checkpoint(args.run), args.run.name)
    system = load_system(trained.checkpoint, args.device)
    if system.torso is None:
        raise SystemExit(f"{trained.checkpoint} has no torso field: give a torso-stage run")
    data = parse_subject(args.data_root / args.subject, trained.feature_file(audio_kind(system.hparams)[0]),
                         downscale=args.downscale)
    store = frame_store(data, trained.stage.background)
    frames = (np.arange(data.num_train, data.num_frames) if args.held_out else np.arange(0, data.num_train, args.every))
    weights = paste_weights(data, frames, data.height, data.width)
    kind = "validation" if args.held_out else "training"
    print(f"{args.subject}: {len(frames)} {kind} frames at {data.height} px, {trained.checkpoint}")
    print(f"{'torso code':<26}" + "".join(f"{c:>8}" for c in ("whole", "pasted", "seam", "face", "hair", "neck", "torso",
                                                              "bg")))
    figures, renders = {}, {}
    arms = (held_out_arms(system, data, store, frames, args.fit_steps, tuple(args.pose_neighbours)) if args.held_out
            else (("mean", False, None), ("own frame", True, None)))
    for name, own, install in arms:
        if (own, install) not in renders:  # the mean code's frames, scored whole and on their right half, once
            if install is not None:
                install()
            renders[own, install] = render_validation(system, data, store, frames, progress=False, own_torso=own)
        rendered = renders[own, install]
        row = score(rendered, data, weights, right_half=name.endswith("right half"))
        figures[name] = row
        print(f"{name:<26}{row['psnr']:>8.2f}{row['pasted_psnr']:>8.2f}{row['seam_psnr']:>8.2f}"
              + "".join(f"{row.get(f'region_psnr_{r}', float('nan')):>8.2f}"
                        for r in ("face", "hair", "neck", "torso", "background")), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"subject": args.subject, "frames": frames.tolist(), **figures}, indent=2))


if __name__ == "__main__":
    main()
