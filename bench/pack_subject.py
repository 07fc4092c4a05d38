"""Pack a preprocessed subject for another machine (a GPU host, a cluster node), smaller; unpack it there.

    python bench/pack_subject.py pack data/trump trump.tar          # then copy trump.tar over
    python bench/pack_subject.py unpack trump.tar aoc.tar --data-root data

What goes: what training, `evaluate.py`, `infer.py` and the benches read. Left out: the matting videos and the face
video (`input.mp4`, `alpha.mp4`, `face_data.mp4`: nothing after preprocessing reads them), the crop frames' JPEGs
(`ori_imgs/*.jpg`; their landmarks go), the previews, and the hidden entries: the preprocessing markers (`.steps/`,
which name the files left out: a folder without markers is not checked, as one made by ER-NeRF's own scripts), its
logs and lock. The RGBA torso images go as lossless WebP and come back as PNG with the same pixels (WebP keeps no
colour under alpha 0, where the dataset's is black). An unpacked subject trains, evaluates and renders;
preprocessing cannot go on in it (its markers stayed).
"""

from __future__ import annotations

import argparse
import io
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

LEFT_OUT = {"input.mp4", "alpha.mp4", "face_data.mp4", "preview.png", "contact_sheet.png"}
TORSO_DIR = "torso_imgs"


def packed_files(subject: Path) -> list[Path]:
    """The files of a subject folder that travel, in name order."""
    def travels(path: Path) -> bool:
        rel = path.relative_to(subject)
        return not (path.is_dir() or rel.parts[0].startswith(".") or path.name in LEFT_OUT or path.name.endswith(".tmp")
                    or (rel.parts[0] == "ori_imgs" and path.suffix == ".jpg"))
    return sorted(p for p in subject.rglob("*") if travels(p))


def webp_of(path: Path) -> bytes:
    """A torso PNG as lossless WebP; refused unless it decodes back to the same pixels."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    ok, buffer = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])  # > 100: lossless
    if not ok or not np.array_equal(decoded_torso(buffer.tobytes()), image):
        raise ValueError(f"{path} does not survive WebP: pack it as it is")
    return buffer.tobytes()


def decoded_torso(data: bytes) -> np.ndarray:
    """A WebP torso image's pixels, black under alpha 0 as the dataset's PNGs are."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image.ndim == 3 and image.shape[2] == 4:
        image[image[..., 3] == 0] = 0
    return image


def pack(subject: Path, out: Path) -> tuple[int, int]:
    """Write `out` (an uncompressed tar whose top folder is the subject's name); returns (files, bytes)."""
    files = packed_files(subject)
    torso = [p for p in files if p.parent.name == TORSO_DIR and p.suffix == ".png"]
    with ThreadPoolExecutor() as pool:
        webps = dict(zip(torso, pool.map(webp_of, torso)))
    with tarfile.open(out, "w") as tar:
        for path in files:
            name = str(Path(subject.name) / path.relative_to(subject))
            if path in webps:
                info = tarfile.TarInfo(str(Path(name).with_suffix(".webp")))
                info.size = len(webps[path])
                tar.addfile(info, io.BytesIO(webps[path]))
            else:
                tar.add(path, arcname=name, recursive=False)
    return len(files), out.stat().st_size


def unpack(archive: Path, data_root: Path) -> Path:
    """Extract `archive` under `data_root`, the torso images back to PNG; returns the subject folder."""
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        tar.extractall(data_root, filter="data")
    subject = data_root / Path(names[0]).parts[0]

    def back(path: Path) -> None:
        cv2.imwrite(str(path.with_suffix(".png")), decoded_torso(path.read_bytes()), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        path.unlink()

    with ThreadPoolExecutor() as pool:
        list(pool.map(back, sorted((subject / TORSO_DIR).glob("*.webp"))))
    return subject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    packing = verbs.add_parser("pack", help="a subject folder -> a tar")
    packing.add_argument("subject", type=Path)
    packing.add_argument("out", type=Path)
    unpacking = verbs.add_parser("unpack", help="tars -> subject folders under --data-root")
    unpacking.add_argument("archives", type=Path, nargs="+")
    unpacking.add_argument("--data-root", type=Path, default=Path("data"))
    args = parser.parse_args()
    if args.verb == "pack":
        before = sum(p.stat().st_size for p in args.subject.rglob("*") if p.is_file())
        count, size = pack(args.subject, args.out)
        print(f"{args.out}: {count} files, {size / 2**20:.1f} MiB (the folder: {before / 2**20:.1f} MiB)")
    else:
        for archive in args.archives:
            print(f"{archive} -> {unpack(archive, args.data_root)}")


if __name__ == "__main__":
    main()
