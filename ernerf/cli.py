"""What every entry point shares: a user error is one line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from ernerf.errors import ErnerfError, user_error_in
from ernerf.io.layout import check_subject_name

T = TypeVar("T")

# Hydra's own flags: they print or configure without running the job, so they need no subject.
HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion",
               "--version", "-p", "--package")


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Run `fn`; an ErnerfError prints `error: <message>` and exits with status 2 (work already saved stays)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # an ErnerfError, or one that a library (Hydra's instantiate) wrapped
            user_error = user_error_in(exc)
            if user_error is None:
                raise
            print(f"error: {user_error}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def override_value(arg: str) -> tuple[str, str] | None:
    """(key, value) of a `key=value` override (`+key`, `++key`, `~key` read as `key`); None for flags."""
    if arg.startswith("-") or "=" not in arg:
        return None
    key, _, value = arg.partition("=")
    return key.lstrip("+~"), value


def quote_non_ascii(arg: str) -> str:
    """`subject=Zoë` -> `subject='Zoë'`: Hydra's override grammar takes unquoted values in ASCII only."""
    parsed = override_value(arg)
    if parsed is None or parsed[1].isascii() or any(c in parsed[1] for c in "'\"[]{}(),\\"):
        return arg
    key = arg.partition("=")[0]
    return f"{key}='{parsed[1]}'"


def quote_free_text(arg: str, keys: Sequence[str]) -> str:
    """`text=Hello, it's me.` -> `text='Hello, it\\'s me.'` for each key of `keys`: the whole value is the user's text,
    while Hydra's override grammar reads commas, quotes, brackets and `${` in an unquoted value as syntax."""
    parsed = override_value(arg)
    if parsed is None or parsed[0] not in keys:
        return arg
    value = parsed[1]
    # a backslash before a quote, before `${` or at the end would escape it: doubled, it stays a backslash
    value = re.sub(r"(\\+)(?='|$|\$\{)", lambda m: m.group(1) * 2, value)
    value = value.replace("${", "\\${").replace("'", "\\'")
    return f"{arg.partition('=')[0]}='{value}'"


def check_command_line(argv: Sequence[str], script: str) -> list[str]:
    """The command line as Hydra should see it: a missing or unsafe `subject=` is refused before Hydra makes its
    run folder (which is named after the subject), and non-ASCII values are quoted."""
    argv = [quote_non_ascii(a) for a in argv]
    values = [v for key, v in filter(None, map(override_value, argv)) if key == "subject"]
    if not values and not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        raise ErnerfError(f"subject= is missing: name the subject, e.g. `python {script} subject=anna ...`.")
    for value in values:
        for name in value.split(",") if "(" not in value else [value]:  # a sweep over subjects: each one
            check_subject_name(name.strip().strip("'\""))
    return argv


def rename_keys(argv: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """`stage=lips` -> `stage_name=lips` for each `key: new key` of `renames` (a `+`, `++` or `~` is kept)."""
    out = []
    for arg in argv:
        parsed = override_value(arg)
        if parsed is None or parsed[0] not in renames:
            out.append(arg)
            continue
        prefix = arg[: len(arg) - len(arg.lstrip("+~"))]
        out.append(f"{prefix}{renames[parsed[0]]}={parsed[1]}")
    return out


# Packages torchmetrics imports at its own import when they are installed, for metrics this project never computes:
# `transformers` for BERTScore, InfoLM and CLIPScore (with the `hub` extra), `scipy` for `scipy.signal`, a
# back-compatibility patch of its audio metrics. Each is seconds of every start (docs/performance.md).
KEPT_OUT_OF_TORCHMETRICS = ("transformers", "scipy")


def keep_torchmetrics_import_lean() -> None:
    """Let torchmetrics import as if `transformers` and `scipy` were not installed (`KEPT_OUT_OF_TORCHMETRICS`).

    Lightning imports torchmetrics, so every training, inference or evaluation process would first wait for those
    imports. torchmetrics asks `lightning_utilities` whether they are there (its `RequirementCache` and
    `package_available`); from here on that answer is "no" (nothing else in these processes asks it), while
    `import transformers` and `import scipy` keep working for the code that needs them (the audio extractor,
    preprocessing). Entry points call this before their first Lightning import, so a library user's own process is
    left as it is."""
    try:
        from lightning_utilities.core import imports
    except ImportError:
        return
    check = getattr(imports.RequirementCache, "_check_available", None)
    if check is None or getattr(check, "keeps_torchmetrics_lean", False):
        return  # another lightning_utilities (nothing to patch), or already patched
    available = imports.package_available

    def check_available(self: imports.RequirementCache) -> None:
        name = re.split(r"[<>=!~ \[;]", self.requirement or self.module or "", maxsplit=1)[0]
        if not hasattr(self, "available") and name in KEPT_OUT_OF_TORCHMETRICS:
            self.available, self.message = False, f"{name} is not imported by torchmetrics here (ernerf.cli)"
            return
        check(self)

    def package_available(package_name: str) -> bool:
        return package_name not in KEPT_OUT_OF_TORCHMETRICS and available(package_name)

    check_available.keeps_torchmetrics_lean = True
    check_available.unpatched, package_available.unpatched = check, available  # what a test restores
    imports.RequirementCache._check_available, imports.package_available = check_available, package_available


def share_hydra_config_store() -> None:
    """Let Hydra's copies of its config repository share the ConfigStore instead of copying it.

    Hydra deep-copies its config repository, and with it the ConfigStore that holds the structured configs of the
    installed plugins (the Optuna sweeper, the submitit launcher), each time it lists a config group's options: twice
    per group for `--help`, which lists every group, so most of `--help`'s time went to copying that store. The
    store is the process's registry, which no composition changes; later Hydra releases read the live store in the
    copies as well (facebookresearch/hydra#2928)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.__deepcopy__ = lambda self, memo: self


# What a Ctrl-C leaves, and how to go on, by entry script (train.py's run is stopped by Lightning, which says so).
AFTER_CTRL_C = {
    "preprocess.py": "the steps that finished are kept: the same command goes on from the first one that did not",
    "train.py": "the same command with ckpt_path=last goes on from the last checkpoint saved, if there is one",
    "infer.py": "run the command again to start over",
    "evaluate.py": "run the command again to start over",
    "serve.py": "the server is stopped",
}


def run_entry_point(main: Callable[[], object], script: str, plain_keys: Mapping[str, str] | None = None,
                    free_text: Sequence[str] = ()) -> None:
    """Check the command line, then run a Hydra `main`.

    `plain_keys` maps a command-line key that names a config group of conf/ to the plain key the script's config
    takes it as: Hydra reads `stage=lips` as a choice in conf/stage/ (the training stage, with its loss, sampler and
    callbacks) wherever that folder exists, while infer.py and evaluate.py only need the name (`stage_name`).
    The values of the `free_text` keys are taken whole, as written (`quote_free_text`).
    """
    argv = [quote_free_text(arg, free_text) for arg in sys.argv[1:]]
    argv = exit_on_user_error(check_command_line)(argv, script)
    sys.argv[1:] = rename_keys(argv, plain_keys or {})
    share_hydra_config_store()
    if not any(a.split("=")[0] in HYDRA_FLAGS for a in argv):  # a job runs (--help and the like import no torch)
        keep_torchmetrics_import_lean()
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line that says what is kept, not a traceback (130: killed by SIGINT)
        print(f"{script}: stopped (Ctrl-C); {AFTER_CTRL_C.get(script, 'run the command again')}.", file=sys.stderr)
        raise SystemExit(130) from None
