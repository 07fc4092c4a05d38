"""`make demo` orchestration: stages skip when their output exists, errors reach the user as messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ernerf import demo
from ernerf.errors import ErnerfError


def _touch_stage(name: str, calls: list[str]) -> demo.Stage:
    def out(ctx: demo.DemoContext) -> Path:
        return ctx.source_dir / f"{name}.done"

    def run(ctx: demo.DemoContext) -> None:
        calls.append(name)
        out(ctx).parent.mkdir(parents=True, exist_ok=True)
        out(ctx).write_text("ok")

    return demo.Stage(name, lambda ctx: out(ctx).exists(), run)


def test_stages_run_in_order_once_and_skip_when_done(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    calls: list[str] = []
    stages = [_touch_stage("a", calls), _touch_stage("b", calls)]
    ctx = demo.run_demo([f"paths.data_root={tmp_path}"], stages)
    assert calls == ["a", "b"] and ctx.source_dir == tmp_path / "demo_src"
    assert ctx.layout.root == tmp_path / "demo"
    (ctx.source_dir / "b.done").unlink()
    demo.run_demo([f"paths.data_root={tmp_path}"], stages)
    assert calls == ["a", "b", "b"]
    assert "a: already done, skipping" in capsys.readouterr().out


def test_default_stages_start_with_the_sample_then_preprocess(tmp_path: Path) -> None:
    assert [s.name for s in demo.STAGES][:2] == ["sample", "preprocess"]
    ctx = demo.DemoContext(cfg=demo.compose_config([f"paths.data_root={tmp_path}"]), source_dir=tmp_path / "src")
    assert not demo.STAGES[0].done(ctx)
    assert ctx.sample_video.name == "sample.mp4" and ctx.new_sentence.name == "new_sentence.wav"


def test_unbuildable_config_object_becomes_a_user_error(tmp_path: Path) -> None:
    broken = "+preprocess.steps.nope._target_=ernerf.no_such_module.Step"
    preprocess = [s for s in demo.STAGES if s.name == "preprocess"]
    with pytest.raises(ErnerfError, match="(?s)cannot build.*no_such_module.*pip install -e ."):
        demo.run_demo([f"paths.data_root={tmp_path}", broken], preprocess)


def test_main_prints_user_errors_and_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    def fail(ctx: demo.DemoContext) -> None:
        raise ErnerfError("the disk is full: free some space")

    monkeypatch.setattr(demo, "STAGES", [demo.Stage("x", lambda ctx: False, fail)])
    assert demo.main([f"paths.data_root={tmp_path}"]) == 2
    assert "error: the disk is full" in capsys.readouterr().err
