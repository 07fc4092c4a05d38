"""A sweep's command line, read before Hydra starts (so only Hydra's parser is imported: `--help` stays fast)."""

from __future__ import annotations

from collections.abc import Iterable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException

SUBJECTS_SWEEP_DIR = "hydra.sweep.dir=${paths.runs_root}/sweeps/${sweep}"


def parse_overrides(args: Iterable[str]) -> list[Override]:
    """The `key=value` arguments among `args` as Hydra's override parser reads them; flags are left out, and so is
    what does not parse (a job's argv under a launcher other than the basic one is the launcher's own)."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except OverrideParseException:
            continue
    return parsed


def swept_keys(args: Iterable[str]) -> set[str]:
    """Keys the arguments give several values (`a=1,2`, `range(..)`, `choice(..)`, `glob(..)`, `interval(..)`)."""
    return {o.key_or_group for o in parse_overrides(args) if o.is_sweep_override()}


def sweep_folder_over_subjects(argv: list[str]) -> list[str]:
    """The command line, with a sweep folder for a sweep over subjects: `hydra.sweep.dir` names the subject's folder,
    which such a sweep does not have, so unless given it lives in `<runs_root>/sweeps/<sweep>/` (its jobs' folders
    named `<stage>-subject=<name>...`)."""
    given = parse_overrides(argv)
    if "subject" not in {o.key_or_group for o in given if o.is_sweep_override()}:
        return argv
    if any(o.key_or_group == "hydra.sweep.dir" for o in given):
        return argv
    return [*argv, SUBJECTS_SWEEP_DIR]
