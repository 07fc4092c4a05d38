"""The bench/ scripts as the tests run them: started as a user starts them, or imported as modules."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from ernerf.io.layout import SubjectLayout
from tests.conftest import REPO

TINY = ["--rays", "256", "--override", "datamodule.downscale=8", "--override", "model.grid.resolution=16"]
# A small field and few samples, for the benches that train and then render every validation frame.
SMALL_FIELD = ["encoder.num_levels=4", "encoder.log2_hashmap_size=10", "encoder.desired_resolution=64",
               "model.marcher.num_samples=8"]
TINY_FIELD = [f"--override={o}" for o in SMALL_FIELD]


def train_mini_head(data_root: Path, runs_root: Path, steps: int, *overrides: str) -> None:
    """The head stage of subject `mini` under `data_root`, trained `steps` steps at the smallest size (SMALL_FIELD,
    256 rays, a 16^3 grid) and validated, checkpointed and imaged at its last step, into `runs_root`."""
    from ernerf.apps.train import train
    from tests.conftest import compose

    train(compose("train", ["subject=mini", f"paths.data_root={data_root}", f"paths.runs_root={runs_root}",
                            *overrides, "debug=fast", "datamodule.num_rays=256", "model.grid.resolution=16",
                            *SMALL_FIELD, f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                            f"callbacks.checkpoint.every_n_train_steps={steps}",
                            f"callbacks.val_images.every_n_steps={steps}"]))


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py imported as a module (the scripts are not a package)."""
    sys.path.insert(0, str(REPO / "bench"))
    return importlib.import_module(name)


def run_bench(script: str, args: list[str]) -> str:
    """`python bench/<script> <args>` from the repository root, as a user runs it; its stdout (it must succeed)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def first_training_frames(subject: Path, folder: Path, count: int = 24) -> Path:
    """`folder/<subject's name>`: `subject` with only its first `count` training frames (the held-out ones all kept),
    links to its files but for its training transforms. For the benches that train: what their tests check does not
    depend on how many frames there are, and loading trump's 250 frames twice was ~7 s of a run's CPU."""
    source, root = SubjectLayout(subject), folder / subject.name
    root.mkdir(parents=True)
    for item in subject.iterdir():
        if item != source.transforms("train"):
            (root / item.name).symlink_to(item)
    train = json.loads(source.transforms("train").read_text())
    train["frames"] = train["frames"][:count]
    SubjectLayout(root).transforms("train").write_text(json.dumps(train))
    return root
