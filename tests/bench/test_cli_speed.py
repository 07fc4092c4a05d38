"""bench/cli_speed.py: how fast every entry script answers --help, --cfg job and shell completion."""

from __future__ import annotations

import json

from tests.bench.scripts import run_bench


def test_cli_speed_times_every_question_of_every_script(tmp_path) -> None:
    out = tmp_path / "cli.json"
    printed = run_bench("cli_speed.py", ["--runs", "1", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert set(figures["scripts"]) == {"preprocess.py", "train.py", "infer.py", "evaluate.py", "serve.py"}
    for row in figures["scripts"].values():
        assert set(row) == {"--help", "--cfg job", "completion"}
        assert all(seconds > figures["baseline_s"] for seconds in row.values())
    assert "train.py" in printed and "completion" in printed
