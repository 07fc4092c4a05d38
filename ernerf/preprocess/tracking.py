"""Step: rigid head tracking (per-frame rotation, translation; one focal) from the face mesh.

A subject-specific rigid template is built from the mesh points that do not move with speech or
expression (forehead, nose, cheekbones, temples, eye corners), in metres. Bundle adjustment then fits
template and per-frame poses to the 2D landmarks with a temporal smoothness prior.

Focal length: a joint gradient step on the focal barely moves it (it trades off against depth and
template shape), so the focal is searched: bundle adjustment on ~60 probe frames at focals of a
log grid (walked downhill from the prior), scored by reprojection error plus a log-normal prior (`focal_prior`, 1200 px for a 512 px
crop, a camera about 0.8 m away). On exact perspective data the error has a clear minimum at the
true focal and wins over the prior. Mediapipe's mesh, though, is predicted near-orthographically:
on real clips the error changes by only a few hundredths of a pixel over 500-3000 px, so there the
prior decides and the focal is an assumption, not a measurement.

Conventions follow docs/dataset.md: `x_cam = R X + t` (OpenCV camera), head frame x right, y up,
z towards the camera, origin 5 cm behind the mesh centroid. `euler` holds intrinsic XYZ Euler angles
of the head rotation seen from an OpenGL camera (`diag(1,-1,-1) @ R`): zeros mean facing the camera.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path, write_text
from ernerf.io.layout import SubjectLayout
from ernerf.picks import evenly_spaced
from ernerf.preprocess.base import PreprocessStep, StepContext
from ernerf.preprocess.check import redo_hint
from ernerf.threads import torch_threads

# torch is imported inside the functions that use it: building the preprocessing steps must not import it (the
# runner imports it in a background thread while the first steps run: TrackingStep.preload)
if TYPE_CHECKING:
    import torch

# Mediapipe face-mesh indices of rigid regions (no lips, jaw, eyelids or eyebrows).
STABLE_IDS = (
    10, 151, 9, 8, 109, 338, 67, 297, 108, 337, 69, 299, 104, 333,  # forehead
    168, 6, 197, 195, 5, 4, 1, 48, 278, 49, 279,  # nose bridge, tip and sides
    33, 133, 362, 263, 130, 359, 243, 463,  # eye corners
    116, 345, 117, 346, 118, 347, 123, 352, 50, 280, 101, 330, 100, 329,  # cheekbones
    127, 356, 162, 389, 21, 251, 139, 368, 34, 264, 143, 372,  # temples
)
OUTER_EYE = (33, 263)  # subject's right / left outer eye corners
FOREHEAD, CHIN = 10, 152
EYE_SPAN_M = 0.09  # adult outer-eye-corner distance
ORIGIN_BEHIND_M = 0.05  # canonical origin behind the mesh centroid, near the head's centre
FLIP = np.diag([1.0, -1.0, -1.0])  # head frame (y up, z to camera) <-> OpenCV camera (y down, z forward)


@dataclass
class Track:
    """Result of tracking one clip."""

    rot: np.ndarray  # [N, 3, 3] head -> OpenCV camera
    trans: np.ndarray  # [N, 3] metres
    focal: float  # pixels
    template: np.ndarray  # [K, 3] metres, head frame
    reproj_err: np.ndarray  # [N] mean pixel distance per frame


# ---------------------------------------------------------------- template


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama, roma's registration) with `scale * rot @ src + shift ~ dst`.

    Batched over leading dimensions: # [..., K, 3], [K, 3] -> scale [...], rot [..., 3, 3], shift [..., 3]"""
    import roma
    import torch

    src_t = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float64))
    dst_t = torch.from_numpy(np.ascontiguousarray(dst, dtype=np.float64)).expand(src_t.shape)
    rot, shift, scale = roma.rigid_points_registration(src_t, dst_t, compute_scaling=True)
    return scale.numpy(), rot.numpy(), shift.numpy()


def mean_shape(mesh: np.ndarray, ids: tuple[int, ...] = STABLE_IDS, iters: int = 3, frames: np.ndarray | None = None,
               chunk: int = 1024) -> np.ndarray:
    """Average face over `frames` (default all) aligned on the rigid points; y up, z to camera, px.

    Works through frame chunks, so a long clip's memory holds no more than the mesh itself. # [M,478,3] -> [478,3]"""
    flip = np.array([1.0, -1.0, -1.0])  # image (y down, z away) -> y up, z to camera
    frames = np.arange(len(mesh)) if frames is None else np.asarray(frames)
    parts = [frames[start:start + chunk] for start in range(0, len(frames), chunk)]
    ref = mesh[frames[0]].astype(np.float64) * flip
    for _ in range(iters):
        total, shift_sum = np.zeros_like(ref), np.zeros(3)
        for part in parts:
            pts = mesh[part].astype(np.float64) * flip
            # a chunk of frames in one registration: per-frame calls of tiny torch ops cost ~100x more
            scale, rot, shift = similarity(pts[:, list(ids)], ref[list(ids)])
            total += np.einsum("n,nkj,nij->ki", scale, pts, rot)  # sum of scale * p @ rot.T
            shift_sum += shift.sum(0)
        ref = (total + shift_sum) / len(frames)
    return ref


def canonical_template(shape: np.ndarray) -> np.ndarray:
    """Average face -> head frame: eyes level on x, forehead up, metres, origin behind the centroid. # [478,3]"""
    x = shape[OUTER_EYE[1]] - shape[OUTER_EYE[0]]
    x /= np.linalg.norm(x)
    up = shape[FOREHEAD] - shape[CHIN]
    y = up - (up @ x) * x
    y /= np.linalg.norm(y)
    basis = np.stack([x, y, np.cross(x, y)], axis=1)
    head = (shape - shape.mean(0)) @ basis
    head *= EYE_SPAN_M / np.linalg.norm(head[OUTER_EYE[1]] - head[OUTER_EYE[0]])
    head[:, 2] += ORIGIN_BEHIND_M
    return head


# ---------------------------------------------------------------- poses


def intrinsics(focal: float, size: int) -> np.ndarray:
    """Pinhole matrix with the principal point at the crop centre. # -> [3,3]"""
    c = size / 2.0
    return np.array([[focal, 0.0, c], [0.0, focal, c], [0.0, 0.0, 1.0]])


def solve_poses(template: np.ndarray, uv: np.ndarray, focal: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame PnP of the rigid template. # [K,3], [N,K,2] -> rot [N,3,3], trans [N,3]"""
    import cv2

    k = intrinsics(focal, size)
    rots, trans = [], []
    for pts in uv:
        ok, rvec, tvec = cv2.solvePnP(template, np.ascontiguousarray(pts, dtype=np.float64), k, None,
                                      flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            raise ErnerfError("head pose estimation failed on a frame: check mesh.npy (landmarks step).")
        rots.append(cv2.Rodrigues(rvec)[0])
        trans.append(tvec[:, 0])
    return np.stack(rots), np.stack(trans)


def project(template: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float, size: int) -> np.ndarray:
    """Pinhole projection of the template in every frame. # [K,3], [N,3,3], [N,3] -> [N,K,2]"""
    cam = np.einsum("nij,kj->nki", rot, template) + trans[:, None]
    return focal * cam[..., :2] / cam[..., 2:3] + size / 2.0


def mean_error(template: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float, size: int,
               uv: np.ndarray) -> np.ndarray:
    """Mean pixel distance between projected template and landmarks, per frame. # -> [N]"""
    return np.linalg.norm(project(template, rot, trans, focal, size) - uv, axis=-1).mean(axis=1)


# ---------------------------------------------------------------- bundle adjustment


def bundle_adjust(template: np.ndarray, rot: np.ndarray, trans: np.ndarray, focal: float, size: int,
                  uv: np.ndarray, weights: np.ndarray, smooth_weight: float, template_weight: float,
                  iters: int = 100, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refine template and poses at a fixed focal: robust reprojection loss, smoothness and shape priors.

    Smoothing is part of the fit (a pose-acceleration prior), not a filter afterwards, so the
    smoothed poses still explain the landmarks. Returns (template [K,3], rot [N,3,3], trans [N,3]).
    """
    import roma
    import torch

    flip = torch.tensor(FLIP)
    rv = roma.rotmat_to_rotvec(flip @ torch.from_numpy(rot)).requires_grad_(True)  # small: relative to frontal
    t_dm = (torch.from_numpy(trans) * 10.0).requires_grad_(True)  # decimetres keep variables O(1) for L-BFGS
    d_cm = torch.zeros(template.shape, dtype=torch.float64, requires_grad=True)  # template change, cm
    data = _ReprojectionData(torch.from_numpy(template), torch.from_numpy(uv), torch.from_numpy(weights), focal, size)
    opt = torch.optim.LBFGS([rv, t_dm, d_cm], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        smooth = (_second_diff(rv).pow(2).sum() / np.radians(0.5) ** 2
                  + _second_diff(t_dm / 10.0).pow(2).sum() / 1e-3**2) / len(uv)
        loss = smooth_weight * smooth + template_weight * d_cm.pow(2).mean() / 0.5**2
        loss.backward()
        # the reprojection term is a sum over frames: its gradient is accumulated chunk by chunk, so the autograd
        # graph of a long clip's [N, K] landmarks never exists whole
        for frames in _chunks(len(uv), chunk):
            part = data.loss(flip @ roma.rotvec_to_rotmat(rv[frames]), t_dm[frames] / 10.0, d_cm / 100.0, frames)
            part.backward()
            loss = loss.detach() + part.detach()
        return loss

    opt.step(closure)
    with torch.no_grad():
        rot_out = (flip @ roma.rotvec_to_rotmat(rv)).numpy()
    return template + d_cm.detach().numpy() / 100.0, rot_out, t_dm.detach().numpy() / 10.0


@dataclass
class _ReprojectionData:
    """Landmarks and camera of a fit; `loss` is the weighted Charbonnier reprojection error (2 px scale)."""

    template: torch.Tensor  # [K, 3]
    uv: torch.Tensor  # [N, K, 2]
    weights: torch.Tensor  # [N]
    focal: float
    size: int

    def loss(self, rot: torch.Tensor, trans: torch.Tensor, delta: torch.Tensor,
             frames: slice = slice(None)) -> torch.Tensor:
        """The `frames` part of the loss, poses of those frames given; the parts of all frames sum to the loss."""
        import torch

        cam = torch.einsum("nij,kj->nki", rot, self.template + delta) + trans[:, None]
        proj = self.focal * cam[..., :2] / cam[..., 2:3] + self.size / 2.0
        dist2 = ((proj - self.uv[frames]) ** 2).sum(-1)
        robust = (torch.sqrt(1.0 + dist2 / 4.0) - 1.0) * 4.0  # ~ squared px near 0, ~ 2|px| far out
        return (robust * self.weights[frames, None]).sum() / (self.weights.sum() * self.uv.shape[1])


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _second_diff(x: torch.Tensor) -> torch.Tensor:
    return x[2:] - 2.0 * x[1:-1] + x[:-2] if len(x) > 2 else x[:0]


def fit_poses(template: np.ndarray, uv: np.ndarray, weights: np.ndarray, focal: float, size: int,
              smooth_weight: float, template_weight: float, iters: int = 100) -> Track:
    """PnP initialisation, then bundle adjustment of template and poses at the given focal."""
    rot, trans = solve_poses(template, uv, focal, size)
    tpl, rot, trans = bundle_adjust(template, rot, trans, focal, size, uv, weights, smooth_weight,
                                    template_weight, iters)
    return Track(rot=rot, trans=trans, focal=focal, template=tpl,
                 reproj_err=mean_error(tpl, rot, trans, focal, size, uv))


def search_focal(template: np.ndarray, uv: np.ndarray, size: int, focal_prior: float, focal_sigma: float,
                 focal_range: tuple[float, float], prior_px: float = 0.05, steps: int = 9,
                 template_weight: float = 1.0) -> tuple[float, dict[float, float]]:
    """Focal minimising bundle-adjusted error (px) + `prior_px` * ((log f - log prior) / sigma)^2.

    The score is unimodal over the log grid (one error minimum plus a convex prior), so the grid is
    walked downhill from the point nearest the prior: the same minimum as scoring every grid point,
    for typically 3-4 bundle adjustments instead of `steps`. Returns the focal (parabola-refined in
    log focal around the best grid value) and the scores of the grid points visited.
    """
    grid = np.geomspace(focal_range[0], focal_range[1], steps)
    ones = np.ones(len(uv))
    visited: dict[int, float] = {}

    def score(j: int) -> float:
        if j not in visited:
            # no smoothness prior here: the probe frames are far apart in time
            err = fit_poses(template, uv, ones, float(grid[j]), size, 0.0, template_weight).reproj_err.mean()
            visited[j] = float(err + prior_px * (np.log(grid[j] / focal_prior) / focal_sigma) ** 2)
        return visited[j]

    k = int(np.argmin(np.abs(np.log(grid / focal_prior))))
    while True:
        downhill = [j for j in (k - 1, k + 1) if 0 <= j < steps and score(j) < score(k)]
        if not downhill:
            break
        k = min(downhill, key=score)
    scores = [visited.get(j, np.inf) for j in range(steps)]
    k = int(np.argmin(scores))
    focal = float(grid[k])
    if 0 < k < steps - 1:
        x, y = np.log(grid[k - 1: k + 2]), np.asarray(scores[k - 1: k + 2])
        a, b, _ = np.polyfit(x, y, 2)
        if a > 0:
            focal = float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    return focal, {float(grid[j]): visited[j] for j in sorted(visited)}


def track(mesh: np.ndarray, valid: np.ndarray, size: int, focal_prior: float = 1200.0, focal_sigma: float = 0.4,
          focal_range: tuple[float, float] = (500.0, 3000.0), smooth_weight: float = 1.0,
          template_weight: float = 1.0, probe_frames: int = 60) -> Track:
    """Fit a rigid template, one focal and per-frame poses to the mesh landmarks. # mesh [N,478,3] in crop px

    `focal_prior` and `focal_range` are for a 512 px crop and scale with `size`.
    """
    if not np.any(valid):
        raise ErnerfError("no frame has a detected face mesh: tracking needs a visible face (check the video).")
    uv = mesh[:, list(STABLE_IDS), :2].astype(np.float64)
    weights = np.where(valid, 1.0, 0.05)  # interpolated frames mostly follow the smoothness prior
    probe = np.flatnonzero(valid)[evenly_spaced(int(valid.sum()), probe_frames)]
    scale = size / 512.0
    with torch_threads(1):  # a tiny problem: thread hand-offs cost more than they bring
        template = canonical_template(mean_shape(mesh, frames=np.flatnonzero(valid)))[list(STABLE_IDS)]
        focal, _ = search_focal(template, uv[probe], size, focal_prior * scale, focal_sigma,
                                (focal_range[0] * scale, focal_range[1] * scale), template_weight=template_weight)
        return fit_poses(template, uv, weights, focal, size, smooth_weight, template_weight)


# ---------------------------------------------------------------- outputs


def c2w_matrices(rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Camera-to-world in the OpenGL/NeRF convention with world = head frame. # [N,3,3], [N,3] -> [N,4,4]"""
    c2w = np.tile(np.eye(4), (len(rot), 1, 1))
    rt = np.transpose(rot, (0, 2, 1))
    c2w[:, :3, :3] = rt
    c2w[:, :3, 3] = -np.einsum("nij,nj->ni", rt, trans)
    return c2w @ np.diag([1.0, -1.0, -1.0, 1.0])


def euler_angles(rot: np.ndarray) -> np.ndarray:
    """Intrinsic XYZ Euler angles (pitch, yaw, roll; rad) of the head seen from an OpenGL camera. # [N,3,3] -> [N,3]"""
    import roma
    import torch

    return roma.rotmat_to_euler("XYZ", torch.from_numpy(FLIP @ rot)).numpy()


def transforms_json(c2w: np.ndarray, ids: range, focal: float, size: int) -> str:
    """ER-NeRF's transforms_<split>.json text for the frames `ids`."""
    doc = {
        "focal_len": float(focal), "cx": size / 2.0, "cy": size / 2.0, "h": size, "w": size,
        "frames": [{"img_id": i, "aud_id": i, "transform_matrix": c2w[i].tolist()} for i in ids],
    }
    return json.dumps(doc, indent=1)


def angular_steps_deg(rot: np.ndarray) -> np.ndarray:
    """Rotation angle between consecutive frames, degrees. # [N,3,3] -> [N-1]"""
    import roma
    import torch

    rot = torch.from_numpy(np.asarray(rot, np.float64))
    return np.degrees(roma.rotmat_geodesic_distance(rot[1:], rot[:-1]).numpy())


class TrackingStep(PreprocessStep):
    """Write track_params.pt and transforms_{train,val}.json: rigid head poses and one focal length."""

    name = "tracking"
    requires = ("headbox", "landmarks")

    def __init__(self, focal_prior: float = 1200.0, focal_sigma: float = 0.4,
                 focal_range: tuple[float, float] = (500.0, 3000.0), smooth_weight: float = 1.0,
                 template_weight: float = 1.0, val_fraction: float = 1.0 / 11.0) -> None:
        self.focal_prior, self.focal_sigma = focal_prior, focal_sigma
        self.focal_range = (float(focal_range[0]), float(focal_range[1]))
        self.smooth_weight, self.template_weight = smooth_weight, template_weight
        self.val_fraction = val_fraction

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.track_params, layout.transforms("train"), layout.transforms("val")]

    def preload(self) -> None:
        # torch, and torch._dynamo, which roma's import and torch.optim's first parameter group pull in: seconds of
        # imports, done beside ingest (this process waits on ffmpeg there) rather than when this step starts
        import roma  # noqa: F401
        import torch._dynamo  # noqa: F401

    def run(self, ctx: StepContext) -> dict[str, Any]:
        layout = ctx.layout
        mesh, valid = _load_mesh(layout)
        size = _crop_size(layout)
        result = track(mesh, valid, size, self.focal_prior, self.focal_sigma, self.focal_range,
                       self.smooth_weight, self.template_weight)
        self._write(layout, result, size)
        steps = angular_steps_deg(result.rot)
        if result.reproj_err.mean() > 5.0:
            ctx.warn(f"head tracking fits the landmarks poorly (mean {result.reproj_err.mean():.1f} px): "
                     "check the contact sheet; fast motion or occlusions may need a cleaner clip.")
        return {"reproj_err_px": round(float(result.reproj_err[valid].mean()), 3), "focal": round(result.focal, 1),
                "max_step_deg": round(float(steps.max()), 2) if len(steps) else 0.0}

    def _write(self, layout: SubjectLayout, result: Track, size: int) -> None:
        import torch

        n = len(result.rot)
        params = {
            "euler": torch.from_numpy(euler_angles(result.rot)).float(),
            "trans": torch.from_numpy(result.trans).float(),
            "rot": torch.from_numpy(result.rot).float(),
            "focal": torch.tensor([result.focal], dtype=torch.float32),
            "template": torch.from_numpy(result.template).float(),
            "template_ids": torch.tensor(STABLE_IDS, dtype=torch.long),
            "reproj_err": torch.from_numpy(result.reproj_err).float(),
        }
        with atomic_path(layout.track_params) as tmp:
            torch.save(params, tmp)
        c2w = c2w_matrices(result.rot, result.trans)
        split = int(n * (1.0 - self.val_fraction) + 1e-6) if n > 1 else n  # ER-NeRF: int(N * 10 / 11)
        write_text(layout.transforms("train"), transforms_json(c2w, range(0, split), result.focal, size))
        write_text(layout.transforms("val"), transforms_json(c2w, range(split, n), result.focal, size))


def _load_mesh(layout: SubjectLayout) -> tuple[np.ndarray, np.ndarray]:
    if not layout.mesh.exists():
        raise ErnerfError(f"{layout.mesh} is missing: {redo_hint(layout.mesh)}.")
    mesh = np.load(layout.mesh)
    valid_path = layout.root / "mesh_valid.npy"
    valid = np.load(valid_path).astype(bool) if valid_path.exists() else np.ones(len(mesh), bool)
    return mesh, valid


def _crop_size(layout: SubjectLayout) -> int:
    import cv2

    first = cv2.imread(str(layout.ori_img(0)))
    if first is None:
        raise ErnerfError(f"{layout.ori_img(0)} is missing or unreadable: {redo_hint(layout.ori_img(0))}.")
    if first.shape[0] != first.shape[1]:
        raise ErnerfError(f"crops must be square, {layout.ori_img(0)} is {first.shape[1]}x{first.shape[0]}: "
                          f"{redo_hint(layout.ori_img(0))}.")
    return int(first.shape[0])
