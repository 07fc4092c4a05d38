"""The live processes under a process (Linux /proc): what the benchmarks add up for a command's CPU and memory."""

from __future__ import annotations

from pathlib import Path


def descendants(root: int) -> list[int]:
    """Live descendant process ids of `root`."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out
