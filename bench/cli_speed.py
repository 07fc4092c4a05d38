"""How fast the entry points answer when they do no work: --help, --cfg job and shell completion.

    python bench/cli_speed.py              # each of the four scripts, median of 5 runs
    python bench/cli_speed.py --runs 1 --json bench/out/cli.json

These answers must not wait for torch or Lightning to import (the scripts import them inside `main`), so each
figure is a whole process started as a user starts it. The baseline measured in the same run is a bare
`python -c pass` of the same interpreter: what no script can go below.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("preprocess.py", "train.py", "infer.py", "evaluate.py", "serve.py")


def queries(script: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """name -> (arguments, extra environment) of each question asked of `script`."""
    return {
        "--help": ([script, "--help"], {}),
        "--cfg job": ([script, "subject=anna", "--cfg", "job"], {}),
        "completion": ([script, "-sc", "query=bash"], {"COMP_LINE": f"python {script} sub", "COMP_POINT": "0"}),
    }


def wall_seconds(args: list[str], env: dict[str, str], runs: int) -> float:
    """Median wall time of `python <args>` over `runs` processes; a failing command is an error."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                              env={**os.environ, **env})
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"`python {' '.join(args)}` failed ({done.returncode}): {done.stderr[-500:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="processes per figure (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    baseline = wall_seconds(["-c", "pass"], {}, args.runs)
    figures: dict[str, dict[str, float]] = {}
    print(f"{'script':<15}{'--help':>10}{'--cfg job':>12}{'completion':>12}   (s, median of {args.runs}; "
          f"bare interpreter {baseline:.2f} s)")
    for script in SCRIPTS:
        figures[script] = {name: wall_seconds(a, env, args.runs) for name, (a, env) in queries(script).items()}
        row = figures[script]
        print(f"{script:<15}{row['--help']:>10.2f}{row['--cfg job']:>12.2f}{row['completion']:>12.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"baseline_s": baseline, "scripts": figures}, indent=2))


if __name__ == "__main__":
    main()
