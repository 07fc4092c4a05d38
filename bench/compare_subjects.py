"""Whether two preprocessed subject folders hold the same dataset, file by file.

    python bench/compare_subjects.py <subject folder A> <subject folder B>

Every file must be in both and equal byte for byte, except where two runs of the same code differ by design:
the run's logs (`.logs/`) and lock (`.lock`: its pid) are left out; the step markers (`.steps/*.json`: timings)
and `meta.json` / `model_data.json` (the subject's name and folder) are compared without their timings, name and
folder; `track_params.pt` tensor by tensor (torch's zip records carry the writer's pid). Exits 1 and lists the
differences otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TIMING_KEYS = {"seconds", "subject"}  # a step's wall time; the subject's name
LEFT_OUT = (".logs/", ".lock")  # what a run writes about itself, not the dataset


def files(root: Path) -> set[str]:
    """Paths of the regular files under `root`, relative to it."""
    names = (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return {name for name in names if not name.startswith(LEFT_OUT)}


def _without_paths(doc: Any, roots: tuple[str, ...]) -> Any:
    """`doc` with every string naming a place under one of `roots` cut to the part after it."""
    if isinstance(doc, dict):
        return {k: _without_paths(v, roots) for k, v in doc.items() if k not in TIMING_KEYS}
    if isinstance(doc, list):
        return [_without_paths(v, roots) for v in doc]
    if isinstance(doc, str):
        for root in roots:
            if doc.startswith(root):
                return "<root>" + doc[len(root):]
    return doc


def same_json(a: Path, b: Path) -> bool:
    """Equal JSON once timings and each subject's own folder and name are taken out."""
    ra, rb = (str(p.parents[1] if p.parent.name == ".steps" else p.parent) for p in (a, b))
    return _without_paths(json.loads(a.read_text()), (ra,)) == _without_paths(json.loads(b.read_text()), (rb,))


def same_tensors(a: Path, b: Path) -> bool:
    import torch

    ta, tb = torch.load(a), torch.load(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def differences(a: Path, b: Path) -> list[str]:
    """What differs between subject folders `a` and `b` (empty: the same dataset)."""
    fa, fb = files(a), files(b)
    out = [f"only in {a}: {name}" for name in sorted(fa - fb)] + [f"only in {b}: {name}" for name in sorted(fb - fa)]
    for name in sorted(fa & fb):
        pa, pb = a / name, b / name
        if name.endswith(".json") and (name.startswith(".steps/") or name in ("meta.json", "model_data.json")):
            same = same_json(pa, pb)
        elif name.endswith(".pt"):
            same = same_tensors(pa, pb)
        else:
            same = pa.read_bytes() == pb.read_bytes()
        if not same:
            out.append(f"differs: {name}")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args(argv)
    diff = differences(args.a, args.b)
    print("\n".join(diff) if diff else f"same dataset: {len(files(args.a))} files")
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
