"""bench/pack_subject.py: a subject packed here and unpacked elsewhere reads as it did, smaller."""

from __future__ import annotations

import filecmp
from pathlib import Path

import cv2
import numpy as np
import pytest

from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.check import check_dataset
from tests.bench.scripts import bench_module, run_bench
from tests.synthetic import write_synthetic_subject
from tests.test_stages import add_torso


@pytest.fixture()
def subject(tmp_path: Path) -> Path:
    root = write_synthetic_subject(tmp_path / "made" / "sphere", num_frames=6, size=32)
    add_torso(root)
    layout = SubjectLayout(root)
    for name in ("input.mp4", "alpha.mp4", "input_temp.mp4"):
        (root / name).write_bytes(b"video " + name.encode())
    cv2.imwrite(str(layout.ori_imgs / "0.jpg"), np.full((32, 32, 3), 90, np.uint8))
    (root / ".steps").mkdir()
    (root / ".steps" / "matting.json").write_text('{"outputs": ["input.mp4"]}')  # names a file left out
    return root


def test_a_packed_subject_unpacks_with_its_files_and_torso_pixels_and_without_the_videos(subject: Path,
                                                                                        tmp_path: Path) -> None:
    archive = tmp_path / "sphere.tar"
    out = run_bench("pack_subject.py", ["pack", str(subject), str(archive)])
    assert out.startswith(f"{archive}: ")
    run_bench("pack_subject.py", ["unpack", str(archive), "--data-root", str(tmp_path / "there")])
    there = tmp_path / "there" / "sphere"
    check_dataset(SubjectLayout(there))  # no markers came: nothing names the videos left behind
    kept = {p.relative_to(there) for p in there.rglob("*") if p.is_file()}
    assert not {Path("input.mp4"), Path("alpha.mp4"), Path("ori_imgs/0.jpg")} & kept and not (there / ".steps").exists()
    assert Path("input_temp.mp4") in kept and Path("ori_imgs/0.lms") in kept  # what infer.py pastes into; landmarks
    for rel in kept:
        if rel.parts[0] == "torso_imgs":
            mine, theirs = (cv2.imread(str(r / rel), cv2.IMREAD_UNCHANGED) for r in (subject, there))
            assert mine.shape == (32, 32, 4) and np.array_equal(mine, theirs), rel
        else:
            assert filecmp.cmp(subject / rel, there / rel, shallow=False), rel
    assert {p.relative_to(subject) for p in (subject / "torso_imgs").iterdir()} <= kept


def test_a_torso_image_webp_would_change_is_refused(subject: Path, tmp_path: Path) -> None:
    pack_subject = bench_module("pack_subject")
    rgba = cv2.imread(str(SubjectLayout(subject).torso(0)), cv2.IMREAD_UNCHANGED)
    rgba[0, 0] = [40, 50, 60, 0]  # colour under alpha 0: the dataset's is black, and WebP would not keep it
    cv2.imwrite(str(SubjectLayout(subject).torso(0)), rgba)
    with pytest.raises(ValueError, match="does not survive WebP"):
        pack_subject.pack(subject, tmp_path / "sphere.tar")
