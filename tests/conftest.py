"""Shared fixtures: real clips from ../shared/data, preprocessed subjects cached per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CONF_DIR = REPO / "conf"


def shared_clip(relpath: str) -> Path:
    """Path of a real test clip in ../shared/data (read in place, never copied into the repo)."""
    path = SHARED_DATA / relpath
    if not path.exists():
        pytest.fail(f"test clip {path} is missing: the tests expect ../shared/data beside the checkout")
    return path


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n 2`), share the cores between the workers: each worker's torch, and
    the scripts its tests start, get their part of the threads, so that the workers do not oversubscribe the CPU."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers:
        return
    import torch

    threads = max(1, (os.cpu_count() or 1) // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by subprocesses
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def compose(config_name: str, overrides: list[str] | None = None):
    """Compose the REAL Hydra config of an entry point with overrides."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [], return_hydra_config=False)


_PREPARED: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="session")
def prepare_subject(tmp_path_factory: pytest.TempPathFactory):
    """prepare_subject(clip, upto=step) -> subject folder with the pipeline run up to `step` (cached)."""
    from ernerf.io.layout import SubjectLayout
    from ernerf.preprocess.base import StepContext, run_steps
    from hydra.utils import instantiate

    root = tmp_path_factory.mktemp("subjects")

    def _prepare(clip: str, upto: str | None = None) -> Path:
        key = (clip, upto or "all")
        if key in _PREPARED:
            return _PREPARED[key]
        cfg = compose("preprocess", ["subject=test"])
        names = list(cfg.preprocess.steps.keys())
        # Instantiate only the steps that run, so later (heavier) steps are not even built.
        keep = names[: names.index(upto) + 1] if upto is not None else names
        steps = [instantiate(cfg.preprocess.steps[k]) for k in keep]
        # One folder per clip: later calls extend what earlier calls built (steps are idempotent).
        layout = SubjectLayout(root / Path(clip).stem)
        layout.root.mkdir(parents=True, exist_ok=True)
        run_steps(steps, StepContext(layout=layout, video=shared_clip(clip)))
        _PREPARED[key] = layout.root
        return layout.root

    return _prepare
