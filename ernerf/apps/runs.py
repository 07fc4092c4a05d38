"""A stage's run folder: what a new training run may do with it, its finished record, and what it started from.

A finished or interrupted run is never written over silently: continuing it takes `ckpt_path=last`, replacing it
takes `overwrite=true`, which moves the old run aside (`<runs_root>/<subject>/.replaced/`) rather than deleting it.

No torch or Lightning at the top, and none to read a checkpoint's step (`peek_checkpoint`): train.py checks the run
folder (`check_run_folder`) before it imports them (ernerf/apps/preflight.py), so a refused run answers in the time
Hydra takes to compose its config."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import shutil
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ernerf.errors import ErnerfError
from ernerf.io.atomic import write_text
from ernerf.io.lock import exclusive_lock

FINISHED = "finished.json"  # written in a stage's run folder once its last checkpoint is saved
REPLACED = ".replaced"  # beside the stage folders: runs moved aside by overwrite=true
KEEP = {".hydra", ".lock"}  # what overwrite=true leaves in place: this run's own Hydra folder and its lock
# A final val/psnr this far under the best kept checkpoint's is a run that fell, not the noise between evaluations
# (a few tenths of a dB along one run): what follows the run starts from that checkpoint instead (docs/runs.md).
FALL_DB = 1.0


def launched_rank() -> bool:
    """Whether this process is a rank other than 0 of a multi-process run: Lightning's DDP launcher starts train.py
    again for each rank once rank 0 is training (SLURM starts every rank's task). Rank 0 alone checks the run
    folder, holds its lock and writes its records; the others train inside its hold."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only  # here: see the module's docstring

    return getattr(rank_zero_only, "rank", 0) != 0


@contextlib.contextmanager
def run_folder_lock(run_dir: Path | str) -> Iterator[None]:
    """Hold the run folder for this run: no other run may train in it meanwhile (rank 0 holds it for every rank)."""
    with contextlib.nullcontext() if launched_rank() else exclusive_lock(run_dir, f"run folder {run_dir}"):
        yield


def last_checkpoint(run_dir: Path | str) -> Path:
    """Where a run's final (or latest) checkpoint lives."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def offered_checkpoint(run_dir: Path | str) -> Path:
    """The checkpoint a run folder offers to what follows it (a later stage, infer.py, evaluate.py): its last one,
    or its best kept one when the run fell (`RunRecord.fall`) and that file is still there. Resuming reads the last."""
    record = read_record(run_dir)
    if record is not None and record.fall() is not None and Path(record.best["path"]).is_file():
        return Path(record.best["path"])
    return last_checkpoint(run_dir)


def subject_eval_folder(runs_root: Path | str, subject: str) -> Path:
    """Where `evaluate.py subject=<name>` writes when given neither `run=` nor `output=`."""
    return Path(runs_root) / subject / "eval"


def file_digest(path: Path | str) -> str:
    """SHA-1 of a file's bytes: what a later stage records of the checkpoint it started from."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


@dataclass(frozen=True)
class RunRecord:
    """What `finished.json` says of a finished stage: its final step and figures, and the checkpoint it started from."""

    step: int | None
    metrics: dict[str, float]
    init_from: dict[str, str] | None  # {"path", "sha1"} of the previous stage's checkpoint, when it started from one
    best: dict[str, Any] | None = None  # the checkpoint kept as the best validated: {"path", "step", "monitor", "value"}
    offers_best: bool = True  # whether a fall offers `best` instead of the last (the stage's `offer_best_if_fell`)

    def summary(self) -> str:
        """`step N, val/psnr X dB` (what is known of it)."""
        parts = [f"step {self.step}"] if self.step is not None else []
        if "val/psnr" in self.metrics:
            parts.append(f"val/psnr {self.metrics['val/psnr']:.2f} dB")
        return ", ".join(parts) or "no figures recorded"

    def best_psnr(self) -> float | None:
        """The val/psnr of the best kept checkpoint; None when there is none or another figure ranked it."""
        best = self.best or {}
        if best.get("monitor") != "val/psnr" or best.get("value") is None:
            return None
        return float(best["value"])

    def drop(self) -> float | None:
        """How many dB the final val/psnr lies under the best kept checkpoint's (`best_psnr`); None if either is
        unknown."""
        kept = self.best_psnr()
        if kept is None or "val/psnr" not in self.metrics:
            return None
        return kept - float(self.metrics["val/psnr"])

    def fall(self) -> float | None:
        """`drop` when it is FALL_DB or more and the stage offers its best checkpoint then (what follows the run
        starts from that one); None otherwise."""
        drop = self.drop()
        return drop if self.offers_best and drop is not None and drop >= FALL_DB else None

    def stale_init(self) -> str | None:
        """Why the checkpoint this stage started from is not the one there now (None: unchanged, or none)."""
        if not self.init_from:
            return None
        path = Path(self.init_from["path"])
        if not path.is_file():
            return f"the checkpoint it started from, {path}, is gone"
        if file_digest(path) != self.init_from["sha1"]:
            return f"the checkpoint it started from, {path}, has changed since (retrained?)"
        return None


def read_record(run_dir: Path | str) -> RunRecord | None:
    """The finished record of a run folder; None when the run did not finish (or never ran)."""
    path = Path(run_dir) / FINISHED
    if not path.is_file() or not last_checkpoint(run_dir).is_file():
        return None
    data = json.loads(path.read_text())
    if "metrics" not in data:  # the first layout held the metrics alone
        return RunRecord(None, data, None)
    return RunRecord(data.get("step"), data["metrics"], data.get("init_from"), data.get("best"),
                     data.get("offers_best", True))


def mark_finished(run_dir: Path | str, step: int, metrics: dict[str, float], init_from: str | None,
                  best: dict[str, Any] | None = None, offers_best: bool = True) -> None:
    """Record that a stage ran to its end (what `stage=all` and later reruns check); rank 0 writes it. `best`: the
    checkpoint the run kept as its best validated one (`RunRecord.best`); `offers_best`: whether what follows the run
    takes that one if the run fell (`RunRecord.fall`)."""
    if launched_rank():
        return
    start = {"path": str(init_from), "sha1": file_digest(init_from)} if init_from else None
    record = {"step": step, "metrics": metrics, "init_from": start, "best": best, "offers_best": offers_best,
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text(Path(run_dir) / FINISHED, json.dumps(record, indent=1))


def peek_checkpoint(path: Path | str) -> dict[str, Any] | None:
    """A Lightning checkpoint's top-level entries of plain Python values (its step, the facts callbacks/ records);
    None for a file cut short or not a checkpoint (the caller says so).

    Read from the pickle inside torch's zip format without building its tensors and objects (`plain_entries`), so
    that a refusal that names a checkpoint's step or stage needs no torch; any other file goes through torch.load."""
    plain = plain_entries(path)
    if plain is not None:
        return plain
    import torch  # here, not at the top: see the module's docstring

    try:
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (OSError, RuntimeError, EOFError, AttributeError, KeyError, TypeError, ValueError, pickle.UnpicklingError):
        return None
    return saved if isinstance(saved, dict) else None


class _Opaque:
    """What a checkpoint pickles besides plain values (tensors, Lightning's and OmegaConf's objects): read past,
    never built."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Opaque:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _PlainUnpickler(pickle.Unpickler):
    """Builds the pickle's plain values; every class or function it names is `_Opaque`, every tensor storage None."""

    def find_class(self, module: str, name: str) -> Any:
        return _Opaque

    def persistent_load(self, pid: Any) -> None:
        return None


def _plain(value: Any) -> Any:
    """`value` if it holds nothing opaque; raises TypeError otherwise."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    raise TypeError(f"not a plain value: {type(value).__name__}")


def plain_entries(path: Path | str) -> dict[str, Any] | None:
    """The top-level entries of plain values of a checkpoint in torch's zip format (`<archive>/data.pkl`); None for
    a file that is not one, or a pickle this reader cannot follow (torch.load then reads it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/data.pkl"))
            saved = _PlainUnpickler(io.BytesIO(archive.read(name))).load()
    except Exception:  # not torch's zip format, or a pickle this reader cannot follow: torch.load decides
        return None
    if not isinstance(saved, dict):
        return None
    entries = {}
    for key, value in saved.items():
        with contextlib.suppress(TypeError):
            entries[key] = _plain(value)
    return entries


def checkpoint_step(path: Path) -> int | None:
    """The global step a Lightning checkpoint was saved at."""
    try:
        return int((peek_checkpoint(path) or {})["global_step"])
    except (KeyError, TypeError, ValueError):
        return None


def trained_files(run_dir: Path) -> list[Path]:
    """What earlier training left in a run folder (checkpoints, logs, images): all but this run's Hydra folder."""
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.name not in KEEP)


def saved_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints an earlier run saved in the folder."""
    return sorted((run_dir / "checkpoints").glob("*.ckpt"))


def move_aside(run_dir: Path) -> Path:
    """Move an earlier run's files to `<runs_root>/<subject>/.replaced/<stage>-<time>/`; returns that folder."""
    target = run_dir.parent / REPLACED / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    while target.exists():
        target = target.with_name(target.name + "+")
    target.mkdir(parents=True)
    for path in trained_files(run_dir):
        shutil.move(str(path), str(target / path.name))
    return target


def command(subject: str, stage: str, *extra: str) -> str:
    """The train.py command line a message suggests."""
    return " ".join(["python train.py", f"subject={subject}", f"stage={stage}", *extra])


def prepare_run_folder(run_dir: Path | str, subject: str, stage: str, ckpt_path: str | None, max_steps: int,
                       overwrite: bool, rerun: Sequence[str] = ()) -> str | None:
    """Check what this run would do to its folder; returns the checkpoint to resume from (None: a fresh start).

    Raises an ErnerfError instead of starting over a finished or interrupted run, unless `overwrite`, which moves
    it aside first; the commands its message suggests carry `rerun` (a sweep job's `-m sweep=<name> <its values>`).
    The other ranks of a multi-process run find the folder as rank 0 left it before they started, and only resume
    from the same checkpoint."""
    run_dir = Path(run_dir)
    if launched_rank():
        last = last_checkpoint(run_dir)
        return (str(last) if last.is_file() else None) if ckpt_path == "last" else ckpt_path
    check_run_folder(run_dir, subject, stage, ckpt_path, overwrite, rerun)
    if ckpt_path == "last":
        return resume_last(run_dir, subject, stage, max_steps, rerun)
    if trained_files(run_dir) and not resuming_here(run_dir, ckpt_path):
        moved = move_aside(run_dir)  # overwrite=true, or logs of a run that saved no checkpoint
        print(f"the previous {stage} run's files were moved to {moved}", flush=True)
    return ckpt_path


def resuming_here(run_dir: Path, ckpt_path: str | None) -> bool:
    """Whether `ckpt_path` is a checkpoint inside the run folder itself."""
    return bool(ckpt_path) and run_dir.resolve() in Path(ckpt_path).resolve().parents


def check_run_folder(run_dir: Path | str, subject: str, stage: str, ckpt_path: str | None, overwrite: bool,
                     rerun: Sequence[str] = ()) -> None:
    """The refusals of `prepare_run_folder` that need neither the run's step budget nor a change to the folder:
    options that exclude each other, a missing `ckpt_path`, and a fresh start over an earlier run's checkpoints
    (rank 0; train.py makes them again before it imports Lightning, ernerf/apps/preflight.py)."""
    run_dir = Path(run_dir)
    if ckpt_path == "last":
        if overwrite:
            raise ErnerfError("overwrite=true starts the stage again from scratch and ckpt_path=last continues it: "
                              "give one of them.")
        return  # whether it already reached its steps: resume_last, once the budget is planned
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ErnerfError(f"ckpt_path={ckpt_path} does not exist: give a .ckpt file, or ckpt_path=last to resume "
                          f"{last_checkpoint(run_dir)}.")
    here = resuming_here(run_dir, ckpt_path)
    if here and overwrite:
        raise ErnerfError(f"ckpt_path={ckpt_path} lies in the run folder that overwrite=true would move aside: "
                          "give one of them.")
    if not here and not overwrite and trained_files(run_dir) and saved_checkpoints(run_dir):
        raise ErnerfError(refusal(run_dir, subject, stage, rerun))


def resume_last(run_dir: Path, subject: str, stage: str, max_steps: int, rerun: Sequence[str] = ()) -> str | None:
    """`ckpt_path=last`: the run's last.ckpt, unless it already reached `max_steps` (then there is nothing to do)."""
    last = last_checkpoint(run_dir)
    if not last.is_file():
        saved = saved_checkpoints(run_dir)
        if saved:
            raise ErnerfError(f"{run_dir} has no checkpoints/last.ckpt; resume from its newest checkpoint with "
                              f"`{command(subject, stage, *rerun, f'ckpt_path={saved[-1]}')}`.")
        if trained_files(run_dir):
            print(f"no {last} yet: starting from scratch; the earlier files were moved to {move_aside(run_dir)}")
        return None
    step = checkpoint_step(last)
    if step is None:
        raise ErnerfError(f"{last} is not a readable checkpoint (a copy cut short?): start the stage again with "
                          f"`{command(subject, stage, *rerun, 'overwrite=true')}` (the old files are kept aside).")
    record = read_record(run_dir)
    if record is not None and max_steps <= step:
        raise ErnerfError(f"{run_dir} already finished ({record.summary()}): to train it further give "
                          f"more steps, e.g. "
                          f"`{command(subject, stage, *rerun, 'ckpt_path=last', f'trainer.max_steps={2 * step}')}`.")
    return str(last)


def refusal(run_dir: Path, subject: str, stage: str, rerun: Sequence[str] = ()) -> str:
    """The message that stops a fresh run from writing over an earlier one, with the two ways on."""
    record = read_record(run_dir)
    step = checkpoint_step(last_checkpoint(run_dir)) if last_checkpoint(run_dir).is_file() else None
    if record is not None:
        what = f"{run_dir} holds a finished {stage} stage ({record.summary()})"
        further = command(subject, stage, *rerun, "ckpt_path=last", f"trainer.max_steps={2 * (step or 1)}")
        more = f"to train it further: `{further}`"
    elif step is not None:
        what = f"{run_dir} holds an interrupted {stage} run (last checkpoint at step {step})"
        more = f"to resume it: `{command(subject, stage, *rerun, 'ckpt_path=last')}`"
    else:
        what = f"{run_dir} holds checkpoints of an earlier {stage} run but no last.ckpt"
        more = "to resume from one: ckpt_path=<its path>"
    return (f"{what}; {more}; to train it again from scratch: add overwrite=true "
            f"(the old run is moved to {run_dir.parent / REPLACED}/).")


def validate_max_steps(max_steps: Any) -> None:
    """trainer.max_steps: -1 (the stage's budget for this subject) or a positive number of steps."""
    if max_steps is None or max_steps == -1:
        return
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
        raise ErnerfError(f"trainer.max_steps={max_steps} is not a number of steps: give a positive number "
                          "(e.g. trainer.max_steps=20000), or leave it out for the stage's budget.")



def stale_warning(run_dir: Path | str, subject: str) -> str | None:
    """A warning when a finished stage was trained from an earlier stage's checkpoint that has changed since."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    stale = record.stale_init() if record is not None else None
    if stale is None:
        return None
    return (f"stage {run_dir.name} is out of date: {stale}; train it again with "
            f"`{command(subject, run_dir.name, 'overwrite=true')}`.")

