"""The smallest edits that let ER-NeRF's head stage train offline on a current torch, as data, and the engine that
applies them to a checkout: anchored text replacements that fail loudly when an anchor is missing, keep each
original beside its file (`<file>.orig`), record what they did, do nothing twice and can be undone.

The anchors were checked against Fictionarry/ER-NeRF's main.py (commit e30558c), nerf_triplane/utils.py (e30558c),
provider.py (ba7e0f8) and network.py (068d0aa); the extension build files and renderer.py against public copies of
them (the stored index of the upstream repository lacks those files), so a checkout that differs fails there with a
message naming the rule, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from ernerf.errors import ErnerfError

RECORD = ".ernerf_sbs_patches.json"
EXTENSIONS = ("raymarching", "gridencoder", "freqencoder", "shencoder")
MARK = "# ernerf_side_by_side:"


@dataclass(frozen=True)
class Rule:
    """Replace `old` by `new` in each of `paths`: exactly `count` occurrences must be there (None: one or more, all
    replaced)."""

    name: str
    paths: tuple[str, ...]
    old: str
    new: str
    why: str
    count: int | None = 1


def guarded_import(modules: Sequence[str], why: str) -> str:
    """Module-level imports that leave None behind when a package is missing (only other modes use them)."""
    body = "".join(f"    import {m}\n" for m in modules)
    return f"\ntry:  {MARK} {why}\n{body}except ImportError:\n    {' = '.join(modules)} = None\n"


RULES: tuple[Rule, ...] = (
    Rule("cxx17", tuple(f"{ext}/{f}" for ext in EXTENSIONS for f in ("backend.py", "setup.py")),
         "'-std=c++14'", "'-std=c++17'", count=None,
         why="torch >= 2.1's headers need C++17; the extensions' build flags force C++14, so nvcc stops with "
             "'C++17 or later compatible compiler is required to use PyTorch'"),
    Rule("adamw-float-beta", ("main.py",), "betas=(0, 0.99)", "betas=(0.0, 0.99)",
         why="current torch's AdamW rejects an integer beta1 ('betas must be either both floats or both Tensors')"),
    Rule("audio-width", ("nerf_triplane/network.py",),
         "        else:\n            self.audio_in_dim = 32\n",
         f"        elif self.opt.asr_model.isdigit():  {MARK} --asr_model <C>: C-wide features (aud.npy)\n"
         "            self.audio_in_dim = int(self.opt.asr_model)\n"
         "        else:\n            self.audio_in_dim = 32\n",
         why="the audio network's input width comes from the ASR model's name (29, 44, 1024 or 32); this project's "
             "features are C wide (log-mel: 80). --asr_model 80 then reads aud.npy (provider.py's default file)"),
    Rule("eval-interval", ("main.py",),
         "eval_interval = max(1, int(5000 / len(train_loader)))",
         "eval_interval = max(1, int(int(os.environ.get('ERNERF_SBS_EVAL_STEPS', 5000)) / len(train_loader)))  "
         f"{MARK} evaluation schedule",
         why="instrumentation: the side-by-side scores both codes at the same steps; ER-NeRF evaluates every "
             "int(5000 / frames) epochs, which stays the default when ERNERF_SBS_EVAL_STEPS is unset"),
    Rule("lpips-meter-optional", ("main.py",),
         "\n        metrics = [PSNRMeter(), LPIPSMeter(device=device)]\n",
         "\n        metrics = [PSNRMeter()] + ([LPIPSMeter(device=device)] if os.environ.get('ERNERF_SBS_LPIPS') == '1' "
         f"else [])  {MARK} LPIPS needs AlexNet's weights on disk\n",
         why="offline: the training run's LPIPS meter builds torchvision's AlexNet with pretrained weights, downloaded "
             "on first use; the script turns it on (ERNERF_SBS_LPIPS=1, TORCH_HOME holding the file) only when "
             "--lpips-weights gives the file"),
    Rule("lpips-loss-when-used", ("nerf_triplane/utils.py",),
         "if self.opt.patch_size > 1 or self.opt.finetune_lips or True:",
         "if self.opt.patch_size > 1 or self.opt.finetune_lips:",
         why="offline: the Trainer builds the LPIPS loss network (the same AlexNet download) even when no loss uses it "
             "('or True'); only the patch and lips losses do, never the head stage"),
    Rule("lpips-import-optional", ("nerf_triplane/utils.py",), "\nimport lpips\n",
         guarded_import(["lpips"], "LPIPS only (it imports torchvision)"),
         why="lpips imports torchvision, which must match the installed torch exactly; the head stage trains without"),
    Rule("tensorboardx-optional", ("nerf_triplane/utils.py",), "\nimport tensorboardX\n",
         f"\ntry:  {MARK} torch's own SummaryWriter when tensorboardX is missing\n    import tensorboardX\n"
         "except ImportError:\n    from torch.utils import tensorboard as tensorboardX\n",
         why="tensorboardX is one more package to bring to an offline machine; torch ships the same SummaryWriter "
             "(it needs the tensorboard package, which this project installs)"),
    Rule("mesh-imports-optional", ("nerf_triplane/utils.py",), "\nimport trimesh\nimport mcubes\n",
         guarded_import(["trimesh", "mcubes"], "mesh export only (save_mesh)"),
         why="trimesh and PyMCubes only export meshes and show poses (save_mesh, visualize_poses), never in training"),
    Rule("trimesh-optional", ("nerf_triplane/provider.py", "nerf_triplane/renderer.py"), "\nimport trimesh\n",
         guarded_import(["trimesh"], "pose and point-cloud plots only"),
         why="as mesh-imports-optional: used by debugging plots only (visualize_poses, plot_pointcloud)"),
)


def fingerprint(rules: Sequence[Rule]) -> str:
    """A hash of the rules' content: a record made by other rules is redone from the originals."""
    return hashlib.sha256(json.dumps([asdict(r) for r in rules], sort_keys=True).encode()).hexdigest()[:16]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def patch_text(text: str, rule: Rule, path: str) -> str:
    """`text` with the rule applied, or an ErnerfError naming the file, the rule and what was found instead."""
    found = text.count(rule.old)
    if found == 0 or (rule.count is not None and found != rule.count):
        expected = "at least 1" if rule.count is None else str(rule.count)
        hint = " (its replacement is there: edited by hand?)" if rule.new in text else ""
        raise ErnerfError(f"{path}: patch '{rule.name}' expected {expected} of its anchor {rule.old.strip()!r}, found "
                          f"{found}{hint}: this checkout differs from the ER-NeRF version the rules were written for.")
    return text.replace(rule.old, rule.new)


def unix_lines(text: str) -> tuple[str, str]:
    """(`text` with "\\n" line ends, the file's own line end): ER-NeRF's Python files end their lines in "\\r\\n",
    which a clone on Linux keeps, and the anchors are written with "\\n". A file that mixes both is left as it is."""
    if "\r\n" in text and text.count("\r\n") == text.count("\n"):
        return text.replace("\r\n", "\n"), "\r\n"
    return text, "\n"


def plan(root: Path, rules: Sequence[Rule]) -> dict[str, tuple[bytes, bytes]]:
    """path -> (original bytes, patched bytes) for every file the rules touch, computed from the originals (the
    `.orig` copy when there is one). Every anchor is checked before anything is written; all failures are reported."""
    out: dict[str, tuple[bytes, bytes]] = {}
    errors: list[str] = []
    for path in dict.fromkeys(p for rule in rules for p in rule.paths):
        file, orig = root / path, root / (path + ".orig")
        if not file.is_file():
            errors.append(f"{path}: missing from the checkout")
            continue
        original = (orig if orig.is_file() else file).read_bytes()
        text, newline = unix_lines(original.decode("utf-8"))
        for rule in (r for r in rules if path in r.paths):
            try:
                text = patch_text(text, rule, path)
            except ErnerfError as exc:
                errors.append(str(exc))
        out[path] = (original, text.replace("\n", newline).encode("utf-8"))
    if errors:
        raise ErnerfError(f"ER-NeRF checkout {root} not patched, nothing written: " + " | ".join(errors))
    return out


def read_record(root: Path) -> dict | None:
    path = root / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def changed_since_patched(root: Path, record: dict) -> list[str]:
    """Files the record lists whose content is no longer what the patch wrote (or that are gone)."""
    return [p for p, digest in record["files"].items()
            if not (root / p).is_file() or sha256((root / p).read_bytes()) != digest]


def apply(root: Path, rules: Sequence[Rule] = RULES) -> tuple[bool, dict]:
    """Patch the checkout at `root` with `rules`; -> (whether anything was written, the record). Re-running with the
    same rules writes nothing; with other rules it starts again from the originals."""
    record = read_record(root)
    if record is not None:
        changed = changed_since_patched(root, record)
        if changed:
            raise ErnerfError(f"{', '.join(changed)} in {root} changed since it was patched: `--restore --force` puts "
                              "the original(s) back (your edits are lost), then prepare again.")
        if record["fingerprint"] == fingerprint(rules):
            return False, record
        restore(root)  # made by other rules: start again from the originals
    stray = [p for rule in rules for p in rule.paths if (root / (p + ".orig")).is_file()]
    if stray:
        raise ErnerfError(f"{root} holds {stray[0]}.orig but no record of patching it ({RECORD}): move the .orig files "
                          "back over their files (or `git checkout .` and delete them), then prepare again.")
    planned = plan(root, rules)
    for path, (original, patched) in planned.items():
        orig = root / (path + ".orig")
        if not orig.is_file():
            orig.write_bytes(original)
        (root / path).write_bytes(patched)
    record = {"fingerprint": fingerprint(rules), "files": {p: sha256(b) for p, (_, b) in planned.items()},
              "rules": [{"name": r.name, "files": list(r.paths), "why": r.why} for r in rules]}
    (root / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return True, record


def restore(root: Path, force: bool = False) -> list[str]:
    """Put every patched file's original back, remove the `.orig` copies and the record; -> the files restored."""
    record = read_record(root)
    if record is None:
        return []
    changed = changed_since_patched(root, record)
    if changed and not force:
        raise ErnerfError(f"{', '.join(changed)} in {root} changed since it was patched: restoring would lose those "
                          "edits; `--restore --force` restores anyway.")
    for path in record["files"]:
        orig = root / (path + ".orig")
        if orig.is_file():
            shutil.copyfile(orig, root / path)
            orig.unlink()
    (root / RECORD).unlink()
    return list(record["files"])
