"""Package, config and step-runner basics."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ernerf.errors import ErnerfError
from ernerf.io.atomic import atomic_dir, atomic_path
from ernerf.io.layout import SubjectLayout
from ernerf.preprocess.base import PreprocessStep, StepContext, run_steps
from tests.conftest import compose

REPO = Path(__file__).resolve().parents[1]


class _CountingStep(PreprocessStep):
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls = 0

    def outputs(self, layout: SubjectLayout) -> list[Path]:
        return [layout.root / f"{self.name}.txt"]

    def run(self, ctx: StepContext) -> dict:
        self.calls += 1
        with atomic_path(ctx.layout.root / f"{self.name}.txt") as tmp:
            tmp.write_text("partial")
            if self.fail:
                raise RuntimeError("killed")
        return {"calls": self.calls}


def test_runner_skips_complete_steps_and_force_reruns_later_ones(tmp_path: Path) -> None:
    steps = [_CountingStep("a"), _CountingStep("b"), _CountingStep("c")]
    ctx = StepContext(layout=SubjectLayout(tmp_path))
    run_steps(steps, ctx)
    assert [s.calls for s in steps] == [1, 1, 1]
    reports = run_steps(steps, ctx)
    assert [r.status for r in reports] == ["skipped"] * 3
    assert [s.calls for s in steps] == [1, 1, 1]
    run_steps(steps, ctx, force=["b"])
    assert [s.calls for s in steps] == [1, 2, 2]


def test_killed_step_leaves_no_partial_output_and_keeps_earlier_work(tmp_path: Path) -> None:
    ctx = StepContext(layout=SubjectLayout(tmp_path))
    run_steps([_CountingStep("a")], ctx)
    with pytest.raises(RuntimeError):
        run_steps([_CountingStep("a"), _CountingStep("b", fail=True)], ctx)
    assert (tmp_path / "a.txt").read_text() == "partial"  # earlier output intact
    assert not (tmp_path / "b.txt").exists()
    assert not list(tmp_path.glob(".tmp.*"))


def test_force_rejects_unknown_step(tmp_path: Path) -> None:
    with pytest.raises(ErnerfError, match="unknown steps"):
        run_steps([_CountingStep("a")], StepContext(layout=SubjectLayout(tmp_path)), force=["nope"])


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "imgs"
    with atomic_dir(target) as tmp:
        (tmp / "0.jpg").write_text("x")
    with pytest.raises(ValueError):
        with atomic_dir(target) as tmp:
            (tmp / "1.jpg").write_text("y")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["0.jpg"]


def test_preprocess_config_composes_with_every_step() -> None:
    cfg = compose("preprocess", ["subject=x"])
    assert list(cfg.preprocess.steps) == [
        "ingest", "headbox", "landmarks", "parsing", "background", "composite",
        "matting", "audio_features", "blink", "tracking", "report",
    ]
    assert cfg.paths.data_root == "data"
    json.dumps(dict(cfg.paths))


def test_triton_kernels_refuse_cpu_tensors_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from ernerf.triton_device import require_kernel_device

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ErnerfError, match="hash grid needs CUDA tensors, got cpu ones; on a CPU use the encoder"):
        require_kernel_device(torch.zeros(2), "hash grid", "use the encoder's backend 'torch'")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    require_kernel_device(torch.zeros(2), "hash grid", "use the encoder's backend 'torch'")  # the tests' interpreter


@pytest.mark.parametrize("script", ["preprocess.py", "train.py", "infer.py", "evaluate.py", "serve.py"])
def test_help_does_not_import_torch_or_lightning(script: str) -> None:
    """--help, --cfg and shell completion answer without the seconds that torch and Lightning take to import."""
    done = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-1000:]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "numpy" in imported or "omegaconf" in imported  # the import log was read
    assert not {"torch", "lightning"} & imported



def test_hydras_copies_of_the_config_repository_share_the_config_store() -> None:
    """Entry points let Hydra's per-listing copies of its repository share the ConfigStore (`share_hydra_config_store`,
    most of `--help`'s time otherwise): a structured config stored after a copy was made is found through the copy."""
    import copy

    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra

    from ernerf.cli import share_hydra_config_store
    from tests.conftest import CONF_DIR

    share_hydra_config_store()
    store = ConfigStore.instance()
    assert copy.deepcopy(store) is store
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        copied = copy.deepcopy(GlobalHydra.instance().config_loader().repository)
        store.store(group="ernerf_test_late", name="late", node={"value": 1})
        try:
            assert copied.load_config("ernerf_test_late/late").config.value == 1
        finally:
            del store.repo["ernerf_test_late"]


def test_packages_kept_out_of_torchmetrics_stay_importable_and_its_image_metrics_work() -> None:
    """torchmetrics would import the installed `transformers` and `scipy.signal` (seconds) at Lightning's import; the
    entry points' `keep_torchmetrics_import_lean` (applied in this process by tests/conftest.py, as by the entry
    points) stops that, while its image metrics still work and both packages can still be imported by the code that
    needs them. That a real job imports neither is checked on `train.py` (tests/test_reliability.py,
    test_training_further_ends_with_the_figures_the_checkpoint_and_the_next_commands)."""
    pytest.importorskip("scipy")
    from lightning_utilities.core import imports
    from torchmetrics import Metric
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    kept_out = ["scipy.signal"] + (["transformers"] if importlib.util.find_spec("transformers") else [])
    assert getattr(imports.RequirementCache._check_available, "keeps_torchmetrics_lean", False)
    assert issubclass(LearnedPerceptualImagePatchSimilarity, Metric)
    x = torch.rand(1, 3, 16, 16)
    assert round(float(ssim(x, x)), 4) == 1.0
    assert all(importlib.import_module(m) for m in kept_out)


@pytest.mark.parametrize(("argv", "patched"), [(["subject=anna"], True), (["subject=anna", "--help"], False)])
def test_entry_points_keep_torchmetrics_lean_in_jobs_only(monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                          patched: bool) -> None:
    from lightning_utilities.core import imports

    from ernerf.cli import run_entry_point

    # as a fresh process has it (an earlier test in this one may have run an entry point); restored after
    for owner, name in ((imports.RequirementCache, "_check_available"), (imports, "package_available")):
        monkeypatch.setattr(owner, name, getattr(getattr(owner, name), "unpatched", getattr(owner, name)))
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    seen = []
    run_entry_point(lambda: seen.append((bool(imports.RequirementCache("transformers>=4.4.0")),
                                         imports.package_available("scipy"))), "train.py")
    has_transformers = importlib.util.find_spec("transformers") is not None
    assert seen == [(has_transformers and not patched, not patched)]
    assert bool(imports.RequirementCache("torch")) and imports.package_available("numpy")


def test_a_ctrl_c_in_an_entry_point_is_one_line_that_says_how_to_go_on(monkeypatch, capsys) -> None:
    from ernerf.cli import run_entry_point

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["preprocess.py", "subject=anna"])
    with pytest.raises(SystemExit) as stopped:
        run_entry_point(interrupted, "preprocess.py")
    assert stopped.value.code == 130  # as a shell reports a process ended by SIGINT
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert message.startswith("preprocess.py: stopped (Ctrl-C)") and "same command goes on" in message
