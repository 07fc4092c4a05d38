"""Shared fixtures: real clips from ../shared/data, preprocessed once per test run (shared by the xdist workers)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hydra.plugins.config_source import ConfigResult
    from omegaconf import DictConfig

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
    """Each config file parsed once per process (`parse_each_config_file_once`), Hydra's repository copies sharing
    the ConfigStore and Lightning imported without transformers and scipy.signal, as in the entry scripts
    (`share_hydra_config_store`, `keep_torchmetrics_import_lean`: seconds of each worker's collection on the 2-core
    machine). Under pytest-xdist (`make test` runs `-n 2`), share the cores between the workers: each worker's torch,
    and the scripts its tests start, get their part of the threads, so that the workers do not oversubscribe the
    CPU."""
    from ernerf.cli import keep_torchmetrics_import_lean, share_hydra_config_store

    parse_each_config_file_once()
    share_hydra_config_store()
    keep_torchmetrics_import_lean()
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


def parse_each_config_file_once() -> None:
    """Hydra parses every YAML file a compose reads again at each compose (its cache lasts one compose): a quarter of
    a compose's time, and the suite composes hundreds per process. Here each file is parsed once per process (keyed
    by its path, size and modification time, so an edited file is read again) and every compose gets a deep copy of
    the parse: the same configs, composed as before."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.config_source import ConfigSource

    # the classes Hydra composes with (its plugin discovery imports their modules anew)
    sources = {cls.__name__: cls for cls in Plugins.instance().discover(ConfigSource)}
    parsed: dict[tuple, ConfigResult] = {}

    def once(load: Callable[[ConfigSource, str], ConfigResult], key: Callable[[ConfigSource, str], tuple | None]):
        def load_config(self: ConfigSource, config_path: str) -> ConfigResult:
            k = key(self, config_path)
            if k is None:
                return load(self, config_path)
            if k not in parsed:
                parsed[k] = load(self, config_path)
            result = parsed[k]
            return dataclasses.replace(result, config=copy.deepcopy(result.config), header=dict(result.header))

        load_config.parses_once = True
        return load_config

    def file_key(source: ConfigSource, config_path: str) -> tuple | None:
        path = os.path.join(source.path, source._normalize_file_name(config_path))
        try:
            st = os.stat(path)
        except OSError:
            return None  # Hydra raises its own error
        return os.path.realpath(path), st.st_size, st.st_mtime_ns

    files, package = sources["FileConfigSource"], sources["ImportlibResourcesConfigSource"]
    if not getattr(files.load_config, "parses_once", False):
        files.load_config = once(files.load_config, file_key)
        # Hydra's own configs (hydra/config, job logging...), inside the installed package
        package.load_config = once(package.load_config, lambda source, config_path: (source.path, config_path))


_COMPOSED: dict[tuple[str, tuple[str, ...]], DictConfig] = {}


def compose(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose the REAL Hydra config of an entry point with overrides. A composition asked for again in this process
    (the preprocessing config of the cached subjects, most often) is a copy of the first one: the config files do not
    change during a run, and interpolations such as `${now:...}` resolve in each copy when read."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    key = (config_name, tuple(overrides or []))
    if key not in _COMPOSED:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            _COMPOSED[key] = hydra_compose(config_name=config_name, overrides=list(key[1]),
                                           return_hydra_config=False)
    return copy.deepcopy(_COMPOSED[key])


_PREPARED: dict[tuple[str, str], Path] = {}


def run_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temp folder of the whole run: under pytest-xdist the one that the workers' own folders are in
    (`<run>/popen-gw0`, ...), so that every worker finds what another built there; in one process, its own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def prepared_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the run's preprocessed clips live (see run_temp)."""
    return run_temp(tmp_path_factory) / "prepared"


@contextlib.contextmanager
def held(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file`, waiting while another worker holds it (released at exit, or when its
    holder dies)."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_prepared(base: Path, clip: str, steps: list[str]) -> Path:
    """`<base>/<step>/<clip stem>` for each of `steps` (the pipeline's, in order): the clip preprocessed up to that
    step. Each folder is built once for the whole run, from a copy of the one before it, in a temporary folder that is
    renamed into place once complete; a worker waits (the clip's lock) while another builds, then reads the result.
    A finished folder is never written again."""
    from hydra.utils import instantiate

    stem = Path(clip).stem
    base.mkdir(parents=True, exist_ok=True)
    with held(base / f"{stem}.lock"):
        cfg = compose("preprocess", ["subject=test"])
        before = None
        for i, name in enumerate(steps):
            folder = base / name / stem
            # every step so far, so that run_steps sees them all (those done in the copy are skipped); the subject's
            # folder keeps the clip's name while it is built
            build_in_place(folder, lambda work, i=i, before=before: _preprocess_into(
                work / stem, before, [instantiate(cfg.preprocess.steps[k]) for k in steps[: i + 1]], clip),
                work=base / f".building-{name}-{stem}", made=lambda work: work / stem)
            before = folder
    return base / steps[-1] / stem


def _preprocess_into(root: Path, before: Path | None, steps: list, clip: str) -> None:
    """Run `steps` on `clip` in subject folder `root`, starting from a copy of `before` (None: from nothing)."""
    from ernerf.io.layout import SubjectLayout
    from ernerf.preprocess.base import StepContext, run_steps

    if before is None:
        root.mkdir(parents=True)
    else:
        shutil.copytree(before, root, symlinks=True)
    run_steps(steps, StepContext(layout=SubjectLayout(root), video=shared_clip(clip)))


def build_in_place(folder: Path, build: Callable[[Path], object], work: Path | None = None,
                   made: Callable[[Path], Path] = lambda work: work) -> Path:
    """Make `folder` unless it exists: `build(work)` in a temporary folder `work`, then `made(work)` renamed onto
    `folder`, so a folder that exists is complete. The caller holds the lock that makes this one builder's."""
    if not folder.is_dir():
        work = work or folder.with_name(f".building-{folder.name}")
        shutil.rmtree(work, ignore_errors=True)  # what a killed run left is dropped (the lock is ours)
        build(work)
        folder.parent.mkdir(parents=True, exist_ok=True)
        made(work).rename(folder)
        shutil.rmtree(work, ignore_errors=True)
    return folder


def build_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """`folder`, made by `build(<a temporary folder>)` and renamed into place once complete, once for the whole run:
    a worker that finds another building it waits (a lock beside it), then reads the result."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with held(folder.with_name(f"{folder.name}.lock")):
        return build_in_place(folder, build)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file and folder under `folder` (a folder's changes when an entry is
    added or removed)."""
    return {str(p.relative_to(folder)): (st.st_size, st.st_mtime_ns) for p in folder.rglob("*") for st in [p.lstat()]}


@pytest.fixture(scope="session")
def prepare_subject(tmp_path_factory: pytest.TempPathFactory):
    """prepare_subject(clip, upto=step) -> subject folder (named after the clip) with the pipeline run up to `step`,
    built once for the whole run and shared by the xdist workers (`build_prepared`). Tests only read it: one that
    changes a dataset copies it first (`shutil.copytree(..., symlinks=True)`); at the session's end a folder that
    changed since this worker first handed it out fails the last test that used the fixture."""
    base = prepared_base(tmp_path_factory)
    handed_out: dict[Path, dict[str, tuple[int, int]]] = {}

    def _prepare(clip: str, upto: str | None = None) -> Path:
        key = (clip, upto or "all")
        if key not in _PREPARED:
            names = list(compose("preprocess", ["subject=test"]).preprocess.steps.keys())
            folder = build_prepared(base, clip, names[: names.index(upto) + 1] if upto else names)
            handed_out[folder] = tree_state(folder)
            _PREPARED[key] = folder
        return _PREPARED[key]

    yield _prepare
    changed = [str(folder) for folder, state in handed_out.items() if tree_state(folder) != state]
    if changed:
        pytest.fail(f"tests wrote into the shared preprocessed subjects {changed}: copy one before changing it")


@pytest.fixture(scope="session")
def embedded_sample(tmp_path_factory: pytest.TempPathFactory):
    """The embedded talking sample (`make_sample(seed=0)`), written once for the whole run and shared by the xdist
    workers (`build_once`): tests only read it."""
    from ernerf.apps.sample import SamplePaths, make_sample

    return SamplePaths.in_dir(build_once(run_temp(tmp_path_factory) / "sample", lambda out: make_sample(out, seed=0)))
