"""Side-by-side with ER-NeRF's own code (issue #22): its head stage and ours, on one subject, at equal steps and at
equal wall time. ER-NeRF's code is not part of this repository: fetch it yourself, this script patches your checkout.

    git clone https://github.com/Fictionarry/ER-NeRF ../ER-NeRF
    python bench/ernerf_side_by_side.py prepare --ernerf ../ER-NeRF            # patch it (--restore undoes it)
    python bench/ernerf_side_by_side.py dataset --subject trump --out bench/out/sbs   # the subject as ER-NeRF reads it
    python bench/ernerf_side_by_side.py train --ernerf ../ER-NeRF --subject trump --steps 10000 --out bench/out/sbs
    python bench/ernerf_side_by_side.py report --out bench/out/sbs           # the tables again, from the run folders

`train` checks the machine (nvcc, a CUDA torch, the packages), builds ER-NeRF's extensions outside the clock, trains
ER-NeRF (main.py -O --preload 2) and then ours (train.py stage=head, preloaded) for the same steps, scores both at the
same steps on ER-NeRF's validation frames, and prints the tables. When <out>/ernerf_val/ holds ER-NeRF's last
validation renders, `report` (and `train`) scores them with `evaluate.py renders=` and prints a third table: both codes
at the final step by the same metrics code (LMD included). docs/evaluation.md, "Side-by-side with ER-NeRF's own code",
says what the patches change, what equal wall time means and holds the measured table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ernerf_sbs import checkout, dataset, patches, report, runs  # noqa: E402
from ernerf.errors import ErnerfError  # noqa: E402
from ernerf.io.layout import SubjectLayout  # noqa: E402

PLAN = "plan.json"


def prepare(args: argparse.Namespace) -> None:
    """Check the checkout, then patch it (or restore it)."""
    root = args.ernerf.resolve()
    if args.restore:
        restored = patches.restore(root, args.force)
        print(f"restored {len(restored)} file(s) of {root}: {', '.join(restored) or 'none was patched'}")
        return
    checkout.check_checkout(root)
    if not args.skip_toolchain_check:
        facts = checkout.check_environment(args.ernerf_python, lpips=False)
        print(f"toolchain: torch {facts['torch']} (CUDA {facts['torch_cuda']}), nvcc {facts['nvcc']}")
    written, record = patches.apply(root)
    print(f"{'patched' if written else 'already patched, nothing written:'} {root}")
    for rule in record["rules"]:
        print(f"  {rule['name']}: {', '.join(rule['files'])}")


def adapt(args: argparse.Namespace) -> tuple[Path, dataset.Subject]:
    layout = SubjectLayout.of(args.data_root, args.subject)
    return dataset.adapt(layout, dataset.audio_features(args.audio_features), args.out.resolve() / "ernerf_data")


def make_dataset(args: argparse.Namespace) -> None:
    folder, subject = adapt(args)
    print(f"{folder}: {subject.num_train} training and {subject.num_val} validation frames, aud.npy -> "
          f"{subject.feature_file} ({subject.feature_dim} wide: ER-NeRF's --asr_model {subject.feature_dim})")


def check_patched(root: Path) -> None:
    record = patches.read_record(root)
    if record is None or record["fingerprint"] != patches.fingerprint(patches.RULES):
        raise ErnerfError(f"{root} is not patched by this version of the script: "
                          f"python bench/ernerf_side_by_side.py prepare --ernerf {root}")


def write_plan(out: Path, plan: dict) -> None:
    (out / PLAN).write_text(json.dumps(plan, indent=1) + "\n")


def start_plan(args: argparse.Namespace, root: Path, out: Path) -> dict:
    """Check everything, link the subject, fix the schedule and both commands; -> the plan (written to plan.json)."""
    if (out / PLAN).exists():
        raise ErnerfError(f"{out} holds an earlier side-by-side: give another --out (`report --out {out}` prints it).")
    checkout.check_checkout(root)
    check_patched(root)
    checkout.check_environment(args.ernerf_python, lpips=args.lpips_weights is not None)
    data, subject = adapt(args)
    schedule = runs.make_schedule(args.steps, args.evals, subject.num_train)
    plan = {"subject": subject.__dict__, "steps_asked": args.steps, "schedule": schedule.__dict__,
            "steps": schedule.steps, "eval_steps": schedule.eval_steps, "data_root": str(args.data_root.resolve()),
            "lpips_weights": str(args.lpips_weights.resolve()) if args.lpips_weights else None,
            "ernerf_command": runs.ernerf_command(root, data, out / "ernerf_workspace", schedule, subject,
                                                 args.ernerf_python, args.ernerf_arg),
            "ours_command": runs.ours_command(subject, args.data_root.resolve(), out / "ours_runs",
                                              args.audio_features, schedule, out / "ours_train_clock.csv",
                                              args.override)}
    write_plan(out, plan)
    print(f"{schedule.steps} steps ({schedule.evals} x {schedule.eval_epochs} epochs of {subject.num_train} frames; "
          f"{args.steps} asked), scored every {schedule.eval_steps} on {subject.num_val_scored} validation frames",
          flush=True)
    return plan


def train_ernerf(args: argparse.Namespace, root: Path, out: Path, plan: dict) -> None:
    """Build ER-NeRF's extensions (off the clock), train it; an error naming its logs when it made no evaluation."""
    print(f"building ER-NeRF's CUDA extensions (log: {out / 'ernerf_build.log'})", flush=True)
    plan["ernerf_build_s"] = round(checkout.build_extensions(root, args.ernerf_python, out / "ernerf_build.log"), 1)
    print(f"training ER-NeRF (log: {out / 'ernerf.log'}, .err)", flush=True)
    schedule = runs.Schedule(**plan["schedule"])
    plan["ernerf"] = runs.run_ernerf(root, plan["ernerf_command"], schedule, out,
                                     runs.lpips_home(args.lpips_weights, out))
    write_plan(out, plan)
    kept = runs.keep_last_renders(out / "ernerf_workspace", out)
    print(f"kept ER-NeRF's {kept} renders of its last evaluation in {out / runs.ERNERF_VAL}", flush=True)
    scored = report.parse_ernerf(report.read_timestamped(out / "ernerf.log"), schedule.steps_per_epoch)
    if not [p for p in scored if p.split == "val" and p.psnr is not None]:
        raise ErnerfError(f"ER-NeRF made no evaluation (exit {plan['ernerf']['status']}): see {out / 'ernerf.err'} "
                          f"and {out / 'ernerf.log'}.")


def train_ours(out: Path, plan: dict) -> None:
    """Train ours with the plan's command, then score its checkpoints with evaluate.py."""
    if (out / "ours_runs").exists():
        raise ErnerfError(f"{out / 'ours_runs'} exists: ours was trained here already (`report --out {out}`).")
    print(f"training ours (log: {out / 'ours_train.log'})", flush=True)
    plan["ours_wall_s"] = round(runs.run_logged(plan["ours_command"], out / "ours_train.log", "train.py"), 1)
    write_plan(out, plan)
    print("scoring our checkpoints with evaluate.py", flush=True)
    weights = Path(plan["lpips_weights"]) if plan["lpips_weights"] else None
    runs.evaluate_checkpoints(dataset.Subject(**plan["subject"]), Path(plan["data_root"]), out / "ours_runs", out,
                              weights)


def train(args: argparse.Namespace) -> None:
    """Both codes' head stage for the same steps, then the tables; `--part` runs one code per call (ER-NeRF first),
    for machines that limit how long one command runs."""
    root, out = args.ernerf.resolve(), args.out.resolve()
    if args.part == "ours":
        if not (out / PLAN).is_file():
            raise ErnerfError(f"no side-by-side in {out}: run `train --part ernerf` (same arguments) first.")
        train_ours(out, json.loads((out / PLAN).read_text()))
        print_report(out)
        return
    plan = start_plan(args, root, out)
    train_ernerf(args, root, out, plan)
    if args.part == "ernerf":
        print("ER-NeRF done; next: the same command with --part ours", flush=True)
        return
    train_ours(out, plan)
    print_report(out)


def print_report(out: Path, data_root: Path | None = None) -> None:
    """The tables, from the side-by-side's folder; the third when ER-NeRF's renders were brought back (`data_root`:
    where the subject is on this machine, default the plan's)."""
    plan = json.loads((out / PLAN).read_text())
    theirs = report.parse_ernerf(report.read_timestamped(out / "ernerf.log"), plan["schedule"]["steps_per_epoch"])
    metrics = {int(p.name[4:]): json.loads((p / "metrics.json").read_text())
               for p in (out / "ours_eval").glob("step*") if (p / "metrics.json").is_file()}
    ours = report.parse_ours(out / "ours_train_clock.csv", metrics)
    if not ours or not [p for p in theirs if p.split == "val"]:
        raise ErnerfError(f"{out} holds no evaluation of {'ours' if not ours else 'ER-NeRF'} (see its logs there).")
    if plan.get("ernerf", {}).get("status"):
        print(f"warning: ER-NeRF exited with status {plan['ernerf']['status']} (see {plan['ernerf']['log']})")
    print(f"## {plan['subject']['name']}: {plan['steps']} head steps, scored every {plan['eval_steps']}\n")
    print("At equal steps:\n\n" + report.equal_steps_table(ours, theirs) + "\n")
    print("At equal wall time (training seconds):\n\n" + report.equal_time_table(ours, theirs))
    print_final(out, plan, metrics, data_root or Path(plan["data_root"]))


def print_final(out: Path, plan: dict, metrics: dict[int, dict], data_root: Path) -> None:
    """Both codes at the final step, scored by the same evaluate.py: ER-NeRF's last validation renders
    (<out>/ernerf_val/, `renders=`, scored once into <out>/ernerf_eval/) beside our last checkpoint's figures. Nothing
    without those renders."""
    subject = dataset.Subject(**plan["subject"])
    weights = Path(plan["lpips_weights"]) if plan["lpips_weights"] else None
    theirs = runs.score_ernerf_renders(subject, data_root, out, weights)
    if theirs is None:
        return
    name, ours = report.ours_at_end(out, metrics)
    kept = report.last_eval_renders(out, metrics)  # our last renders, as ER-NeRF's: scored from files
    if report.number(ours["metrics"].get("lmd")) is None and runs.lmd_available() and kept.is_dir():
        runs.score_renders(subject, data_root, out, kept, out / report.OURS_CPU, weights, "our")
        name, ours = report.ours_at_end(out, metrics)
    step = report.renders_step(out / runs.ERNERF_VAL, plan["schedule"]["steps_per_epoch"])
    rows = [(name, ours), (f"ER-NeRF, step {step or '?'} (its renders)", theirs)]
    print("\nAt the final step, both scored by evaluate.py (PSNR in dB of the frame, the face box and each region; "
          "LMD in px at 512):\n\n" + report.final_table(rows))
    if report.number(ours["metrics"].get("lmd")) is None:
        print(f"\nour LMD is unavailable ({ours['unavailable'].get('lmd')}): on a machine with mediapipe, "
              f"{our_cpu_command(out, subject, data_root, ours, weights)}")
    ours_folder = report.our_renders(out, metrics)
    if ours_folder is not None:
        print(f"\nhead crops of the ground truth, ER-NeRF's and our renders, frame by frame: "
              f"{write_comparison(out, subject, data_root, ours_folder)}")


def write_comparison(out: Path, subject: dataset.Subject, data_root: Path, ours_folder: Path) -> Path:
    """<out>/compare.png: the first, middle and last validation frame both codes rendered, as head crops."""
    from datamodules.subject import FrameStore, parse_subject
    from ernerf.apps.evaluation.frames import frame_files

    data = parse_subject(data_root / subject.name, subject.feature_file)
    store = FrameStore(data, background="plate")
    theirs, ours = frame_files(out / runs.ERNERF_VAL), {int(p.stem): p for p in frame_files(ours_folder)}
    scored = min(len(theirs), subject.num_val_scored)
    rows = []
    for k in sorted({0, scored // 2, scored - 1}):
        frame = subject.num_train + k
        if frame in ours:
            rows.append((frame, [store.image(frame).numpy(), report.read_rgb(theirs[k]), report.read_rgb(ours[frame])]))
    rects = {frame: data.rects["face"][frame].tolist() for frame, _ in rows}
    return report.comparison_sheet(out / report.COMPARE, rows, ["ground truth", "ER-NeRF", "ours"], rects)


def our_cpu_command(out: Path, subject: dataset.Subject, data_root: Path, ours: dict, weights: Path | None) -> str:
    """The evaluate.py command that scores our last checkpoint into <out>/ours_eval_cpu/ (for its LMD)."""
    ckpt = out / "ours_runs" / subject.name / "head" / "checkpoints" / Path(ours["checkpoint"]).name
    cmd = runs.evaluate_command(subject, data_root, out / "ours_runs", f"run={ckpt}", out / report.OURS_CPU, weights)
    cmd.append("save_renders=true")
    return "python evaluate.py " + shlex.join(cmd[2:])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--ernerf-python", default=sys.executable, help="the interpreter that runs ER-NeRF")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-root", type=Path, default=Path("data"))
    data.add_argument("--subject", required=True)
    data.add_argument("--audio-features", default="mel", help="conf/audio_features/<name> (the subject must have it)")
    data.add_argument("--out", type=Path, default=Path("bench/out/ernerf_sbs"))
    pre = sub.add_parser("prepare", parents=[common], help="check and patch a checkout of ER-NeRF")
    pre.add_argument("--ernerf", type=Path, required=True, help="your checkout of Fictionarry/ER-NeRF")
    pre.add_argument("--restore", action="store_true", help="put the original files back")
    pre.add_argument("--force", action="store_true", help="with --restore: even over files edited since")
    pre.add_argument("--skip-toolchain-check", action="store_true", help="patch on a machine without nvcc/CUDA")
    sub.add_parser("dataset", parents=[data], help="link a preprocessed subject as ER-NeRF reads it")
    tr = sub.add_parser("train", parents=[common, data], help="train both, score both, print the tables")
    tr.add_argument("--ernerf", type=Path, required=True)
    tr.add_argument("--steps", type=int, default=10000, help="head steps (rounded to ER-NeRF's whole epochs)")
    tr.add_argument("--evals", type=int, default=5, help="evaluations over the run, the same steps for both")
    tr.add_argument("--lpips-weights", type=Path, help=f"torchvision's {runs.ALEXNET}: LPIPS for both codes")
    tr.add_argument("--override", action="append", default=[], help="extra Hydra override for train.py")
    tr.add_argument("--ernerf-arg", action="append", default=[], help="extra argument for ER-NeRF's main.py "
                    "(--ernerf-arg=--seed=1)")
    tr.add_argument("--part", choices=("all", "ernerf", "ours"), default="all",
                    help="one code per call: ernerf (first), then ours; all: both")
    rep = sub.add_parser("report", help="print the tables of a finished side-by-side")
    rep.add_argument("--out", type=Path, default=Path("bench/out/ernerf_sbs"))
    rep.add_argument("--data-root", type=Path, help="where the subject is on this machine (default: where it was "
                     "trained), to score ER-NeRF's renders in <out>/ernerf_val/")
    return p


def main() -> None:
    args = parser().parse_args()
    command = {"prepare": prepare, "dataset": make_dataset, "train": train,
               "report": lambda a: print_report(a.out.resolve(), a.data_root and a.data_root.resolve())}[args.command]
    try:
        command(args)
    except ErnerfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
