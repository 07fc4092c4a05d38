"""The layers: applications (ernerf/apps/) import the components; no component imports an application, and nothing
imports an entry script (train.py, infer.py, evaluate.py, preprocess.py)."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

APPS = "ernerf.apps"
COMPONENT_ROOTS = ("ernerf", "datamodules", "callbacks")  # everything in them but ernerf/apps/
ENTRY_SCRIPTS = ("train", "infer", "evaluate", "preprocess")


def module_name(path: Path) -> str:
    """`ernerf/fields/face.py` -> `ernerf.fields.face`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `source`: import statements (relative ones resolved against `module`, and
    `from a import b` also as `a.b`), and importlib.import_module / __import__ of a constant name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, name
            yield from ((node.lineno, f"{name}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def imports_of(name: str, modules: Iterable[tuple[int, str]]) -> list[int]:
    """Lines that import `name` or anything inside it."""
    return [line for line, module in modules if module == name or module.startswith(f"{name}.")]


def component_files() -> list[Path]:
    """Every module of the component packages: ernerf/ without ernerf/apps/, datamodules/, callbacks/."""
    files = [p for root in COMPONENT_ROOTS for p in sorted((REPO / root).rglob("*.py"))]
    return [p for p in files if not (module_name(p) == APPS or module_name(p).startswith(f"{APPS}."))]


def test_no_component_imports_an_application() -> None:
    files = component_files()
    assert REPO / "ernerf" / "fields" / "face.py" in files and REPO / "callbacks" / "checkpoint_facts.py" in files
    assert not any("apps" in p.relative_to(REPO).parts for p in files)
    offenders = [f"{p.relative_to(REPO)}:{line}" for p in files
                 for line in imports_of(APPS, imported(p.read_text(), module_name(p), p.name == "__init__.py"))]
    assert offenders == [], f"components importing {APPS} (the applications import the components, never back)"


@pytest.mark.parametrize("source, module", [
    ("import ernerf.apps.train", "ernerf.fields.face"),
    ("from ernerf.apps.inference import load_subject", "callbacks.ema"),
    ("from ernerf import apps", "ernerf.rendering.marcher"),
    ("from ..apps import demo", "ernerf.fields.face"),
    ("def f():\n    from .apps.runs import read_record", "ernerf.cli"),
    ("import importlib\nimportlib.import_module('ernerf.apps.demo')", "datamodules.subject"),
])
def test_the_scan_finds_an_application_import_in_any_form(source: str, module: str) -> None:
    assert imports_of(APPS, imported(source, module)) != []


def test_the_scan_leaves_other_imports_alone() -> None:
    source = "import ernerf.audio\nfrom ernerf import errors\nfrom .base import Field\nfrom ernerf.apps_util import x"
    assert imports_of(APPS, imported(source, "ernerf.fields.face")) == []


def test_nothing_imports_an_entry_script() -> None:
    roots = ("ernerf", "datamodules", "callbacks", "tests", "bench")
    files = [p for root in roots for p in (REPO / root).rglob("*.py")]
    offenders = []
    for p in files:
        modules = list(imported(p.read_text(), module_name(p), p.name == "__init__.py"))  # parsed once for all scripts
        offenders += [f"{p.relative_to(REPO)}:{line} ({script})" for script in ENTRY_SCRIPTS
                      for line in imports_of(script, modules)]
    assert offenders == [], "import ernerf.apps.<module> instead: the entry scripts only parse the command line"
