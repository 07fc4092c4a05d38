"""Redo finished steps without putting them at risk: work on a linked copy, move the results in at the end.

A run that redoes a finished step works in `<subject>/.staging/<name>/`, a copy of the subject made of
hard links (no extra space for what it does not rewrite). Steps replace files, never write into them
(`ernerf.io.atomic`), so the originals behind the links stay as they were. Once every step succeeded
the folder is renamed `.commit` and its new entries are moved into the subject. A run that fails or
is killed before that rename leaves the subject exactly as it was; one killed after it is completed
by the next run (`recover`), and until then `check_dataset` refuses the subject.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from ernerf.io.atomic import TMP_NAME, remove, write_text
from ernerf.io.layout import SubjectLayout

NOT_STAGED = (".lock", ".logs", ".staging", ".commit")  # the lock, Hydra's logs, the staging itself
LINKED = "linked.json"  # beside the staged copy: the entries it started with
PLAN = "plan.json"  # beside the staged copy: the entries to move in and to delete


def stage(layout: SubjectLayout) -> SubjectLayout:
    """A fresh staging copy of the subject folder (hard links where the file system has them); its layout."""
    discard(layout)
    staged = SubjectLayout(layout.staging_dir / layout.name)  # same name: messages and reports still say it
    staged.root.mkdir(parents=True)
    linked = [e.name for e in os.scandir(layout.root) if e.name not in NOT_STAGED and not TMP_NAME.match(e.name)]
    for name in linked:
        _link_tree(layout.root / name, staged.root / name)
    write_text(layout.staging_dir / LINKED, json.dumps(sorted(linked)))
    return staged


def commit(layout: SubjectLayout) -> None:
    """Move what the staged run changed into the subject folder, then drop the staging folder."""
    staged = layout.staging_dir / layout.name
    linked = json.loads((layout.staging_dir / LINKED).read_text())
    present = sorted(os.listdir(staged), key=lambda n: n == layout.steps_dir.name)  # markers move in last
    plan = {"replace": [n for n in present if not _same(staged / n, layout.root / n)],
            "delete": [n for n in linked if not os.path.lexists(staged / n)]}
    write_text(layout.staging_dir / PLAN, json.dumps(plan))
    os.replace(layout.staging_dir, layout.commit_dir)  # from here on the run counts as done
    finish_commit(layout)


def finish_commit(layout: SubjectLayout) -> None:
    """Carry out the commit plan in `.commit` (again after a kill: each move is done once)."""
    plan = json.loads((layout.commit_dir / PLAN).read_text())
    staged, trash = layout.commit_dir / layout.name, layout.commit_dir / ".replaced"
    trash.mkdir(exist_ok=True)
    for name in plan["replace"]:
        _move_in(staged / name, layout.root / name, trash / name)
    for name in plan["delete"]:
        if os.path.lexists(layout.root / name):
            remove(layout.root / name)
    shutil.rmtree(layout.commit_dir)


def discard(layout: SubjectLayout) -> None:
    """Drop a staging folder (a failed or killed run's); the subject folder is untouched."""
    if layout.staging_dir.exists():
        shutil.rmtree(layout.staging_dir)


def recover(layout: SubjectLayout) -> None:
    """Finish the commit a killed run had started, and drop the staging folder a killed run left."""
    if layout.commit_dir.exists():
        finish_commit(layout)
    discard(layout)


def _link_tree(src: Path, dst: Path) -> None:
    """Mirror `src` at `dst`: folders made anew, files hard-linked (copied where links are not possible)."""
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for entry in os.scandir(src):
            if not TMP_NAME.match(entry.name):
                _link_tree(src / entry.name, dst / entry.name)
    else:
        try:
            os.link(src, dst)
        except OSError:  # a file system without hard links (FAT, some network mounts)
            shutil.copy2(src, dst)


def _same(staged: Path, original: Path) -> bool:
    """Whether a staged entry still is the original: the same files (inodes) all the way down."""
    try:
        a, b = staged.lstat(), original.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(a.st_mode) and stat.S_ISDIR(b.st_mode):
        names = sorted(os.listdir(staged))
        return names == sorted(os.listdir(original)) and all(_same(staged / n, original / n) for n in names)
    if stat.S_ISLNK(a.st_mode) or stat.S_ISLNK(b.st_mode):
        return stat.S_ISLNK(a.st_mode) and stat.S_ISLNK(b.st_mode) and os.readlink(staged) == os.readlink(original)
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _move_in(src: Path, dst: Path, trash: Path) -> None:
    """Put staged `src` at `dst`; a folder (or a change of kind) first moves the old entry aside."""
    if not os.path.lexists(src):
        return  # moved in by an earlier, interrupted commit
    if os.path.lexists(dst) and (src.is_dir() or dst.is_dir()):
        if os.path.lexists(trash):
            remove(trash)
        os.replace(dst, trash)
    os.replace(src, dst)
