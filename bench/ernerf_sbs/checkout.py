"""What a checkout of ER-NeRF must hold, and what the machine that trains it must have (nvcc, a CUDA torch, the
packages its head stage imports once patched); and building its CUDA extensions before the clock starts."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from ernerf.errors import ErnerfError


CLONE = "git clone https://github.com/Fictionarry/ER-NeRF"
REQUIRED_FILES = ("main.py", "encoding.py", "nerf_triplane/network.py", "nerf_triplane/provider.py",
                  "nerf_triplane/utils.py", "nerf_triplane/renderer.py")
HEAD_EXTENSIONS = ("raymarching", "gridencoder", "shencoder")  # what the head stage imports (freqencoder: torso)
# module -> pip name: what the patched head stage imports at run time
REQUIRED_MODULES = {"torch_ema": "torch-ema", "pandas": "pandas", "cv2": "opencv-python", "scipy": "scipy",
                    "matplotlib": "matplotlib", "rich": "rich", "imageio": "imageio", "imageio_ffmpeg": "imageio-ffmpeg",
                    "tqdm": "tqdm", "packaging": "packaging", "ninja": "ninja", "numpy": "numpy"}
LPIPS_MODULES = {"lpips": "lpips", "torchvision": "torchvision"}

PROBE = """
import importlib.util, json, shutil, os, sys
import torch
from torch.utils.cpp_extension import CUDA_HOME
modules = json.loads(sys.argv[1])
nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
print(json.dumps({"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda": torch.cuda.is_available(),
                  "nvcc": nvcc if nvcc and os.path.exists(nvcc) else None,
                  "writer": any(importlib.util.find_spec(m) for m in ("tensorboardX", "tensorboard")),
                  "missing": [m for m in modules if importlib.util.find_spec(m) is None]}))
"""


def check_checkout(root: Path) -> None:
    """One-line error when `root` is not a whole checkout of Fictionarry/ER-NeRF."""
    if not root.is_dir():
        raise ErnerfError(f"no folder {root}: give the path of your ER-NeRF checkout ({CLONE}).")
    missing = [f for f in REQUIRED_FILES if not (root / f).is_file()]
    if len(missing) == len(REQUIRED_FILES):
        raise ErnerfError(f"{root} is not a checkout of Fictionarry/ER-NeRF (no main.py, no nerf_triplane/): give the "
                          f"folder that `{CLONE}` made.")
    if missing:
        raise ErnerfError(f"the ER-NeRF checkout {root} lacks {', '.join(missing)}: clone it whole ({CLONE}).")
    for ext in HEAD_EXTENSIONS:
        if not (root / ext / "backend.py").is_file() or not list((root / ext / "src").glob("*.cu")):
            raise ErnerfError(f"the ER-NeRF checkout {root} lacks {ext}/backend.py or its CUDA sources {ext}/src/*.cu: "
                              f"clone it whole ({CLONE}).")


def probe_environment(python: str, lpips: bool) -> dict:
    """What the interpreter that will run ER-NeRF has: torch and its CUDA, nvcc, the missing packages."""
    modules = [*REQUIRED_MODULES, *(LPIPS_MODULES if lpips else ())]
    proc = subprocess.run([python, "-c", PROBE, json.dumps(modules)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ErnerfError(f"{python} cannot import torch and torch.utils.cpp_extension "
                          f"({proc.stderr.strip().splitlines()[-1:]}): give --ernerf-python an interpreter with a CUDA "
                          "build of torch (and setuptools).")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_environment(python: str, lpips: bool) -> dict:
    """One-line error naming the fix when ER-NeRF cannot build or train with `python`; -> the probe's facts."""
    facts = probe_environment(python, lpips)
    if not facts["cuda"]:
        raise ErnerfError(f"{python}'s torch {facts['torch']} sees no CUDA device: ER-NeRF trains on a GPU only "
                          "(install a CUDA build of torch, run on the GPU machine).")
    if not facts["nvcc"]:
        raise ErnerfError(f"no nvcc (PATH, CUDA_HOME): ER-NeRF compiles its extensions with it; install the CUDA "
                          f"toolkit {facts['torch_cuda']} (torch's CUDA) and put its bin/ on PATH or set CUDA_HOME.")
    pip = {**REQUIRED_MODULES, **LPIPS_MODULES}
    if facts["missing"]:
        names = " ".join(pip[m] for m in facts["missing"])
        raise ErnerfError(f"ER-NeRF's head stage needs {', '.join(facts['missing'])} in {python}: pip install {names} "
                          "(offline: `pip download` them elsewhere, then pip install --no-index --find-links <dir>).")
    if not facts["writer"]:
        raise ErnerfError(f"ER-NeRF logs with tensorboardX or torch's SummaryWriter: pip install tensorboard in {python}.")
    return facts


def build_extensions(root: Path, python: str, log: Path) -> float:
    """Import (and so JIT-build with nvcc, cached by torch in ~/.cache/torch_extensions) the head stage's CUDA
    extensions, outside the training clock; -> seconds. A failed build is an error naming its log."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run([python, "-c", "import " + ", ".join(HEAD_EXTENSIONS)], cwd=root, stdout=out,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise ErnerfError(f"building ER-NeRF's CUDA extensions failed (exit {proc.returncode}): see {log} "
                          "(was `prepare` run on this checkout? nvcc matching torch's CUDA?).")
    return time.perf_counter() - start
