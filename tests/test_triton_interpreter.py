"""The Triton kernels' CPU tests, under Triton's interpreter, in a process of their own.

The interpreter must be chosen before triton is first imported, which a test module inside the whole suite cannot
guarantee; so the default suite runs those modules in a subprocess with TRITON_INTERPRET=1 and checks that their
interpreter tests ran (not skipped) and passed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO

MODULES = ("tests/encoders/test_triton_hashgrid.py", "tests/encoders/test_triton_sh.py",
           "tests/rendering/test_triton_march.py")


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the modules' GPU tests run the real kernels")
def test_triton_kernels_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *MODULES],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 15, summary  # 10 hash-grid, 4 SH, 1 marching interpreter tests; fewer: some were skipped
