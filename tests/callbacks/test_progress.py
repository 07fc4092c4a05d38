"""The training bar counts the run's steps out of max_steps across epochs, and starts from a resumed step."""

from __future__ import annotations

from types import SimpleNamespace

from callbacks.progress import RunProgressBar


def test_one_bar_counts_steps_of_the_run_across_epochs(capsys, monkeypatch) -> None:
    bar = RunProgressBar(refresh_rate=1)
    monkeypatch.setattr(bar, "get_metrics", lambda trainer, module: {"train/psnr": 20.0})
    monkeypatch.setattr(RunProgressBar, "is_enabled", property(lambda self: True))
    bar.train_progress_bar = bar.init_train_tqdm()
    trainer = SimpleNamespace(max_steps=30, global_step=0, current_epoch=0)
    for epoch in range(3):  # three passes over a 10-frame subject
        trainer.current_epoch = epoch
        bar.on_train_epoch_start(trainer)
        for batch in range(10):
            trainer.global_step += 1
            bar.on_train_batch_end(trainer, None, None, None, batch)
    assert bar.train_progress_bar.total == 30 and bar.train_progress_bar.n == 30
    shown = capsys.readouterr()
    assert "30/30" in shown.out + shown.err and "epoch 2" in shown.out + shown.err


def test_a_resumed_run_starts_its_bar_at_its_step(monkeypatch) -> None:
    bar = RunProgressBar(refresh_rate=1)
    monkeypatch.setattr(bar, "get_metrics", lambda trainer, module: {})
    monkeypatch.setattr(RunProgressBar, "is_enabled", property(lambda self: True))
    bar.train_progress_bar = bar.init_train_tqdm()
    trainer = SimpleNamespace(max_steps=100, global_step=60, current_epoch=6)
    bar.on_train_epoch_start(trainer)
    assert bar.train_progress_bar.total == 100 and bar.train_progress_bar.n == 60
    assert bar.train_progress_bar.initial == 60  # its rate counts this run's steps only


def test_where_output_is_not_a_terminal_the_run_logs_a_line_now_and_then(caplog, monkeypatch) -> None:
    import logging

    now = [0.0]
    bar = RunProgressBar(refresh_rate=1, log_lines=True, every=10.0, clock=lambda: now[0])
    assert bar.is_disabled  # no bar redraws in a log file
    monkeypatch.setattr(bar, "get_metrics", lambda trainer, module: {"train/psnr": 20.012345, "v_num": 3})
    caplog.set_level(logging.INFO, logger="ernerf.progress")
    trainer = SimpleNamespace(max_steps=100, global_step=40, current_epoch=4)  # resumed at step 40
    bar.on_train_start(trainer, None)
    bar.on_train_epoch_start(trainer)
    for batch in range(60):
        now[0] += 0.25  # 4 steps/s
        trainer.global_step += 1
        bar.on_train_batch_end(trainer, None, None, None, batch)
    bar.on_train_end(trainer, None)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "training: 80/100 steps, 4.0 steps/s, 5 s left, train/psnr=20.01"
    assert lines[-1] == "training: 60 steps in 15 s (4.0 steps/s)" and len(lines) == 2

    other_rank = RunProgressBar(log_lines=True)
    other_rank.on_train_start(SimpleNamespace(max_steps=100, global_step=0, current_epoch=0, is_global_zero=False), None)
    assert other_rank.logged is None  # under DDP one rank writes the lines
