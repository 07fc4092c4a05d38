"""Every command the README and docs/ show composes: a renamed or removed config key fails here, not for a user."""

from __future__ import annotations

import re
import shlex

import pytest
from omegaconf import OmegaConf

from ernerf.cli import quote_free_text, rename_keys
from tests.conftest import REPO, compose

SCRIPTS = {"preprocess.py": "preprocess", "train.py": "train", "infer.py": "infer", "evaluate.py": "evaluate",
           "serve.py": "serve"}
COMMAND = re.compile(r"^\s*python (preprocess|train|infer|evaluate|serve)\.py (.*)$")


def documented_commands() -> list[tuple[str, int, str, list[str]]]:
    """(file, line, script, overrides) of each one-line command in the README's and docs' code blocks."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        in_code = False
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            match = COMMAND.match(line) if in_code else None
            if not match or line.rstrip().endswith("\\") or "$" in line:
                continue  # continued lines and shell variables are not one command
            words = shlex.split(match.group(2).split("  #")[0].split(" # ")[0])
            if "-m" in words or "--multirun" in words:
                continue  # a sweep: its values are lists, composed job by job (tests/test_multirun.py runs one)
            overrides = [w[1:-1] if w.startswith("[") and w.endswith("]") else w for w in words]  # [optional=value]
            overrides = [re.sub(r"<[^>]+>", "anna", w) for w in overrides]
            found.append((str(doc.relative_to(REPO)), number, f"{match.group(1)}.py", overrides))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_script() -> None:
    assert {script for _, _, script, _ in COMMANDS} == set(SCRIPTS)
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize("doc, line, script, overrides", COMMANDS, ids=[f"{d}:{n}" for d, n, _, _ in COMMANDS])
def test_documented_command_composes(doc: str, line: int, script: str, overrides: list[str]) -> None:
    overrides = [quote_free_text(o, ("text",)) for o in overrides] if script == "infer.py" else overrides
    if script in ("infer.py", "evaluate.py", "serve.py"):
        overrides = rename_keys(overrides, {"stage": "stage_name"})  # as the script's entry point does
    cfg = compose(SCRIPTS[script], overrides)
    assert cfg.subject == next(w.split("=", 1)[1] for w in overrides if w.startswith("subject="))
    OmegaConf.to_container(cfg, resolve=False)  # every node is readable
