"""`make demo`: the whole job on the built-in sample, as a list of stages that each skip when done.

    python -m ernerf.demo [hydra overrides for the preprocess config, e.g. paths.data_root=/tmp/data]

Stages run in order. To extend the demo (training, inference), append a `Stage` to `STAGES` whose
`done` looks at the stage's output and whose `run` produces it from the earlier stages' outputs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from ernerf.errors import ErnerfError
from ernerf.io.layout import SubjectLayout

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SUBJECT = "demo"


@dataclass(frozen=True)
class DemoContext:
    """Where the demo's inputs and outputs live, and the composed preprocess config."""

    cfg: DictConfig  # the `preprocess` entry point's config (paths, preprocess, audio_features)
    source_dir: Path  # the generated sample: sample.mp4, new_sentence.wav, ground truth

    @property
    def layout(self) -> SubjectLayout:
        return SubjectLayout(Path(self.cfg.paths.data_root) / self.cfg.subject)

    @property
    def sample_video(self) -> Path:
        from ernerf.sample import SamplePaths

        return SamplePaths.in_dir(self.source_dir).video

    @property
    def new_sentence(self) -> Path:
        from ernerf.sample import new_sentence_path

        return new_sentence_path(self.source_dir)


@dataclass(frozen=True)
class Stage:
    """One step of the demo: `run` produces what `done` checks for."""

    name: str
    done: Callable[[DemoContext], bool]
    run: Callable[[DemoContext], None]


def _sample_done(ctx: DemoContext) -> bool:
    from ernerf.sample import SamplePaths

    files = [*SamplePaths.in_dir(ctx.source_dir).files(), ctx.new_sentence]
    return all(f.exists() for f in files)


def _make_sample(ctx: DemoContext) -> None:
    from ernerf.sample import make_new_sentence, make_sample

    make_sample(ctx.source_dir)
    make_new_sentence(ctx.source_dir)


def _preprocess_done(ctx: DemoContext) -> bool:
    from ernerf.preprocess.pipeline import build_steps

    return all(step.is_complete(ctx.layout) for step in build_steps(ctx.cfg.preprocess.steps))


def _preprocess(ctx: DemoContext) -> None:
    from ernerf.preprocess.pipeline import preprocess_subject

    preprocess_subject(ctx.cfg.preprocess, ctx.layout, video=ctx.sample_video)


STAGES: list[Stage] = [
    Stage("sample", _sample_done, _make_sample),
    Stage("preprocess", _preprocess_done, _preprocess),
]


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The real `preprocess` Hydra config with subject=demo and the user's overrides."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="preprocess", overrides=[f"subject={SUBJECT}", *overrides])


def run_demo(overrides: Sequence[str] = (), stages: Sequence[Stage] | None = None) -> DemoContext:
    """Run every stage that is not done yet, in order; returns the context for reporting."""
    cfg = compose_config(overrides)
    ctx = DemoContext(cfg=cfg, source_dir=Path(cfg.paths.data_root) / "demo_src")
    for stage in STAGES if stages is None else stages:
        _run_stage(stage, ctx)
    return ctx


def _run_stage(stage: Stage, ctx: DemoContext) -> None:
    from hydra.errors import InstantiationException

    try:
        if stage.done(ctx):
            print(f"[demo] {stage.name}: already done, skipping")
            return
        print(f"[demo] {stage.name} ...", flush=True)
        t0 = time.perf_counter()
        stage.run(ctx)
    except InstantiationException as exc:
        # A `_target_` in conf/ that does not import: a stale install or an unfinished checkout.
        raise ErnerfError(f"demo stage {stage.name}: cannot build an object named in conf/ ({exc}). "
                          "Update the checkout and reinstall with `pip install -e .`.") from exc
    print(f"[demo] {stage.name} done in {time.perf_counter() - t0:.1f} s", flush=True)


def report(ctx: DemoContext) -> None:
    """Print where the demo's outputs are."""
    print(f"[demo] sample video: {ctx.sample_video}")
    print(f"[demo] dataset: {ctx.layout.root}")
    if ctx.layout.contact_sheet.exists():
        print(f"[demo] contact sheet: {ctx.layout.contact_sheet}")
    print(f"[demo] new sentence for inference: {ctx.new_sentence}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `make demo`."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ctx = run_demo(sys.argv[1:] if argv is None else argv)
    except ErnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
