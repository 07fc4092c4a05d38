"""bench/compare_subjects.py: what differs between two preprocessed subjects."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.scripts import bench_module


def test_compare_subjects_tells_a_dataset_change_from_a_rerun(tmp_path: Path) -> None:
    compare = bench_module("compare_subjects")
    for name, seconds in (("a", 1.5), ("b", 2.5)):
        root = tmp_path / name
        (root / ".steps").mkdir(parents=True)
        (root / ".logs").mkdir()
        (root / ".logs" / f"{name}.log").write_text(name)
        (root / ".steps" / "ingest.json").write_text(json.dumps({"seconds": seconds, "facts": {"frames": 3}}))
        (root / "meta.json").write_text(json.dumps({"subject": name, "root": str(root), "num_frames": 3}))
        (root / "mesh.npy").write_bytes(b"\x01\x02")
    assert compare.differences(tmp_path / "a", tmp_path / "b") == []
    (tmp_path / "b" / "mesh.npy").write_bytes(b"\x01\x03")
    (tmp_path / "b" / ".steps" / "ingest.json").write_text(json.dumps({"seconds": 1.0, "facts": {"frames": 4}}))
    assert compare.differences(tmp_path / "a", tmp_path / "b") == ["differs: .steps/ingest.json", "differs: mesh.npy"]
