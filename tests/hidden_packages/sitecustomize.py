"""On PYTHONPATH, hides the packages named in $ERNERF_HIDE_PACKAGES (comma-separated module names) as if uninstalled.

Python's path finder is swapped for one blind to them: their modules (`import av` raises ModuleNotFoundError,
importlib.util.find_spec returns None) and their distributions (importlib.metadata raises PackageNotFoundError,
so a RequirementCache("librosa") is False, as on a machine without librosa). Used by tests/test_infer_minimal_deps.py.
"""

import os
import re
import sys
from importlib.machinery import PathFinder

HIDDEN = {name.strip() for name in os.environ.get("ERNERF_HIDE_PACKAGES", "").split(",") if name.strip()}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name.lower())  # distribution "imageio-ffmpeg" is module "imageio_ffmpeg"


class PathFinderWithout(PathFinder):
    """The standard path finder, blind to the packages of HIDDEN."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname.split(".")[0] in HIDDEN:
            return None
        return PathFinder.find_spec(fullname, path, target)

    @classmethod
    def find_distributions(cls, *args, **kwargs):
        for dist in PathFinder.find_distributions(*args, **kwargs):
            if _key(dist.metadata["Name"] or "") not in HIDDEN:
                yield dist


if HIDDEN:
    sys.meta_path[sys.meta_path.index(PathFinder)] = PathFinderWithout
