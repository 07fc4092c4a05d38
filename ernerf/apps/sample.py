"""A talking sample made on the spot: scikit-image's public-domain `astronaut` portrait speaking synthesized text.

The mouth opens with the speech loudness (the lower face is warped down by a smooth displacement field and the
opened gap painted as a dark mouth interior), the head moves slightly, and the eyes blink. The ground truth of
what was animated is saved next to the video so tests can check that later stages see the same motion.

    python -m ernerf.apps.sample out=<dir> [text="..."] [seconds=9] [seed=0]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import librosa
import numpy as np

from ernerf.apps.tts import synthesize, write_wav
from ernerf.constants import FPS, SAMPLE_RATE
from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_path
from ernerf.io.video import VideoWriter
from ernerf.preprocess.mediapipe_face import native_stderr_silenced

DEFAULT_TEXT = (
    "Hello, I am a sample avatar made on this computer. "
    "I read these words so the pipeline has something to learn from."
)
NEW_SENTENCE = "This is a new sentence that the avatar never heard during training. Watch my lips move."

# Mediapipe face-mesh indices (478-point topology).
_LOWER_INNER_LIP = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
_CHIN = 152
_EYE_L_UPPER, _EYE_L_LOWER = [33, 246, 161, 160, 159, 158, 157, 173, 133], [33, 7, 163, 144, 145, 153, 154, 155, 133]
_EYE_R_UPPER, _EYE_R_LOWER = [362, 398, 384, 385, 386, 387, 388, 466, 263], [362, 382, 381, 380, 374, 373, 390, 249, 263]
_MOUTH_COLOUR = np.array([52.0, 16.0, 20.0])  # dark red-brown: an open mouth's interior in shadow


@dataclass(frozen=True)
class SamplePaths:
    """Files written by `make_sample`."""

    video: Path  # sample.mp4: H.264 + AAC, 25 fps
    audio: Path  # sample.wav: the speech track, 16 kHz mono PCM16
    mouth: Path  # sample_mouth.npy: float32 [N] animated mouth opening in [0, 1]
    blink: Path  # sample_blink.npy: float32 [N] animated lid closure in [0, 1]

    @classmethod
    def in_dir(cls, out_dir: Path | str) -> SamplePaths:
        """The file names `make_sample` uses inside `out_dir`."""
        out = Path(out_dir)
        return cls(out / "sample.mp4", out / "sample.wav", out / "sample_mouth.npy", out / "sample_blink.npy")

    def files(self) -> list[Path]:
        """Every file of the sample."""
        return [self.video, self.audio, self.mouth, self.blink]


@dataclass(frozen=True)
class _Face:
    """Geometry of the still portrait the animation deforms, in its pixel coordinates."""

    image: np.ndarray  # [B, B, 3] uint8, the output frame plus a margin for head motion
    margin: int
    mouth_line: np.ndarray  # [B] y where the lips part, per column
    lens: np.ndarray  # [B] 0..1 opening profile across the mouth (0 at the corners)
    jaw: np.ndarray  # [B] 0..1 profile of the jaw drop (wider than the mouth)
    chin_y: float
    mouth_width: float
    eyes: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per eye: columns, upper lid y, lower lid y
    jaw_box: tuple[tuple[int, int], tuple[int, int]]  # (row0, row1), (col0, col1) the jaw field can move


def make_sample(out_dir: Path | str, text: str = DEFAULT_TEXT, seconds: float = 9.0, seed: int = 0,
                size: int = 640) -> SamplePaths:
    """Write sample.mp4 (+ its wav, mouth and blink ground truth) into `out_dir`; returns the paths."""
    if size < 256 or size % 2:
        raise ErnerfError(f"size={size}: give an even frame size of at least 256 (the default 640 suits preprocessing).")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wav = speech_track(text, seconds)
    mouth = mouth_opening(wav, SAMPLE_RATE)
    n = len(mouth)
    blink = blink_track(n, rng)
    pose = head_motion(n, rng, size)
    face = _prepare_face(size)
    paths = SamplePaths.in_dir(out)
    write_wav(paths.audio, wav, SAMPLE_RATE)
    with VideoWriter(paths.video, fps=FPS, crf=16, audio=paths.audio) as writer:
        for i in range(n):
            writer.write(draw_portrait(face, mouth[i], blink[i], pose[i], size))
    for path, arr in ((paths.mouth, mouth), (paths.blink, blink)):
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr.astype(np.float32))
    return paths


def make_new_sentence(out_dir: Path | str, text: str = NEW_SENTENCE) -> Path:
    """Write new_sentence.wav (16 kHz mono): speech the avatar did not hear, for inference."""
    wav, sr = synthesize(text, rate=155, pitch=45)
    return write_wav(new_sentence_path(out_dir), wav, sr, target_rate=SAMPLE_RATE)


def new_sentence_path(out_dir: Path | str) -> Path:
    """Where `make_new_sentence` writes inside `out_dir`."""
    return Path(out_dir) / "new_sentence.wav"


def speech_track(text: str, seconds: float) -> np.ndarray:
    """The sample's sound: 0.4 s of silence, the spoken text, silence up to `seconds` (16 kHz float32)."""
    speech, sr = synthesize(text, rate=150, pitch=45)
    speech = librosa.resample(speech, orig_sr=sr, target_sr=SAMPLE_RATE).astype(np.float32)
    n_frames = int(round(seconds * FPS))
    total = n_frames * SAMPLE_RATE // FPS
    lead = int(0.4 * SAMPLE_RATE)
    if lead + len(speech) > total:
        need = (lead + len(speech)) / SAMPLE_RATE
        raise ErnerfError(f"the text takes {need:.1f} s to speak, longer than seconds={seconds}: "
                          f"give seconds>={np.ceil(need)} or a shorter text.")
    out = np.zeros(total, np.float32)
    out[lead:lead + len(speech)] = speech
    return out


def frame_loudness(wav: np.ndarray, sr: int, fps: int = FPS) -> np.ndarray:
    """RMS level in dB of a 40 ms window centred on each video frame, [N]."""
    hop = sr // fps
    n = len(wav) // hop
    padded = np.pad(wav, (hop, hop))
    centres = (np.arange(n) + 0.5) * hop + hop
    win = hop // 2  # half of 40 ms
    rms = np.array([np.sqrt(np.mean(padded[int(c) - win:int(c) + win] ** 2)) for c in centres])
    return 20 * np.log10(rms + 1e-5)


def mouth_opening(wav: np.ndarray, sr: int, floor_db: float = 28.0) -> np.ndarray:
    """Per-frame mouth opening in [0, 1]: loudness mapped from (peak - floor_db) .. peak, lightly smoothed."""
    db = frame_loudness(wav, sr)
    peak = np.percentile(db, 98)
    level = np.clip((db - (peak - floor_db)) / floor_db, 0.0, 1.0)
    # A 3-tap smoother: jaws do not teleport between frames, but syllables stay distinct.
    smooth = np.convolve(np.pad(level, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return np.clip(smooth, 0.0, 1.0).astype(np.float32)


def blink_track(n: int, rng: np.random.Generator) -> np.ndarray:
    """Lid closure per frame in [0, 1]: one blink about every 3-4 s, each ~0.3 s long."""
    closure = np.zeros(n, np.float32)
    shape = np.array([0.35, 0.8, 1.0, 1.0, 0.7, 0.35, 0.1], np.float32)  # fast close, slower open
    t = int(rng.integers(35, 55))
    while t + len(shape) < n:
        closure[t:t + len(shape)] = shape
        t += int(rng.integers(75, 100))
    return closure


def head_motion(n: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth small head motion per frame: [N, 3] = (rotation in degrees, dx, dy in pixels)."""
    t = np.arange(n) / FPS
    amplitude = np.array([2.5, 0.012 * size, 0.008 * size])
    motion = np.zeros((n, 3))
    for k in range(3):
        freqs = rng.uniform(0.12, 0.45, size=2)
        phases = rng.uniform(0, 2 * np.pi, size=2)
        wave = np.sin(2 * np.pi * freqs[0] * t + phases[0]) + 0.5 * np.sin(2 * np.pi * freqs[1] * t + phases[1])
        motion[:, k] = amplitude[k] * wave / 1.5
    return motion


def draw_portrait(face: _Face, opening: float, closure: float, pose: np.ndarray, size: int) -> np.ndarray:
    """One RGB frame [size, size, 3]: jaw opened by `opening`, lids closed by `closure`, head moved by `pose`."""
    b = face.image.shape[0]
    xs, src_y = np.meshgrid(np.arange(b, dtype=np.float32), np.arange(b, dtype=np.float32))
    (r0, r1), (c0, c1) = face.jaw_box
    rows = src_y[r0:r1, c0:c1].copy()
    dy, gap = _jaw_field(face, opening, rows, slice(c0, c1))
    src_y[r0:r1, c0:c1] = rows - dy
    for cols, upper, lower in face.eyes:
        _close_lids(src_y, cols, upper, lower, closure)
    img = cv2.remap(face.image, xs, src_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    img[r0:r1, c0:c1] = _paint_mouth(img[r0:r1, c0:c1], gap, 0.34 * face.mouth_width)
    m = cv2.getRotationMatrix2D((b / 2, b * 0.55), float(pose[0]), 1.0)  # pivot near the neck
    m[:, 2] += [pose[1] - face.margin, pose[2] - face.margin]
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _jaw_field(face: _Face, opening: float, ys: np.ndarray, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Downward displacement of the lower face, and the opened gap (distance to its nearer edge), both [R, C]."""
    depth = opening * 0.34 * face.mouth_width  # a wide-open mouth is about a third as tall as it is wide
    y0 = face.mouth_line[None, cols]
    below = ys - y0
    # Near the lips the opening has the mouth's lens shape; towards the chin the whole jaw drops as one.
    s = np.clip(below / max(face.chin_y - y0.min(), 1.0), 0.0, 1.0)
    profile = face.lens[None, cols] * (1 - s) + face.jaw[None, cols] * s
    neck_fade = np.clip(1 - (ys - face.chin_y) / (1.2 * face.mouth_width), 0.0, 1.0)  # the neck's skin stretches
    reach = depth * profile * neck_fade
    dy = np.clip(below, 0.0, reach)
    gap = np.where((below > 0) & (below < reach), np.minimum(below, reach - below), 0.0)
    return dy.astype(np.float32), gap.astype(np.float32)


def _close_lids(src_y: np.ndarray, cols: np.ndarray, upper: np.ndarray, lower: np.ndarray, closure: float) -> None:
    """Pull the upper lid skin down over the eye (in place on the backward map, columns `cols`)."""
    if closure <= 0:
        return
    lower = lower + 0.15 * (lower - upper)  # the landmarks sit on the lid margin, a little inside the white
    height = np.maximum(lower - upper, 1.0)
    across = np.linspace(0, 1, len(cols))
    # A shut lid meets the lower one from corner to corner; 0.97 leaves a lash-line's width of the eye.
    c = 0.97 * closure * np.sqrt(np.minimum(1.0, 1.6 * np.sin(np.pi * across)))
    top = upper - 1.2 * height.max()  # lid skin that slides down; a flat top keeps the brow still
    edge = upper + c * height  # where the lash line is now
    rows = np.arange(src_y.shape[0], dtype=np.float32)[:, None]
    lid = top + (rows - top) * (upper - top) / np.maximum(edge - top, 1e-3)
    eye = upper + (rows - edge) * height / np.maximum(lower - edge, 1e-3)
    new = np.where(rows < edge, lid, eye)
    inside = (rows >= top) & (rows < lower)  # leave the rest of the column (and the jaw field there) alone
    src_y[:, cols] = np.where(inside, new, src_y[:, cols]).astype(np.float32)


def _paint_mouth(img: np.ndarray, gap: np.ndarray, max_depth: float) -> np.ndarray:
    """Darken the opened gap so it reads as the inside of a mouth: soft 1.5 px edges, deeper shadow inside."""
    alpha = np.clip(gap / 1.5, 0.0, 1.0)[..., None]
    if not alpha.any():
        return img
    shade = 1.25 - 0.6 * np.clip(gap / (0.25 * max_depth), 0.0, 1.0)[..., None]
    out = img.astype(np.float32) * (1 - alpha) + _MOUTH_COLOUR * shade * alpha
    return np.clip(out, 0, 255).astype(np.uint8)


def _prepare_face(size: int) -> _Face:
    """Crop and upscale the astronaut portrait so the face is ~36% of the frame, and measure it once."""
    try:
        from skimage import data
    except ImportError as exc:
        raise ErnerfError("the built-in sample needs scikit-image: run `pip install -e .[demo]` (make demo does).") from exc
    src = data.astronaut()
    box = _detect_face_box(src)
    margin = size // 16
    b = size + 2 * margin
    scale = 0.36 * size / box[2]
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    # Face centre at 42% of the height: room for the hair above and the shoulders below.
    m = np.array([[scale, 0, b / 2 - scale * cx], [0, scale, margin + 0.42 * size - scale * cy]])
    image = cv2.warpAffine(src, m, (b, b), flags=cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT)
    return _measure_face(image, margin)


def _detect_face_box(rgb: np.ndarray) -> tuple[float, float, float, float]:
    """Mediapipe face-detection box (x, y, w, h) in pixels."""
    import mediapipe as mp  # on use, as ernerf.preprocess.mediapipe_face does: slow to import, needed here only

    h, w = rgb.shape[:2]
    with native_stderr_silenced(), \
            mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5) as det:
        found = det.process(rgb).detections
    if not found:
        raise ErnerfError("no face found in the astronaut portrait: scikit-image's data files look damaged; "
                          "reinstall scikit-image.")
    r = found[0].location_data.relative_bounding_box
    return r.xmin * w, r.ymin * h, r.width * w, r.height * h


def _face_mesh(rgb: np.ndarray) -> np.ndarray:
    """Mediapipe face mesh landmarks (x, y) in pixels [478, 2]."""
    import mediapipe as mp  # on use (see _detect_face_box)

    h, w = rgb.shape[:2]
    with native_stderr_silenced(), \
            mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        found = mesh.process(rgb).multi_face_landmarks
    if not found:
        raise ErnerfError("face mesh failed on the astronaut portrait: reinstall mediapipe==0.10.21.")
    return np.array([[p.x * w, p.y * h] for p in found[0].landmark])


def _measure_face(image: np.ndarray, margin: int) -> _Face:
    """Lip line, jaw profiles and eyelid curves of the still portrait."""
    lm = _face_mesh(image)
    b = image.shape[0]
    cols = np.arange(b, dtype=np.float64)
    lip = lm[_LOWER_INNER_LIP]
    left, right = lip[0, 0], lip[-1, 0]
    width = right - left
    centre = (left + right) / 2
    # Lips part just above the lower lip's inner edge; outside the corners the line continues flat.
    mouth_line = np.interp(cols, lip[:, 0], lip[:, 1]) - 1.0
    lens = np.sqrt(np.clip(1 - ((cols - centre) / (0.5 * width)) ** 2, 0.0, 1.0))
    jaw = np.clip(1.25 - np.abs(cols - centre) / (0.9 * width), 0.0, 1.0) ** 1.5
    jaw = np.minimum(jaw / jaw.max(), 1.0)
    on = np.flatnonzero(jaw > 0)
    rows = (int(lip[:, 1].min()) - 2, min(b, int(lm[_CHIN, 1] + 1.2 * width) + 2))
    eyes = tuple(_eye_curves(lm[up], lm[lo]) for up, lo in ((_EYE_L_UPPER, _EYE_L_LOWER),
                                                             (_EYE_R_UPPER, _EYE_R_LOWER)))
    return _Face(image=image, margin=margin, mouth_line=mouth_line, lens=lens, jaw=jaw,
                 chin_y=float(lm[_CHIN, 1]), mouth_width=float(width), eyes=eyes,
                 jaw_box=(rows, (int(on[0]), int(on[-1]) + 1)))


def _eye_curves(upper: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Columns spanned by one eye and its upper / lower lid y per column."""
    x0, x1 = int(np.ceil(min(upper[:, 0].min(), lower[:, 0].min()))), int(max(upper[:, 0].max(), lower[:, 0].max()))
    cols = np.arange(x0, x1 + 1)
    up = upper[np.argsort(upper[:, 0])]
    lo = lower[np.argsort(lower[:, 0])]
    return cols, np.interp(cols, up[:, 0], up[:, 1]), np.interp(cols, lo[:, 0], lo[:, 1])


def _parse_cli(argv: list[str]) -> dict[str, str]:
    allowed = {"out", "text", "seconds", "seed", "size"}
    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise ErnerfError(f"unknown argument {item!r}: use key=value with keys {sorted(allowed)}, "
                              "e.g. python -m ernerf.apps.sample out=data/demo_src")
        args[key] = value
    if "out" not in args:
        raise ErnerfError("give the output folder: python -m ernerf.apps.sample out=<dir>")
    return args


def main(argv: list[str] | None = None) -> int:
    """CLI: write the sample video, its ground truth and new_sentence.wav into out=<dir>."""
    try:
        args = _parse_cli(sys.argv[1:] if argv is None else argv)
        paths = make_sample(args["out"], text=args.get("text", DEFAULT_TEXT), seconds=float(args.get("seconds", 9.0)),
                            seed=int(args.get("seed", 0)), size=int(args.get("size", 640)))
        sentence = make_new_sentence(args["out"])
    except (ErnerfError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"sample video: {paths.video}\nmouth ground truth: {paths.mouth}\nnew sentence: {sentence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
